// vec16.cuh: what the 16-byte elementwise and layout kernels (elementwise/02_vec16.cu, layout/02_vec16.cu) share:
// fast 32-bit division by a host-computed magic number, eight-element vector loads and stores of either storage
// (one uint4 for bf16, two float4 for fp32; e a multiple of 8, the address 16-byte aligned), and the 32-bit
// grid-stride loop over vectors.
#pragma once
#include "common.cuh"

// n / d for n < 2^31 and 1 <= d < 2^31: q = (mulhi(n, m) + n) >> s with s = ceil(log2 d) and
// m = floor(2^32 (2^s - d) / d) + 1 (ElementwiseVec.FastDivisor on the host; exact for every such n).
struct FastDiv { unsigned int d, m, s; };
__device__ __forceinline__ unsigned int fdiv(FastDiv f, unsigned int n) { return (__umulhi(n, f.m) + n) >> f.s; }

// Eight elements starting at element e (a multiple of 8) of a tensor of either storage, to and from fp32.
__device__ __forceinline__ void load8(const void* p, int dt, unsigned int e, float* f)
{
    if (dt == DT_F32)
    {
        float4 a = *reinterpret_cast<const float4*>((const float*)p + e);
        float4 b = *reinterpret_cast<const float4*>((const float*)p + e + 4);
        f[0] = a.x; f[1] = a.y; f[2] = a.z; f[3] = a.w; f[4] = b.x; f[5] = b.y; f[6] = b.z; f[7] = b.w;
    }
    else
    {
        uint4 u = *reinterpret_cast<const uint4*>((const bf16*)p + e);
        unsigned int w[4] = { u.x, u.y, u.z, u.w };
#pragma unroll
        for (int k = 0; k < 4; k++)   // element 2k in the low half, 2k+1 in the high half (little-endian)
        {
            f[2 * k] = __uint_as_float(w[k] << 16);
            f[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
        }
    }
}

__device__ __forceinline__ void store8(void* p, int dt, unsigned int e, const float* f)
{
    if (dt == DT_F32)
    {
        *reinterpret_cast<float4*>((float*)p + e) = make_float4(f[0], f[1], f[2], f[3]);
        *reinterpret_cast<float4*>((float*)p + e + 4) = make_float4(f[4], f[5], f[6], f[7]);
    }
    else
    {
        uint4 u;
        u.x = (unsigned int)f2bf(f[0]) | ((unsigned int)f2bf(f[1]) << 16);
        u.y = (unsigned int)f2bf(f[2]) | ((unsigned int)f2bf(f[3]) << 16);
        u.z = (unsigned int)f2bf(f[4]) | ((unsigned int)f2bf(f[5]) << 16);
        u.w = (unsigned int)f2bf(f[6]) | ((unsigned int)f2bf(f[7]) << 16);
        *reinterpret_cast<uint4*>((bf16*)p + e) = u;
    }
}

#define VEC_LOOP(v, nvec) for (unsigned int v = blockIdx.x * blockDim.x + threadIdx.x; v < (nvec); v += gridDim.x * blockDim.x)
