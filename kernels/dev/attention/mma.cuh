// mma.cuh: the tensor-core building blocks of attention version 2 (02_mma_forward.cu, 02_mma_backward.cu):
// mma.sync m16n8k16 (bf16 in, fp32 accumulate, sm_80+), bf16 packing and the padded shared row.
// Fragment layouts (PTX ISA, m16n8k16 .bf16): g = lane / 4, t = lane % 4.
//   A (16x16, row): regs {r g, c 2t..2t+1}, {r g+8, c 2t..}, {r g, c 2t+8..}, {r g+8, c 2t+8..}
//   B (16x8, col):  regs {k 2t..2t+1, n g}, {k 2t+8..2t+9, n g}
//   C (16x8):       c0, c1 = (r g, c 2t..2t+1); c2, c3 = (r g+8, c 2t..2t+1)
#pragma once
#include "attention.cuh"

#define SROW (MAXD + 8)   // bf16 per shared row: +16 bytes so the 8 row groups of a fragment load hit distinct banks

__device__ __forceinline__ unsigned pack_bf16(bf16 lo, bf16 hi) { return (unsigned)lo | ((unsigned)hi << 16); }

__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

// Two adjacent bf16 of row `row` (zero past the end) as one 32-bit word.
__device__ __forceinline__ unsigned ld_pair(const bf16* t, i64 base, int row, int c, int L, int D)
{
    return row < L ? *(const unsigned*)(t + base + (i64)row * D + c) : 0u;
}
