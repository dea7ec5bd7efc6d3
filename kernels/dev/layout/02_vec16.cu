// 02_vec16.cu: the layout kernels with 16-byte accesses and 32-bit indices. Version 01 is kernels/layout.cu
// (slice_copy, split_qkv, merge_qkv): one element per thread, 64-bit grid-stride indices and two (slice_copy) or
// four (the qkv pair) 64-bit div/mod pairs per element.
//
// slice_copy_v16: version 01's contract (dst[o, dst_start + j, i] = or += src[o, src_start + j, i] for j < len, either
//   storage each side, fp32 math) seen as a 2-D copy: for every o the len * inner moved elements are contiguous on
//   both sides, so the copy is rows = outer of cols = len * inner elements, row strides ld = dim * inner and column
//   offsets off = start * inner. The launcher (ElementwiseVec.Slice decides) runs it only when cols, both offsets and
//   (with more than one row) both strides are multiples of 8 elements, both pointers are 16-byte aligned and both
//   tensors hold fewer than 2^31 elements; otherwise version 01 runs. Vector v is row r = v / (cols/8), columns
//   8 (v - r cols/8) .. +7: one fast division (FastDiv, magic numbers from the host) per 8 elements in place of
//   two 64-bit div/mod pairs per element. The copies are bit-identical to version 01's (the same bf16 -> fp32 -> bf16
//   round trip, and the same src + dst sum when accumulating).
// split_qkv_v16: qkv (B, L, 3, H, D) bf16 -> q, k, v (B, H, L, D) bf16, with =; merge_qkv_v16 its inverse (=). Needs
//   D a multiple of 8 (a vector never leaves one head's row), 16-byte aligned pointers and B*L*3*H*D < 2^31. Vector v
//   of qkv is d8 = v mod D/8, h = (v / (D/8)) mod H, which = (v / (D/8 H)) mod 3, l = (v / (D/8 H 3)) mod L,
//   b = v / (D/8 H 3 L), found by three fast divisions (by D/8, H and L) and one by the constant 3. Raw 16-byte
//   moves, as version 01's raw bf16 assignment.
// Launch: 1-D, block 256, grid ceil(nvec/256) capped at 65536, 32-bit grid-stride loops over the vectors.
#include "common.cuh"

// n / d for n < 2^31 and 1 <= d < 2^31 (see elementwise/02_vec16.cu and ElementwiseVec.FastDivisor).
struct FastDiv { unsigned int d, m, s; };
__device__ __forceinline__ unsigned int fdiv(FastDiv f, unsigned int n) { return (__umulhi(n, f.m) + n) >> f.s; }

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
        for (int k = 0; k < 4; k++)
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

struct SliceVecParams
{
    void* dst;
    const void* src;
    int dt_dst, dt_src;
    unsigned int ld_dst, ld_src;     // dst_dim * inner, src_dim * inner
    unsigned int off_dst, off_src;   // dst_start * inner, src_start * inner
    unsigned int nvec;               // outer * cols / 8
    FastDiv row;                     // d = cols / 8 (cols = len * inner)
    int accumulate;
};
static_assert(sizeof(SliceVecParams) == 64, "SliceVecParams layout changed: update CudaBackend.SliceVecParams");

extern "C" __global__ void slice_copy_v16(SliceVecParams p)
{
    VEC_LOOP(v, p.nvec)
    {
        unsigned int r = fdiv(p.row, v);
        unsigned int c = (v - r * p.row.d) << 3;
        float a[8];
        load8(p.src, p.dt_src, r * p.ld_src + p.off_src + c, a);
        unsigned int di = r * p.ld_dst + p.off_dst + c;
        if (p.accumulate)
        {
            float b[8];
            load8(p.dst, p.dt_dst, di, b);
#pragma unroll
            for (int k = 0; k < 8; k++) a[k] += b[k];
        }
        store8(p.dst, p.dt_dst, di, a);
    }
}

struct QkvVecParams
{
    bf16* q;             // (B, H, L, D)
    bf16* k;
    bf16* v;
    bf16* qkv;           // (B, L, 3, H, D)
    unsigned int nvec;   // B*L*3*H*D / 8
    FastDiv dvec;        // d = D / 8
    FastDiv heads;       // d = H
    FastDiv tokens;      // d = L
};
static_assert(sizeof(QkvVecParams) == 72, "QkvVecParams layout changed: update CudaBackend.QkvVecParams");

// The element of q, k or v (which) that vector v of qkv maps to: ((b H + h) L + l) D + 8 d8.
__device__ __forceinline__ unsigned int qkv_head_element(const QkvVecParams& p, unsigned int v, unsigned int& which)
{
    unsigned int r = fdiv(p.dvec, v);
    unsigned int d8 = v - r * p.dvec.d;
    unsigned int r2 = fdiv(p.heads, r);
    unsigned int h = r - r2 * p.heads.d;
    unsigned int r3 = r2 / 3u;
    which = r2 - 3u * r3;
    unsigned int b = fdiv(p.tokens, r3);
    unsigned int l = r3 - b * p.tokens.d;
    return ((b * p.heads.d + h) * p.tokens.d + l) * (p.dvec.d << 3) + (d8 << 3);
}

extern "C" __global__ void split_qkv_v16(QkvVecParams p)
{
    VEC_LOOP(v, p.nvec)
    {
        unsigned int which;
        unsigned int o = qkv_head_element(p, v, which);
        bf16* out = which == 0 ? p.q : (which == 1 ? p.k : p.v);
        *reinterpret_cast<uint4*>(out + o) = *reinterpret_cast<const uint4*>(p.qkv + (v << 3));
    }
}

extern "C" __global__ void merge_qkv_v16(QkvVecParams p)
{
    VEC_LOOP(v, p.nvec)
    {
        unsigned int which;
        unsigned int o = qkv_head_element(p, v, which);
        const bf16* in = which == 0 ? p.q : (which == 1 ? p.k : p.v);
        *reinterpret_cast<uint4*>(p.qkv + (v << 3)) = *reinterpret_cast<const uint4*>(in + o);
    }
}
