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
//
// The device step (scalars stay on the device; IBackend's StepScalars): a step's scalars are fp64 slots
//   scalars[0] loss, [1] sum of squares of the gradients, [2] clip scale, [3] 1 when the update applies, else 0.
// mse_finish: scalars[0] = (sum of the REDUCE_BLOCKS partials of mse_loss, in block order) / n. One thread.
// sum_squares_ranges: the sum of squares of up to MAX_RANGES ranges in one launch; block (x, y) reduces its share of
//   range y into partials[y * gridDim.x + x] (fp64). Launch: grid (REDUCE_BLOCKS, ranges), block 256.
// clip_scale: sums `count` partials in order (deterministic), then norm = sqrt(sum); applies = loss and norm finite;
//   scale = max_norm / norm rounded to fp32 when 0 < max_norm < norm, else 1. One thread.
// adamw_ranges: adamw_step over up to MAX_RANGES ranges in one launch (blockIdx.y the range, grid-stride inside it),
//   each with its own bias corrections; grad_scale is scalars[2], and nothing is written unless scalars[3] != 0.
//   Launch: grid (blocks, ranges), block 256.
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

// This block's share of sum(x^2) in fp64, written to *partial by thread 0.
__device__ __forceinline__ void block_sum_squares(double* partial, const void* x, int dt, i64 n)
{
    double acc = 0.0;
    GRID_STRIDE(i, n)
    {
        double v = ldx(x, dt, i);
        acc += v * v;
    }
    acc = block_sum_d(acc);
    if (threadIdx.x == 0) *partial = acc;
}

extern "C" __global__ void sum_squares(double* partials, const void* x, int dt, i64 n)
{
    block_sum_squares(partials + blockIdx.x, x, dt, n);
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

// One element of an AdamW step; g already multiplied by the clip scale.
__device__ __forceinline__ void adamw_element(float* param, float* m, float* v, i64 i, float g, float lr, float beta1, float beta2,
                                              float eps, float weight_decay, float bias_correction1, float bias_correction2)
{
    float w = param[i];
    w -= lr * weight_decay * w;
    float mi = beta1 * m[i] + (1.0f - beta1) * g;
    float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    param[i] = w - lr * (mi / bias_correction1) / (sqrtf(vi / bias_correction2) + eps);
}

extern "C" __global__ void adamw_step(AdamWParams p)
{
    GRID_STRIDE(i, p.n)
        adamw_element(p.param, p.m, p.v, i, ldx(p.grad, p.dt_grad, i) * p.grad_scale, p.lr, p.beta1, p.beta2, p.eps,
                      p.weight_decay, p.bias_correction1, p.bias_correction2);
}

// ---------------------------------------------------------------- the device step
#define MAX_RANGES 8

extern "C" __global__ void mse_finish(double* scalars, const double* partials, int count, i64 n)
{
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    double s = 0.0;
    for (int i = 0; i < count; i++) s += partials[i];
    scalars[0] = n > 0 ? s / (double)n : 0.0;
}

struct SumSquaresRange
{
    const void* x;
    i64 n;
    int dt;
    int pad;
};
struct SumSquaresRanges
{
    double* partials;
    SumSquaresRange r[MAX_RANGES];
};
static_assert(sizeof(SumSquaresRanges) == 200, "SumSquaresRanges layout changed: update CudaBackend.SumSquaresRanges");

extern "C" __global__ void sum_squares_ranges(SumSquaresRanges p)
{
    const SumSquaresRange r = p.r[blockIdx.y];
    block_sum_squares(p.partials + (i64)blockIdx.y * gridDim.x + blockIdx.x, r.x, r.dt, r.n);
}

extern "C" __global__ void clip_scale(double* scalars, const double* partials, int count, float max_norm)
{
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    double s = 0.0;
    for (int i = 0; i < count; i++) s += partials[i];
    double norm = sqrt(s), loss = scalars[0];
    bool finite = loss - loss == 0.0 && norm - norm == 0.0;   // x - x is NaN for NaN and for infinities
    scalars[1] = s;
    scalars[2] = max_norm > 0.0f && norm > (double)max_norm ? (double)(float)((double)max_norm / norm) : 1.0;
    scalars[3] = finite ? 1.0 : 0.0;
}

struct AdamWRange
{
    float* param;
    const void* grad;
    float* m;
    float* v;
    i64 n;
    int dt_grad;
    float bias_correction1, bias_correction2;
    int pad;
};
struct AdamWRanges
{
    const double* scalars;
    float lr, beta1, beta2, eps, weight_decay;
    int pad;
    AdamWRange r[MAX_RANGES];
};
static_assert(sizeof(AdamWRange) == 56, "AdamWRange layout changed: update CudaBackend.AdamWRange");
static_assert(sizeof(AdamWRanges) == 480, "AdamWRanges layout changed: update CudaBackend.AdamWRanges");

extern "C" __global__ void adamw_ranges(AdamWRanges p)
{
    if (p.scalars[3] == 0.0) return;   // a non-finite step: the update is dropped on the device
    const AdamWRange r = p.r[blockIdx.y];
    float grad_scale = (float)p.scalars[2];
    GRID_STRIDE(i, r.n)
        adamw_element(r.param, r.m, r.v, i, ldx(r.grad, r.dt_grad, i) * grad_scale, p.lr, p.beta1, p.beta2, p.eps,
                      p.weight_decay, r.bias_correction1, r.bias_correction2);
}
