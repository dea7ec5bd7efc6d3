// norm.cu: the Norm group. LayerNorm without affine followed by FLUX's modulation, and RMSNorm with a learned
// scale (FLUX's QK norm); forward and backward of each.
//
// layernorm_modulate: y = (1 + scale[b]) * (x - mean) * rstd + shift[b],  rstd = 1 / sqrt(var + eps), var biased
//   (divide by C). Shapes: x, y, dy, dx (B, L, C) bf16; shift, scale (B, C) bf16; stats (B*L, 2) fp32 = (mean, rstd)
//   per row; dshift, dscale (B, C) bf16; partial (B, chunks, C) fp32 scratch, chunks = ceil(L / CHUNK_ROWS).
//   Written with =: y, stats, dx, partial, dshift, dscale (nothing accumulates).
//   Launch: forward and backward_dx: one warp per row, block 256 (8 rows), grid ceil(B*L/8).
//           backward_partials: block (32, 8), grid (ceil(C/32), chunks, B); then sum_chunks_kernel (common.cuh).
// rmsnorm: y = x * rstd * w,  rstd = 1 / sqrt(mean(x^2) + eps). Shapes: x, y, dy, dx (rows, D) bf16; w (D) bf16;
//   rstd (rows) fp32. All outputs written with =. The weight is frozen, so the backward returns dx only:
//   dx = rstd * (dy*w - xhat * mean(dy*w*xhat)), xhat = x*rstd.
//   Launch: one warp per row, block 256 (8 rows), grid ceil(rows/8).
#include "common.cuh"

struct LnParams
{
    const bf16* x;       // (B, L, C)
    const bf16* shift;   // (B, C)
    const bf16* scale;   // (B, C)
    const bf16* dy;      // (B, L, C), backward only
    bf16* y;             // (B, L, C): forward output, or dx in the backward
    float* stats;        // (B*L, 2): mean, rstd
    float* partial_shift;   // (B, chunks, C)
    float* partial_scale;   // (B, chunks, C)
    int B, L, C, chunks;
    float eps;
};
static_assert(sizeof(LnParams) == 88, "LnParams layout changed: update CudaBackend.LnParams");

extern "C" __global__ void layernorm_modulate_forward(LnParams p)
{
    i64 row = (i64)blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    int lane = threadIdx.x % WARP;
    if (row >= (i64)p.B * p.L) return;
    const bf16* x = p.x + row * p.C;
    i64 b = row / p.L;
    float s = 0.0f;
    for (int c = lane; c < p.C; c += WARP) s += bf2f(x[c]);
    float mean = warp_sum(s) / p.C;
    float v = 0.0f;
    for (int c = lane; c < p.C; c += WARP) { float d = bf2f(x[c]) - mean; v += d * d; }
    float rstd = rsqrtf(warp_sum(v) / p.C + p.eps);
    bf16* y = p.y + row * p.C;
    for (int c = lane; c < p.C; c += WARP)
    {
        float n = (bf2f(x[c]) - mean) * rstd;
        y[c] = f2bf((1.0f + bf2f(p.scale[b * p.C + c])) * n + bf2f(p.shift[b * p.C + c]));
    }
    if (lane == 0) { p.stats[2 * row] = mean; p.stats[2 * row + 1] = rstd; }
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * (1 + scale[b]).
extern "C" __global__ void layernorm_modulate_backward_dx(LnParams p)
{
    i64 row = (i64)blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    int lane = threadIdx.x % WARP;
    if (row >= (i64)p.B * p.L) return;
    const bf16* x = p.x + row * p.C;
    const bf16* dy = p.dy + row * p.C;
    i64 b = row / p.L;
    float mean = p.stats[2 * row], rstd = p.stats[2 * row + 1];
    float sg = 0.0f, sgx = 0.0f;
    for (int c = lane; c < p.C; c += WARP)
    {
        float g = bf2f(dy[c]) * (1.0f + bf2f(p.scale[b * p.C + c]));
        float xh = (bf2f(x[c]) - mean) * rstd;
        sg += g;
        sgx += g * xh;
    }
    sg = warp_sum(sg) / p.C;
    sgx = warp_sum(sgx) / p.C;
    bf16* dx = p.y + row * p.C;
    for (int c = lane; c < p.C; c += WARP)
    {
        float g = bf2f(dy[c]) * (1.0f + bf2f(p.scale[b * p.C + c]));
        float xh = (bf2f(x[c]) - mean) * rstd;
        dx[c] = f2bf(rstd * (g - sg - xh * sgx));
    }
}

// partial_shift[b, k, c] = sum over rows l of chunk k of dy;  partial_scale[b, k, c] = same of dy * xhat.
extern "C" __global__ void layernorm_modulate_backward_partials(LnParams p)
{
    __shared__ float sh[8][33], ss[8][33];
    int c = blockIdx.x * 32 + threadIdx.x;
    int k = blockIdx.y, b = blockIdx.z;
    float ashift = 0.0f, ascale = 0.0f;
    if (c < p.C)
    {
        int l_end = min(p.L, (k + 1) * CHUNK_ROWS);
        for (int l = k * CHUNK_ROWS + threadIdx.y; l < l_end; l += blockDim.y)
        {
            i64 row = (i64)b * p.L + l;
            float d = bf2f(p.dy[row * p.C + c]);
            float xh = (bf2f(p.x[row * p.C + c]) - p.stats[2 * row]) * p.stats[2 * row + 1];
            ashift += d;
            ascale += d * xh;
        }
    }
    sh[threadIdx.y][threadIdx.x] = ashift;
    ss[threadIdx.y][threadIdx.x] = ascale;
    __syncthreads();
    if (threadIdx.y == 0 && c < p.C)
    {
        for (int j = 1; j < blockDim.y; j++) { ashift += sh[j][threadIdx.x]; ascale += ss[j][threadIdx.x]; }
        i64 o = ((i64)b * p.chunks + k) * p.C + c;
        p.partial_shift[o] = ashift;
        p.partial_scale[o] = ascale;
    }
}

// ---------------------------------------------------------------- rmsnorm
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
