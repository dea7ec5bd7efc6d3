// adamw.cu: one AdamW step (decoupled weight decay, PyTorch's order) on fp32 masters.
//   g = grad * grad_scale;  p -= lr * wd * p;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
//   p -= lr * (m / bc1) / (sqrt(v / bc2) + eps),  bc1 = 1 - b1^step, bc2 = 1 - b2^step (formed on the host in fp64).
// Shapes: param, m, v (n) fp32, updated in place; grad (n) fp32 or bf16 (dt_grad), read only.
// Launch: 1-D grid-stride, block 256.
#include "common.cuh"

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
