// common.cuh: helpers shared by every kernel file. Handed to NVRTC as an in-memory header, and it includes no
// CUDA header itself, so the kernels compile on NVRTC 11.8 (which has no built-in cuda_bf16.h) and on NVRTC 13.
//
// bf16 values travel as their raw 16 bits (unsigned short). Conversion up is exact (a shift); conversion down
// rounds to nearest, ties to even, and keeps NaNs quiet. dtype codes used by kernels that accept either storage:
// DT_BF16 = 0 (Precision.Compute), DT_F32 = 1 (Precision.Master).
#pragma once

typedef unsigned short bf16;
typedef long long i64;

#define DT_BF16 0
#define DT_F32 1
#define WARP 32

// No <math.h> under NVRTC without the toolkit's headers: spell infinity out.
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

__device__ __forceinline__ float bf2f(bf16 h) { return __uint_as_float(((unsigned int)h) << 16); }

__device__ __forceinline__ bf16 f2bf(float f)
{
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x0040u);   // NaN stays a (quiet) NaN
    u += 0x7fffu + ((u >> 16) & 1u);                                              // round to nearest even
    return (bf16)(u >> 16);
}

// Load or store element i of a tensor of either storage type (dt is uniform across a launch, so no divergence).
__device__ __forceinline__ float ldx(const void* p, int dt, i64 i)
{
    return dt == DT_F32 ? ((const float*)p)[i] : bf2f(((const bf16*)p)[i]);
}

__device__ __forceinline__ void stx(void* p, int dt, i64 i, float v)
{
    if (dt == DT_F32) ((float*)p)[i] = v; else ((bf16*)p)[i] = f2bf(v);
}

__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_d(double v)
{
    for (int o = WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
    for (int o = WARP / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over a whole block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ __forceinline__ double block_sum_d(double v)
{
    __shared__ double partial[32];
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, warps = blockDim.x / WARP;
    v = warp_sum_d(v);
    __syncthreads();                       // partial may still be read by a previous call
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = lane < warps ? partial[lane] : 0.0;
    return warp_sum_d(v);
}

__device__ __forceinline__ float block_sum(float v)
{
    __shared__ float partialf[32];
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, warps = blockDim.x / WARP;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) partialf[warp] = v;
    __syncthreads();
    v = lane < warps ? partialf[lane] : 0.0f;
    return warp_sum(v);
}

// Grid-stride loop over n elements.
#define GRID_STRIDE(i, n) for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

// Second pass of the deterministic column reductions (dshift/dscale/dgate): out[b, c] = sum over k of
// partial[(b * chunks + k) * C + c]. partial fp32 (B, chunks, C); out bf16 (B, C), written with =.
// Launch: 1-D over B*C, block 256.
extern "C" __global__ void sum_chunks_kernel(bf16* out, const float* partial, int B, int chunks, int C)
{
    GRID_STRIDE(i, (i64)B * C)
    {
        i64 b = i / C, c = i % C;
        float s = 0.0f;
        for (int k = 0; k < chunks; k++) s += partial[(b * chunks + k) * C + c];
        out[i] = f2bf(s);
    }
}

// Rows handled by one block-row of a chunked column reduction (see norm.cu, conditioning.cu).
#define CHUNK_ROWS 64
