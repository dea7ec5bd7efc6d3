// memory.cu: fill and convert/copy over flat element ranges (the Memory group; uploads and downloads are copies
// by the driver).
// Contract: n elements; every pointer may be bf16 or fp32 (its dt code). Outputs are written with =.
// Launch: 1-D, block 256, grid ceil(n/256) capped; grid-stride loops.
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
