// memory.cu: fill, convert/copy, axpy and scale over flat element ranges.
// Contract: n elements; every pointer may be bf16 or fp32 (its dt code). Outputs are written with =, except
// axpy which accumulates: acc += alpha * x. Launch: 1-D, block 256, grid ceil(n/256) capped; grid-stride loops.
#include "common.cuh"

extern "C" __global__ void fill_kernel(void* out, int dt, i64 n, float value)
{
    GRID_STRIDE(i, n) stx(out, dt, i, value);
}

// dst = src with a precision change (or a plain copy when dt_src == dt_dst).
extern "C" __global__ void convert_kernel(void* dst, int dt_dst, const void* src, int dt_src, i64 n)
{
    GRID_STRIDE(i, n) stx(dst, dt_dst, i, ldx(src, dt_src, i));
}

// acc += alpha * x, accumulated in fp32 then stored in acc's precision.
extern "C" __global__ void axpy_kernel(void* acc, int dt_acc, const void* x, int dt_x, i64 n, float alpha)
{
    GRID_STRIDE(i, n) stx(acc, dt_acc, i, ldx(acc, dt_acc, i) + alpha * ldx(x, dt_x, i));
}

extern "C" __global__ void scale_kernel(void* t, int dt, i64 n, float alpha)
{
    GRID_STRIDE(i, n) stx(t, dt, i, alpha * ldx(t, dt, i));
}
