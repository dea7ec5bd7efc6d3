// conditioning.cu: the Conditioning group. FLUX's sinusoidal timestep embedding (`timestep_embedding`) and the
// gated residual out = x + gate[b] * y that applies a modulation's gate.
//
// timestep_embedding_forward: half = dim / 2, f_k = exp(-ln(max_period) * k / half), a_k = time_factor * t[b] * f_k,
//   out[b] = [cos(a_0..a_{half-1}), sin(a_0..a_{half-1})] (+ one zero column when dim is odd).
//   Shapes: t (B) either precision (dt_t); out (B, dim) bf16, written with =. The arguments are formed in fp64: a
//   reaches 1000 rad, where fp32 would already lose ~1e-4 of phase. No backward: the timesteps are inputs, not
//   trained. Launch: 1-D grid-stride over B*dim, block 256.
// gated_residual: shapes x, y, out, dout, dy (B, L, C) bf16; gate, dgate (B, C) bf16; partial (B, chunks, C) fp32
//   scratch. Forward writes out with =. Backward writes dy = gate[b] * dout with = and the chunk partials of
//   dgate = sum over L of dout * y; sum_chunks_kernel (common.cuh) then writes dgate with =. dx is dout itself.
//   Launch: forward/backward_dy 1-D grid-stride, block 256; backward_partials block (32, 8),
//   grid (ceil(C/32), chunks, B).
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

// ---------------------------------------------------------------- gated residual
extern "C" __global__ void gated_residual_forward(bf16* out, const bf16* x, const bf16* gate, const bf16* y, int B, int L, int C)
{
    GRID_STRIDE(i, (i64)B * L * C)
    {
        i64 b = i / ((i64)L * C), c = i % C;
        out[i] = f2bf(bf2f(x[i]) + bf2f(gate[b * C + c]) * bf2f(y[i]));
    }
}

extern "C" __global__ void gated_residual_backward_dy(bf16* dy, const bf16* dout, const bf16* gate, int B, int L, int C)
{
    GRID_STRIDE(i, (i64)B * L * C)
    {
        i64 b = i / ((i64)L * C), c = i % C;
        dy[i] = f2bf(bf2f(gate[b * C + c]) * bf2f(dout[i]));
    }
}

extern "C" __global__ void gated_residual_backward_partials(float* partial, const bf16* dout, const bf16* y, int B, int L, int C, int chunks)
{
    __shared__ float s[8][33];
    int c = blockIdx.x * 32 + threadIdx.x;
    int k = blockIdx.y, b = blockIdx.z;
    float acc = 0.0f;
    if (c < C)
    {
        int l_end = min(L, (k + 1) * CHUNK_ROWS);
        for (int l = k * CHUNK_ROWS + threadIdx.y; l < l_end; l += blockDim.y)
        {
            i64 o = ((i64)b * L + l) * C + c;
            acc += bf2f(dout[o]) * bf2f(y[o]);
        }
    }
    s[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < C)
    {
        for (int j = 1; j < blockDim.y; j++) acc += s[j][threadIdx.x];
        partial[((i64)b * chunks + k) * C + c] = acc;
    }
}
