// 02_vec16.cu: the elementwise kernels with 16-byte accesses and 32-bit indices. Version 01 is kernels/elementwise.cu
// (axpy_kernel, scale_kernel, gelu_tanh_forward / _backward, silu_forward) and kernels/conditioning.cu's
// gated_residual_forward / gated_residual_backward_dy: one element per thread, 64-bit grid-stride indices, and for the
// gated residual a 64-bit div and mod per element to find gate[b, c].
//
// Contract: the same as version 01's, op for op (same formulas in fp32, so every result rounds as version 01's does):
//   axpy_v16        acc[i] = acc[i] + alpha * x[i]   (+=, either storage for acc and x: dt codes of common.cuh)
//   scale_v16       t[i] = alpha * t[i]              (either storage)
//   gelu_tanh_forward_v16   out[i] = gelu(x[i])               (=, bf16)
//   gelu_tanh_backward_v16  dx[i] = gelu'(x[i]) * dy[i]       (=, bf16)
//   silu_forward_v16        out[i] = x[i] / (1 + exp(-x[i]))  (=, bf16)
//   gated_residual_forward_v16      out = x + gate[b] * y  over (B, L, C)   (=, bf16; gate (B, C))
//   gated_residual_backward_dy_v16  dy = gate[b] * dout    over (B, L, C)   (=, bf16); dgate stays version 01's
// Each thread owns vectors of 8 consecutive elements: one uint4 (16 bytes) per bf16 operand, two float4 per fp32
// operand. The launcher (src/Kernels/Dev/ElementwiseVec.cs decides) runs these only when the element count is a
// multiple of 8, below 2^31, and every pointer is 16-byte aligned (the gated residual also needs C a multiple of 8, so
// a vector never straddles two rows of gate); otherwise version 01 runs. So every index fits an unsigned 32-bit
// integer: vector v covers elements 8v .. 8v+7 < n < 2^31.
// The gated residual's gate row and column come from fast division by the constants C/8 and L (a multiply-high, an
// add and a shift: FastDiv in vec16.cuh, magic numbers from the host) instead of a 64-bit div and mod per element.
// Launch: 1-D, block 256, grid ceil(nvec/256) capped at 65536, 32-bit grid-stride loops over the nvec = n/8 vectors
// (v + stride stays below 2^31 + 2^24, so the loop counter cannot wrap).
#include "common.cuh"
#include "gelu.cuh"
#include "vec16.cuh"

// acc and x may be the same tensor (AddInPlace(t, t)): each thread reads its vector before writing it.
extern "C" __global__ void axpy_v16(void* acc, int dt_acc, const void* x, int dt_x, unsigned int nvec, float alpha)
{
    VEC_LOOP(v, nvec)
    {
        float a[8], b[8];
        load8(acc, dt_acc, v << 3, a);
        load8(x, dt_x, v << 3, b);
#pragma unroll
        for (int k = 0; k < 8; k++) a[k] = a[k] + alpha * b[k];
        store8(acc, dt_acc, v << 3, a);
    }
}

extern "C" __global__ void scale_v16(void* t, int dt, unsigned int nvec, float alpha)
{
    VEC_LOOP(v, nvec)
    {
        float a[8];
        load8(t, dt, v << 3, a);
#pragma unroll
        for (int k = 0; k < 8; k++) a[k] = alpha * a[k];
        store8(t, dt, v << 3, a);
    }
}

// gelu.cuh: version 01's formulas, term for term (so the fp32 contractions, and the roundings, are the same).

extern "C" __global__ void gelu_tanh_forward_v16(bf16* out, const bf16* x, unsigned int nvec)
{
    VEC_LOOP(v, nvec)
    {
        float a[8];
        load8(x, DT_BF16, v << 3, a);
#pragma unroll
        for (int k = 0; k < 8; k++) a[k] = gelu_tanh_f(a[k]);
        store8(out, DT_BF16, v << 3, a);
    }
}

extern "C" __global__ void gelu_tanh_backward_v16(bf16* dx, const bf16* x, const bf16* dy, unsigned int nvec)
{
    VEC_LOOP(v, nvec)
    {
        float a[8], g[8];
        load8(x, DT_BF16, v << 3, a);
        load8(dy, DT_BF16, v << 3, g);
#pragma unroll
        for (int k = 0; k < 8; k++) a[k] = gelu_tanh_grad_f(a[k]) * g[k];
        store8(dx, DT_BF16, v << 3, a);
    }
}

extern "C" __global__ void silu_forward_v16(bf16* out, const bf16* x, unsigned int nvec)
{
    VEC_LOOP(v, nvec)
    {
        float a[8];
        load8(x, DT_BF16, v << 3, a);
#pragma unroll
        for (int k = 0; k < 8; k++) a[k] = a[k] / (1.0f + expf(-a[k]));
        store8(out, DT_BF16, v << 3, a);
    }
}

// ---------------------------------------------------------------- gated residual
// One parameter struct for both directions. Forward: out = x + gate[b] * y. Backward: out = dy, x = dout, y unused.
// Vector v lies in row r = v / (C/8) of the B*L rows, at columns c = 8 (v - r C/8) .. +7, and in batch b = r / L.
struct GatedVecParams
{
    bf16* out;           // (B, L, C)
    const bf16* x;       // (B, L, C)
    const bf16* gate;    // (B, C)
    const bf16* y;       // (B, L, C), forward only
    unsigned int nvec;   // B*L*C / 8
    FastDiv row;         // d = C / 8
    FastDiv batch;       // d = L
};
static_assert(sizeof(GatedVecParams) == 64, "GatedVecParams layout changed: update CudaBackend.GatedVecParams");

__device__ __forceinline__ unsigned int gate_element(const GatedVecParams& p, unsigned int v)
{
    unsigned int r = fdiv(p.row, v);
    unsigned int c8 = v - r * p.row.d;
    return fdiv(p.batch, r) * (p.row.d << 3) + (c8 << 3);   // b * C + c
}

extern "C" __global__ void gated_residual_forward_v16(GatedVecParams p)
{
    VEC_LOOP(v, p.nvec)
    {
        float a[8], g[8], b[8];
        load8(p.x, DT_BF16, v << 3, a);
        load8(p.gate, DT_BF16, gate_element(p, v), g);
        load8(p.y, DT_BF16, v << 3, b);
#pragma unroll
        for (int k = 0; k < 8; k++) a[k] = a[k] + g[k] * b[k];
        store8(p.out, DT_BF16, v << 3, a);
    }
}

extern "C" __global__ void gated_residual_backward_dy_v16(GatedVecParams p)
{
    VEC_LOOP(v, p.nvec)
    {
        float a[8], g[8];
        load8(p.x, DT_BF16, v << 3, a);
        load8(p.gate, DT_BF16, gate_element(p, v), g);
#pragma unroll
        for (int k = 0; k < 8; k++) a[k] = g[k] * a[k];
        store8(p.out, DT_BF16, v << 3, a);
    }
}
