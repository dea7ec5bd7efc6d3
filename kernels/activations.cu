// activations.cu: GELU (tanh approximation) and SiLU, forward and backward.
// Contract: x, dy, out are bf16, n elements each. Forward: out = f(x). Backward: out = f'(x) * dy (written with =).
// Launch: 1-D, block 256, grid ceil(n/256) capped; grid-stride loops. Math in fp32.
#include "common.cuh"

#define GELU_K0 0.7978845608028654f   // sqrt(2/pi)
#define GELU_K1 0.044715f

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

extern "C" __global__ void silu_forward(bf16* out, const bf16* x, i64 n)
{
    GRID_STRIDE(i, n)
    {
        float v = bf2f(x[i]);
        out[i] = f2bf(v / (1.0f + expf(-v)));
    }
}

// d/dx x s(x) = s (1 + x (1 - s)).
extern "C" __global__ void silu_backward(bf16* dx, const bf16* x, const bf16* dy, i64 n)
{
    GRID_STRIDE(i, n)
    {
        float v = bf2f(x[i]);
        float s = 1.0f / (1.0f + expf(-v));
        dx[i] = f2bf(s * (1.0f + v * (1.0f - s)) * bf2f(dy[i]));
    }
}
