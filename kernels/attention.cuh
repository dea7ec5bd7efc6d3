// attention.cuh: what every version of the attention kernels shares (kernels/attention.cu and the versions under
// kernels/dev/attention): the parameter struct the host fills (mirrored by CudaBackend.AttnParams) and the index
// into the (B, L, H*D) tensors.
// Shapes: q, k, v, dq, dk, dv (B, H, L, D) bf16, D <= MAXD; out, o, dout (B, L, H*D) bf16 ("B H L D -> B L (H D)");
//         lse, drow (B, H, L) fp32.
#pragma once
#include "common.cuh"

#define MAXD 128

struct AttnParams
{
    const bf16* q;      // (B, H, L, D)
    const bf16* k;      // (B, H, L, D)
    const bf16* v;      // (B, H, L, D)
    const bf16* o;      // (B, L, H*D): forward output, read by the backward
    const bf16* dout;   // (B, L, H*D)
    bf16* out;          // (B, L, H*D): forward output
    float* lse;         // (B, H, L)
    float* drow;        // (B, H, L)
    bf16* dq;           // (B, H, L, D)
    bf16* dk;           // (B, H, L, D)
    bf16* dv;           // (B, H, L, D)
    int B, H, L, D;
    float scale;        // 1 / sqrt(D)
};
static_assert(sizeof(AttnParams) == 112, "AttnParams layout changed: update CudaBackend.AttnParams");

// Index of element d of row l of head (b, h) in a (B, L, H*D) tensor.
__device__ __forceinline__ i64 bl_hd(const AttnParams& p, int b, int h, int l, int d)
{
    return (((i64)b * p.L + l) * p.H + h) * p.D + d;
}
