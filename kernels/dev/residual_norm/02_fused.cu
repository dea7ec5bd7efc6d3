// 02_fused.cu: the gated residual fused with the LayerNorm-modulate it feeds, forward and backward.
// Version 01 is the engine's pair of ops: gated_residual_* (kernels/conditioning.cu) then layernorm_modulate_*
// (kernels/norm.cu), which write x1 and read it back, and whose backward takes eight launches and a memset.
//
// residual_norm_forward: x1 = x + gate[b] * y (rounded to bf16 as stored), then with mean and rstd of the stored
//   x1 (two passes over registers, biased variance, rstd = 1 / sqrt(var + eps)):
//   modulated = (1 + scale[b]) * (x1 - mean) * rstd + shift[b].
//   Shapes: x, y, x1, modulated (B, L, C) bf16; gate, shift, scale (B, C) bf16; stats (B*L, 2) fp32 = (mean, rstd).
//   Written with =: x1, modulated, stats.
//   Launch: one block per row, grid B*L; block RN_THREADS(C) = C/8 rounded up to a warp (at most 1024, so
//   C <= 8192): thread t holds columns [8t, 8t+8) of the row in registers, read and written with 16-byte accesses.
// residual_norm_backward: per row, g = dmod * (1 + scale[b]), xhat = (x1 - mean) * rstd,
//   dx1 = dout + rstd * (g - mean(g) - xhat * mean(g * xhat)), dy = gate[b] * dx1 (from the fp32 dx1);
//   per block, the column sums over its rows of dx1 * y (dgate), dmod (dshift) and dmod * xhat (dscale).
//   Shapes: dmod, dout, x1, y, dx1, dy (B, L, C) bf16; scale, gate (B, C) bf16; stats as above; partial
//   (3, B, chunks, C) fp32 = the three sums per chunk of rows_per_block rows. Written with =: dx1, dy, partial.
//   Launch: grid (chunks, B), chunks = ceil(L / rows_per_block); block RN_THREADS(C); the block walks its rows in
//   order, each row read once, and each thread keeps the sums of its own 8 columns in registers, so the partials
//   need no shared memory and no atomics (deterministic).
// residual_norm_backward_sums: dgate, dshift, dscale[b, c] = sum over k of partial[s, b, k, c] in order of k.
//   Shapes: the three (B, C) bf16, written with =. Launch: 1-D grid-stride over 3*B*C, block 256.
// Indices are 32-bit: the launcher requires B*L*C and 3*B*chunks*C below 2^31. The launcher also requires C a
// multiple of 8 and 16-byte aligned tensors; other cases run version 01.
#include "common.cuh"

struct ResidualNormParams
{
    const bf16* x;          // (B, L, C) forward: the residual stream
    const bf16* gate;       // (B, C)
    const bf16* y;          // (B, L, C) the gated branch (attn.proj output)
    const bf16* shift;      // (B, C) forward only
    const bf16* scale;      // (B, C)
    const bf16* dmod;       // (B, L, C) backward: d modulated
    const bf16* dout;       // (B, L, C) backward: the residual's gradient reaching x1
    bf16* x1;               // (B, L, C) written by the forward, read by the backward
    bf16* out;              // (B, L, C) forward: modulated; backward: dx1
    bf16* dy;               // (B, L, C) backward: gate * dx1
    float* stats;           // (B*L, 2) mean, rstd
    float* partial;         // (3, B, chunks, C) backward: column sums of dgate, dshift, dscale per chunk
    bf16* dgate;            // (B, C) backward sums
    bf16* dshift;           // (B, C)
    bf16* dscale;           // (B, C)
    int B, L, C, chunks;
    int rows_per_block;     // backward: rows of one chunk
    float eps;
};
static_assert(sizeof(ResidualNormParams) == 144, "ResidualNormParams layout changed: update CudaBackend.ResidualNormParams");

__device__ __forceinline__ void rn_unpack(uint4 u, float* f)
{
    unsigned int w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; k++) { f[2 * k] = bf2f((bf16)(w[k] & 0xffffu)); f[2 * k + 1] = bf2f((bf16)(w[k] >> 16)); }
}

__device__ __forceinline__ uint4 rn_pack(const float* f)
{
    unsigned int w[4];
#pragma unroll
    for (int k = 0; k < 4; k++) w[k] = (unsigned int)f2bf(f[2 * k]) | ((unsigned int)f2bf(f[2 * k + 1]) << 16);
    return make_uint4(w[0], w[1], w[2], w[3]);
}

// Two block sums at once (one pair of barriers); every thread gets both. blockDim.x a multiple of 32, at most 1024.
__device__ __forceinline__ float2 rn_block_sum2(float a, float b)
{
    __shared__ float2 part[32];
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, warps = blockDim.x / WARP;
    a = warp_sum(a);
    b = warp_sum(b);
    __syncthreads();                       // part may still be read by the previous call
    if (lane == 0) part[warp] = make_float2(a, b);
    __syncthreads();
    float2 v = lane < warps ? part[lane] : make_float2(0.0f, 0.0f);
    return make_float2(warp_sum(v.x), warp_sum(v.y));
}

extern "C" __global__ void residual_norm_forward(ResidualNormParams p)
{
    unsigned int row = blockIdx.x, b = row / p.L, t = threadIdx.x, nvec = p.C / 8;
    bool active = t < nvec;
    float x1[8], v[8];
    float s = 0.0f;
    if (active)
    {
        unsigned int e = row * nvec + t, m = b * nvec + t;
        float yv[8], g[8];
        rn_unpack(((const uint4*)p.x)[e], v);
        rn_unpack(((const uint4*)p.y)[e], yv);
        rn_unpack(((const uint4*)p.gate)[m], g);
#pragma unroll
        for (int k = 0; k < 8; k++) x1[k] = bf2f(f2bf(v[k] + g[k] * yv[k]));   // the value stored is the value normalised
        ((uint4*)p.x1)[e] = rn_pack(x1);
#pragma unroll
        for (int k = 0; k < 8; k++) s += x1[k];
    }
    float mean = rn_block_sum2(s, 0.0f).x / p.C;
    float q = 0.0f;
    if (active)
    {
#pragma unroll
        for (int k = 0; k < 8; k++) { float d = x1[k] - mean; q += d * d; }
    }
    float rstd = rsqrtf(rn_block_sum2(q, 0.0f).x / p.C + p.eps);
    if (active)
    {
        unsigned int e = row * nvec + t, m = b * nvec + t;
        float sh[8], sc[8];
        rn_unpack(((const uint4*)p.shift)[m], sh);
        rn_unpack(((const uint4*)p.scale)[m], sc);
#pragma unroll
        for (int k = 0; k < 8; k++) v[k] = (1.0f + sc[k]) * ((x1[k] - mean) * rstd) + sh[k];
        ((uint4*)p.out)[e] = rn_pack(v);
    }
    if (t == 0) { p.stats[2 * row] = mean; p.stats[2 * row + 1] = rstd; }
}

extern "C" __global__ void residual_norm_backward(ResidualNormParams p)
{
    unsigned int k = blockIdx.x, b = blockIdx.y, t = threadIdx.x, nvec = p.C / 8;
    bool active = t < nvec;
    unsigned int m = b * nvec + t;
    // gate and scale of this batch row stay packed in registers for the whole chunk
    uint4 gate4 = make_uint4(0, 0, 0, 0), scale4 = make_uint4(0, 0, 0, 0);
    if (active) { gate4 = ((const uint4*)p.gate)[m]; scale4 = ((const uint4*)p.scale)[m]; }
    float sgate[8], sshift[8], sscale[8];
#pragma unroll
    for (int j = 0; j < 8; j++) { sgate[j] = 0.0f; sshift[j] = 0.0f; sscale[j] = 0.0f; }

    unsigned int l0 = k * p.rows_per_block, l1 = min((unsigned int)p.L, l0 + p.rows_per_block);
    for (unsigned int l = l0; l < l1; l++)
    {
        unsigned int row = b * p.L + l, e = row * nvec + t;
        float mean = p.stats[2 * row], rstd = p.stats[2 * row + 1];
        uint4 dm4 = make_uint4(0, 0, 0, 0), x4 = make_uint4(0, 0, 0, 0);
        float s1 = 0.0f, s2 = 0.0f;
        if (active)
        {
            dm4 = ((const uint4*)p.dmod)[e];
            x4 = ((const uint4*)p.x1)[e];
            float dm[8], xh[8], sc[8];
            rn_unpack(dm4, dm);
            rn_unpack(x4, xh);
            rn_unpack(scale4, sc);
#pragma unroll
            for (int j = 0; j < 8; j++)
            {
                xh[j] = (xh[j] - mean) * rstd;
                float g = dm[j] * (1.0f + sc[j]);
                s1 += g;
                s2 += g * xh[j];
                sshift[j] += dm[j];
                sscale[j] += dm[j] * xh[j];
            }
        }
        float2 mg = rn_block_sum2(s1, s2);
        float m1 = mg.x / p.C, m2 = mg.y / p.C;
        if (active)
        {
            float dm[8], xh[8], sc[8], d[8], yv[8], g[8], o[8];
            rn_unpack(dm4, dm);
            rn_unpack(x4, xh);
            rn_unpack(scale4, sc);
            rn_unpack(gate4, g);
            rn_unpack(((const uint4*)p.dout)[e], d);
            rn_unpack(((const uint4*)p.y)[e], yv);
#pragma unroll
            for (int j = 0; j < 8; j++)
            {
                float xhat = (xh[j] - mean) * rstd;
                d[j] += rstd * (dm[j] * (1.0f + sc[j]) - m1 - xhat * m2);
                o[j] = g[j] * d[j];
                sgate[j] += d[j] * yv[j];
            }
            ((uint4*)p.out)[e] = rn_pack(d);
            ((uint4*)p.dy)[e] = rn_pack(o);
        }
    }
    if (active)
    {
        unsigned int plane = (unsigned int)p.B * p.chunks * p.C;   // one of the three (B, chunks, C) sums
        float4* dst = (float4*)(p.partial + (b * p.chunks + k) * p.C + 8 * t);
        dst[0] = make_float4(sgate[0], sgate[1], sgate[2], sgate[3]);
        dst[1] = make_float4(sgate[4], sgate[5], sgate[6], sgate[7]);
        dst = (float4*)((float*)dst + plane);
        dst[0] = make_float4(sshift[0], sshift[1], sshift[2], sshift[3]);
        dst[1] = make_float4(sshift[4], sshift[5], sshift[6], sshift[7]);
        dst = (float4*)((float*)dst + plane);
        dst[0] = make_float4(sscale[0], sscale[1], sscale[2], sscale[3]);
        dst[1] = make_float4(sscale[4], sscale[5], sscale[6], sscale[7]);
    }
}

extern "C" __global__ void residual_norm_backward_sums(ResidualNormParams p)
{
    unsigned int n = (unsigned int)p.B * p.C;
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < 3 * n; i += gridDim.x * blockDim.x)
    {
        unsigned int s = i / n, b = i % n / p.C, c = i % p.C;
        const float* src = p.partial + (s * p.B + b) * p.chunks * p.C + c;
        float v = 0.0f;
        for (int k = 0; k < p.chunks; k++) v += src[k * p.C];
        bf16* dst = s == 0 ? p.dgate : s == 1 ? p.dshift : p.dscale;
        dst[b * p.C + c] = f2bf(v);
    }
}
