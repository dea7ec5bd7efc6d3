// mma.cuh: the tensor-core building blocks of attention versions 2 to 4 (02_mma_forward.cu, 02_mma_backward.cu,
// 03_pipelined_forward.cu, 04_onepass_backward.cu): mma.sync m16n8k16 (bf16 in, fp32 accumulate, sm_80+), bf16
// packing, the padded shared row, cp.async and ldmatrix (sm_80+), and the forwards' online-softmax step.
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

// One key tile of the online softmax (FlashAttention-2) for the two query rows a lane holds (g and g + 8): S of
// NT n-tiles (C fragments) is scaled by `scale`, keys at or past L are masked, the running maxima m and the lane's
// shares of the row sums l are updated, O is rescaled, and S is left holding P = exp(S - m). With Exp2 the scores
// are in base 2 (scale already includes log2 e) and exp2f is used; otherwise expf. The row max over the 4 lanes of
// a row group is two xor shuffles. Key j0 must be < L, so the new maxima are finite.
template <int NT, bool Exp2>
__device__ __forceinline__ void online_softmax_tile(float (&s)[NT][4], float (&o)[MAXD / 8][4], float& mA, float& mB,
                                                    float& lA, float& lB, int j0, int L, int t, float scale)
{
    float mxA = -INFINITY, mxB = -INFINITY;
#pragma unroll
    for (int n = 0; n < NT; n++)
#pragma unroll
        for (int e = 0; e < 2; e++)
        {
            bool ok = j0 + n * 8 + 2 * t + e < L;
            s[n][e] = ok ? s[n][e] * scale : -INFINITY;
            s[n][2 + e] = ok ? s[n][2 + e] * scale : -INFINITY;
            mxA = fmaxf(mxA, s[n][e]);
            mxB = fmaxf(mxB, s[n][2 + e]);
        }
    mxA = fmaxf(mxA, __shfl_xor_sync(0xffffffffu, mxA, 1));
    mxA = fmaxf(mxA, __shfl_xor_sync(0xffffffffu, mxA, 2));
    mxB = fmaxf(mxB, __shfl_xor_sync(0xffffffffu, mxB, 1));
    mxB = fmaxf(mxB, __shfl_xor_sync(0xffffffffu, mxB, 2));
    float mnA = fmaxf(mA, mxA), mnB = fmaxf(mB, mxB);
    float alA = Exp2 ? exp2f(mA - mnA) : expf(mA - mnA), alB = Exp2 ? exp2f(mB - mnB) : expf(mB - mnB);
    lA *= alA;
    lB *= alB;
#pragma unroll
    for (int n = 0; n < MAXD / 8; n++)
    {
        o[n][0] *= alA; o[n][1] *= alA;
        o[n][2] *= alB; o[n][3] *= alB;
    }
#pragma unroll
    for (int n = 0; n < NT; n++)
#pragma unroll
        for (int e = 0; e < 2; e++)
        {
            s[n][e] = Exp2 ? exp2f(s[n][e] - mnA) : expf(s[n][e] - mnA);
            s[n][2 + e] = Exp2 ? exp2f(s[n][2 + e] - mnB) : expf(s[n][2 + e] - mnB);
            lA += s[n][e];
            lB += s[n][2 + e];
        }
    mA = mnA;
    mB = mnB;
}

// The A fragments of Q for a warp's 16 query rows (rowA = its row g, rowB = g + 8) over the head dim, zero past L:
// loaded once and kept in registers for the whole key loop.
__device__ __forceinline__ void load_q_fragments(unsigned (&qa)[MAXD / 16][4], const AttnParams& p, i64 base, int rowA, int rowB, int t)
{
#pragma unroll
    for (int k = 0; k < MAXD / 16; k++)
    {
        if (k < p.D / 16)
        {
            int c = k * 16 + 2 * t;
            qa[k][0] = ld_pair(p.q, base, rowA, c, p.L, p.D);
            qa[k][1] = ld_pair(p.q, base, rowB, c, p.L, p.D);
            qa[k][2] = ld_pair(p.q, base, rowA, c + 8, p.L, p.D);
            qa[k][3] = ld_pair(p.q, base, rowB, c + 8, p.L, p.D);
        }
    }
}

// The end of a forward: the row sums are completed over the row group's 4 lanes, O / l is stored as bf16 into out
// (B, L, H*D) and lse = ln(sum exp) into lse (B, H, L). With Exp2 the maxima m are in base 2 (lse = m ln 2 + ln l).
template <bool Exp2>
__device__ __forceinline__ void store_output_rows(const AttnParams& p, const float (&o)[MAXD / 8][4], int b, int h, int rowA, int rowB,
                                                  int t, float mA, float mB, float lA, float lB)
{
    lA += __shfl_xor_sync(0xffffffffu, lA, 1);
    lA += __shfl_xor_sync(0xffffffffu, lA, 2);
    lB += __shfl_xor_sync(0xffffffffu, lB, 1);
    lB += __shfl_xor_sync(0xffffffffu, lB, 2);
    float invA = 1.0f / lA, invB = 1.0f / lB;
#pragma unroll
    for (int n = 0; n < MAXD / 8; n++)
    {
        if (n < p.D / 8)
        {
            int d = n * 8 + 2 * t;
            if (rowA < p.L) *(unsigned*)(p.out + bl_hd(p, b, h, rowA, d)) = pack_bf16(f2bf(o[n][0] * invA), f2bf(o[n][1] * invA));
            if (rowB < p.L) *(unsigned*)(p.out + bl_hd(p, b, h, rowB, d)) = pack_bf16(f2bf(o[n][2] * invB), f2bf(o[n][3] * invB));
        }
    }
    if (t == 0)
    {
        const float toE = Exp2 ? 0.6931471805599453f : 1.0f;
        i64 row0 = ((i64)b * p.H + h) * p.L;
        if (rowA < p.L) p.lse[row0 + rowA] = mA * toE + logf(lA);
        if (rowB < p.L) p.lse[row0 + rowB] = mB * toE + logf(lB);
    }
}

// P's A fragment for keys 16kk..16kk+15 from the C fragments of S's n-tiles 2kk and 2kk+1, rounded to bf16.
template <int NT>
__device__ __forceinline__ void p_fragment(const float (&s)[NT][4], int kk, unsigned& a0, unsigned& a1, unsigned& a2, unsigned& a3)
{
    a0 = pack_bf16(f2bf(s[2 * kk][0]), f2bf(s[2 * kk][1]));
    a1 = pack_bf16(f2bf(s[2 * kk][2]), f2bf(s[2 * kk][3]));
    a2 = pack_bf16(f2bf(s[2 * kk + 1][0]), f2bf(s[2 * kk + 1][1]));
    a3 = pack_bf16(f2bf(s[2 * kk + 1][2]), f2bf(s[2 * kk + 1][3]));
}

// cp.async and ldmatrix (versions 3 and 4). ldmatrix (PTX ISA, m8n8 .b16): lanes 8i..8i+7 give the row addresses of
// matrix i; lane l receives, per matrix, (row l/4, cols 2(l%4), 2(l%4)+1), or with .trans (rows 2(l%4), 2(l%4)+1, col l/4).
__device__ __forceinline__ unsigned smem_addr(const void* p)
{
    unsigned a;
    asm("{ .reg .u64 s; cvta.to.shared.u64 s, %1; cvt.u32.u64 %0, s; }" : "=r"(a) : "l"(p));
    return a;
}

// 16 bytes global -> shared, asynchronously; bytes past src_bytes (0 or 16) are zero-filled.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
#endif
}

__device__ __forceinline__ void cp_async_commit()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Waits until at most N committed groups are still in flight.
template <int N> __device__ __forceinline__ void cp_async_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const bf16* row)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(row)));
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], const bf16* row)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(row)));
#endif
}
