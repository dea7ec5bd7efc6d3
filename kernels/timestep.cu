// timestep.cu: sinusoidal timestep embedding (FLUX's `timestep_embedding`), forward and backward.
//   half = dim / 2, f_k = exp(-ln(max_period) * k / half), a_k = time_factor * t[b] * f_k,
//   out[b] = [cos(a_0..a_{half-1}), sin(a_0..a_{half-1})] (+ one zero column when dim is odd).
// Shapes: t (B) either precision (dt_t); out (B, dim) bf16; dy (B, dim) either precision; dt (B) bf16. Written with =.
// The arguments are formed in fp64: a reaches 1000 rad, where fp32 would already lose ~1e-4 of phase.
// Launch: forward 1-D grid-stride over B*dim, block 256; backward one block of 256 per b.
#include "common.cuh"

extern "C" __global__ void timestep_embedding_forward(bf16* out, const void* t, int dt_t, int B, int dim, float time_factor, float max_period)
{
    int half = dim / 2;
    GRID_STRIDE(i, (i64)B * dim)
    {
        i64 b = i / dim;
        int c = (int)(i % dim);
        float v = 0.0f;
        if (c < 2 * half)
        {
            int k = c < half ? c : c - half;
            double a = (double)time_factor * (double)ldx(t, dt_t, b) * exp(-log((double)max_period) * k / half);
            v = (float)(c < half ? cos(a) : sin(a));
        }
        out[i] = f2bf(v);
    }
}

// dt[b] = sum_k time_factor f_k (-sin(a_k) dy[b, k] + cos(a_k) dy[b, half + k]).
extern "C" __global__ void timestep_embedding_backward(bf16* dt, const void* t, int dt_t, const void* dy, int dt_dy, int dim, float time_factor, float max_period)
{
    int b = blockIdx.x, half = dim / 2;
    double tb = (double)ldx(t, dt_t, b), acc = 0.0;
    for (int k = threadIdx.x; k < half; k += blockDim.x)
    {
        double f = exp(-log((double)max_period) * k / half);
        double a = (double)time_factor * tb * f;
        acc += (double)time_factor * f * (-sin(a) * ldx(dy, dt_dy, (i64)b * dim + k) + cos(a) * ldx(dy, dt_dy, (i64)b * dim + half + k));
    }
    acc = block_sum_d(acc);
    if (threadIdx.x == 0) dt[b] = f2bf((float)acc);
}
