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

#include "vec16.cuh"

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
