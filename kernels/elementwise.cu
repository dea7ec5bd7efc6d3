// elementwise.cu: in-place axpy and scale, and FLUX's activations (tanh-GELU with its backward, SiLU).
// Contract: n elements, 1-D. axpy and scale take either storage for each pointer (its dt code): axpy accumulates,
//   acc += alpha * x (in fp32, stored in acc's precision); scale writes t = alpha * t. The activations read and write
//   bf16: forward out = f(x); backward dx = f'(x) * dy; both written with =. Math in fp32.
// Launch: 1-D, block 256, grid ceil(n/256) capped; grid-stride loops.
#include "common.cuh"

#define GELU_K0 0.7978845608028654f   // sqrt(2/pi)
#define GELU_K1 0.044715f

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
    GRID_STRIDE(i, n)
    {
        float v = bf2f(x[i]);
        float t = tanhf(GELU_K0 * (v + GELU_K1 * v * v * v));
        out[i] = f2bf(0.5f * v * (1.0f + t));
    }
}

// d/dx 0.5 x (1 + tanh(u)) = 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx, u = k0 (x + k1 x^3).
extern "C" __global__ void gelu_tanh_backward(bf16* dx, const bf16* x, const bf16* dy, i64 n)
{
    GRID_STRIDE(i, n)
    {
        float v = bf2f(x[i]);
        float t = tanhf(GELU_K0 * (v + GELU_K1 * v * v * v));
        float du = GELU_K0 * (1.0f + 3.0f * GELU_K1 * v * v);
        float g = 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du;
        dx[i] = f2bf(g * bf2f(dy[i]));
    }
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
