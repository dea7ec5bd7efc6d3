// layout.cu: narrow / add-narrow / concat (one strided slice copy) and FLUX's qkv split and merge.
// slice_copy: view src as (outer, src_dim, inner) and dst as (outer, dst_dim, inner); for j < len:
//   dst[o, dst_start + j, i] (= or +=, by accumulate) src[o, src_start + j, i]. Either precision on each side.
//   Narrow: = into a fresh tensor; AddNarrow: += into the destination; Concat: one = per part.
// split_qkv: qkv (B, L, 3, H, D) bf16 -> q, k, v (B, H, L, D) bf16, written with =. merge_qkv is its inverse (=).
// Launch: 1-D grid-stride, block 256, over the elements moved.
#include "common.cuh"

extern "C" __global__ void slice_copy(void* dst, int dt_dst, const void* src, int dt_src, i64 outer, i64 inner,
                                      int dst_dim, int dst_start, int src_dim, int src_start, int len, int accumulate)
{
    GRID_STRIDE(i, outer * len * inner)
    {
        i64 in = i % inner, r = i / inner;
        i64 j = r % len, o = r / len;
        i64 si = (o * src_dim + src_start + j) * inner + in;
        i64 di = (o * dst_dim + dst_start + j) * inner + in;
        float v = ldx(src, dt_src, si);
        if (accumulate) v += ldx(dst, dt_dst, di);
        stx(dst, dt_dst, di, v);
    }
}

extern "C" __global__ void split_qkv(bf16* q, bf16* k, bf16* v, const bf16* qkv, int B, int L, int H, int D)
{
    GRID_STRIDE(i, (i64)B * L * 3 * H * D)
    {
        int d = (int)(i % D);
        i64 r = i / D;
        int h = (int)(r % H); r /= H;
        int which = (int)(r % 3); r /= 3;
        i64 l = r % L, b = r / L;
        bf16* out = which == 0 ? q : (which == 1 ? k : v);
        out[((b * H + h) * L + l) * D + d] = qkv[i];
    }
}

extern "C" __global__ void merge_qkv(bf16* qkv, const bf16* q, const bf16* k, const bf16* v, int B, int L, int H, int D)
{
    GRID_STRIDE(i, (i64)B * L * 3 * H * D)
    {
        int d = (int)(i % D);
        i64 r = i / D;
        int h = (int)(r % H); r /= H;
        int which = (int)(r % 3); r /= 3;
        i64 l = r % L, b = r / L;
        const bf16* in = which == 0 ? q : (which == 1 ? k : v);
        qkv[i] = in[((b * H + h) * L + l) * D + d];
    }
}
