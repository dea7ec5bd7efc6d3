// rmsnorm.cu: RMSNorm with a learned scale (FLUX's QK norm), forward and backward.
//   y = x * rstd * w,  rstd = 1 / sqrt(mean(x^2) + eps).
// Shapes: x, y, dy, dx (rows, D) bf16; w (D) bf16; rstd (rows) fp32. All outputs written with =.
// The weight is frozen, so the backward returns dx only: dx = rstd * (dy*w - xhat * mean(dy*w*xhat)), xhat = x*rstd.
// Launch: one warp per row, block 256 (8 rows), grid ceil(rows/8).
#include "common.cuh"

extern "C" __global__ void rmsnorm_forward(bf16* y, float* rstd_out, const bf16* x, const bf16* w, i64 rows, int D, float eps)
{
    i64 row = (i64)blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    int lane = threadIdx.x % WARP;
    if (row >= rows) return;
    const bf16* xr = x + row * D;
    float s = 0.0f;
    for (int d = lane; d < D; d += WARP) { float v = bf2f(xr[d]); s += v * v; }
    float rstd = rsqrtf(warp_sum(s) / D + eps);
    for (int d = lane; d < D; d += WARP) y[row * D + d] = f2bf(bf2f(xr[d]) * rstd * bf2f(w[d]));
    if (lane == 0) rstd_out[row] = rstd;
}

extern "C" __global__ void rmsnorm_backward(bf16* dx, const bf16* dy, const bf16* x, const bf16* w, const float* rstd_in, i64 rows, int D)
{
    i64 row = (i64)blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    int lane = threadIdx.x % WARP;
    if (row >= rows) return;
    float rstd = rstd_in[row];
    float s = 0.0f;
    for (int d = lane; d < D; d += WARP)
        s += bf2f(dy[row * D + d]) * bf2f(w[d]) * bf2f(x[row * D + d]) * rstd;
    s = warp_sum(s) / D;
    for (int d = lane; d < D; d += WARP)
    {
        float xh = bf2f(x[row * D + d]) * rstd;
        dx[row * D + d] = f2bf(rstd * (bf2f(dy[row * D + d]) * bf2f(w[d]) - xh * s));
    }
}
