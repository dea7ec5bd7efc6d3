// elementwise.cu: in-place axpy and scale, and FLUX's activations (tanh-GELU with its backward, SiLU).
// Contract: n elements, 1-D. axpy and scale take either storage for each pointer (its dt code): axpy accumulates,
//   acc += alpha * x (in fp32, stored in acc's precision); scale writes t = alpha * t. The activations read and write
//   bf16: forward out = f(x); backward dx = f'(x) * dy; both written with =. Math in fp32.
// Launch: 1-D, block 256, grid ceil(n/256) capped; grid-stride loops.
#include "common.cuh"
#include "gelu.cuh"

extern "C" __global__ void axpy_kernel(void* acc, int dt_acc, const void* x, int dt_x, i64 n, float alpha)
{
    GRID_STRIDE(i, n) stx(acc, dt_acc, i, ldx(acc, dt_acc, i) + alpha * ldx(x, dt_x, i));
}

extern "C" __global__ void scale_kernel(void* t, int dt, i64 n, float alpha)
{
    GRID_STRIDE(i, n) stx(t, dt, i, alpha * ldx(t, dt, i));
}

extern "C" __global__ void gelu_tanh_forward(bf16* out, const bf16* x, i64 n)
{
    GRID_STRIDE(i, n) out[i] = f2bf(gelu_tanh_f(bf2f(x[i])));
}

extern "C" __global__ void gelu_tanh_backward(bf16* dx, const bf16* x, const bf16* dy, i64 n)
{
    GRID_STRIDE(i, n) dx[i] = f2bf(gelu_tanh_grad_f(bf2f(x[i])) * bf2f(dy[i]));
}

// SiLU has no backward: the model applies it only on the conditioning path (vec and the MLP embedders), whose
// layers are frozen and hold no LoRA target, so no gradient flows through it.
extern "C" __global__ void silu_forward(bf16* out, const bf16* x, i64 n)
{
    GRID_STRIDE(i, n)
    {
        float v = bf2f(x[i]);
        out[i] = f2bf(v / (1.0f + expf(-v)));
    }
}
