// gelu.cuh: FLUX's MLP activation, tanh-GELU, and its derivative, in fp32: the one formula every GELU kernel uses
// (elementwise.cu, dev/gelu/02_strided.cu, dev/elementwise/02_vec16.cu), so the versions round alike term for term.
//   gelu(x)  = 0.5 x (1 + tanh(u)),  u = k0 (x + k1 x^3), k0 = sqrt(2/pi), k1 = 0.044715
//   gelu'(x) = 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx,  t = tanh(u), du/dx = k0 (1 + 3 k1 x^2)
#pragma once

#define GELU_K0 0.7978845608028654f   // sqrt(2/pi)
#define GELU_K1 0.044715f

__device__ __forceinline__ float gelu_tanh_f(float v)
{
    float t = tanhf(GELU_K0 * (v + GELU_K1 * v * v * v));
    return 0.5f * v * (1.0f + t);
}

__device__ __forceinline__ float gelu_tanh_grad_f(float v)
{
    float t = tanhf(GELU_K0 * (v + GELU_K1 * v * v * v));
    float du = GELU_K0 * (1.0f + 3.0f * GELU_K1 * v * v);
    return 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du;
}
