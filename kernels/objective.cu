// objective.cu: the Objective group. MSE loss with its gradient, the sum of squares used for gradient norms, and
// one AdamW step.
//
// mse_loss, sum_squares: reduce in fp64 per thread, then per block; each block writes its partial
//   (partials[blockIdx.x], fp64) and the host adds the gridDim.x partials in a fixed order, so the result is
//   deterministic. mse: pred, target (n) either precision; dpred (n) bf16 = 2 (pred - target) / n (written with =).
//   Launch: 1-D, block 256, a fixed grid of REDUCE_BLOCKS blocks (the host reads that many partials).
// adamw_step (decoupled weight decay, PyTorch's order) on fp32 masters:
//   g = grad * grad_scale;  p -= lr * wd * p;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
//   p -= lr * (m / bc1) / (sqrt(v / bc2) + eps),  bc1 = 1 - b1^step, bc2 = 1 - b2^step (formed on the host in fp64).
//   Shapes: param, m, v (n) fp32, updated in place; grad (n) fp32 or bf16 (dt_grad), read only.
//   Launch: 1-D grid-stride, block 256.
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

// ---------------------------------------------------------------- adamw
struct AdamWParams
{
    float* param;
    const void* grad;
    float* m;
    float* v;
    i64 n;
    int dt_grad;
    float lr, beta1, beta2, eps, weight_decay, grad_scale, bias_correction1, bias_correction2;
};
static_assert(sizeof(AdamWParams) == 80, "AdamWParams layout changed: update CudaBackend.AdamWParams");

extern "C" __global__ void adamw_step(AdamWParams p)
{
    GRID_STRIDE(i, p.n)
    {
        float g = ldx(p.grad, p.dt_grad, i) * p.grad_scale;
        float w = p.param[i];
        w -= p.lr * p.weight_decay * w;
        float m = p.beta1 * p.m[i] + (1.0f - p.beta1) * g;
        float v = p.beta2 * p.v[i] + (1.0f - p.beta2) * g * g;
        p.m[i] = m;
        p.v[i] = v;
        p.param[i] = w - p.lr * (m / p.bias_correction1) / (sqrtf(v / p.bias_correction2) + p.eps);
    }
}
