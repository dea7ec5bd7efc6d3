// loss.cu: MSE loss with its gradient, and the sum of squares used for gradient norms.
// Both reduce in fp64 per thread, then per block; each block writes its partial (partials[blockIdx.x], fp64) and
// the host adds the gridDim.x partials in a fixed order, so the result is deterministic.
// mse: pred, target (n) either precision; dpred (n) bf16 = 2 (pred - target) / n (written with =).
// Launch: 1-D, block 256, a fixed grid of REDUCE_BLOCKS blocks (the host reads that many partials).
#include "common.cuh"

extern "C" __global__ void mse_loss(double* partials, bf16* dpred, const void* pred, int dt_pred, const void* target, int dt_target, i64 n)
{
    double acc = 0.0;
    float scale = (float)(2.0 / (double)n);
    GRID_STRIDE(i, n)
    {
        float d = ldx(pred, dt_pred, i) - ldx(target, dt_target, i);
        acc += (double)d * d;
        dpred[i] = f2bf(scale * d);
    }
    acc = block_sum_d(acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

extern "C" __global__ void sum_squares(double* partials, const void* x, int dt, i64 n)
{
    double acc = 0.0;
    GRID_STRIDE(i, n)
    {
        double v = ldx(x, dt, i);
        acc += v * v;
    }
    acc = block_sum_d(acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}
