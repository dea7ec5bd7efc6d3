// 02_mma_backward.cu: version 2 of the attention backward (kernels/dev; version 1 is attention_backward_dq and
// attention_backward_dkdv in kernels/attention.cu). Opt-in: METALORA_ATTENTION=mma
// (CudaBackend.AttentionBackwardKernel = TensorCore).
// Tensor cores, FlashAttention-2 order, D == 128 only (FLUX's head dim; the host falls back to version 1 otherwise).
// drow comes from version 1's attention_backward_preprocess (kernels/attention.cu). Same outputs, all with =.
// dq has its own query-centric kernel instead of fp32 atomics from the key-centric one. Atomics would save the
// recomputation of S and dP (5 products instead of 7, ~1.4x fewer flops), but they need a (B, H, L, D) fp32
// scratch (250 MB at B 4, L 5120), a zeroing and a conversion pass, and they make dq depend on the order in which
// blocks finish; with two kernels every output still has exactly one writer and a run is bitwise reproducible.
// Both kernels: block 128 (4 warps), one warp per 16 rows of the outer side, fp32 accumulators for the full
// 16 x 128 output slab in registers (16 n-tiles x 4 = 64 floats per output), everything staged through padded
// shared rows (SROW, bank-conflict free for the fragment loads below; the transposed B loads read rows 2t, 2t+1,
// 2t+8, 2t+9 at columns 8n + g, whose words fall in banks 8t + g/2: distinct or the same word). Static shared
// memory stays under 48 KB (no opt-in attribute).
// P and dS enter the second products as two bf16 A fragments, hi = bf16(x) and lo = bf16(x - hi), against the same
// B fragment: rounding them once (as the forward does with P) left dq, dk, dv about one bf16 ulp of their largest
// value off in the CPU emulation (tests/.../Kernels/AttentionMmaEmulationTests.cs), at the edge of the parity rule
// (2x the output's own rounding); the split brings them down to that rounding. dS is the sensitive one (dq sums
// terms that cancel: sum_j dS_ij = 0). It costs 6 instead of 4 products in dkdv and 4 instead of 3 in dq, but no
// extra shared loads, which (16-bit transposed B loads, no ldmatrix or cp.async yet) rather than the mma rate bound
// these kernels.
//   backward_dkdv_mma: grid (ceil(L/64), B*H); a block owns 64 keys, K and V tiles stay in shared memory for the
//     whole loop (2 x 17 KB); queries stream through in tiles of 16 (q, dout: 2 x 4.25 KB; lse, drow). Per tile
//     a warp forms S^T = K Q^T and dP^T = V dout^T (16 keys x 16 queries) directly in transposed form, so that
//     P^T and dS^T = P^T (dP^T - drow) are already A fragments for dv += P^T dout and dk += dS^T q. 16-query tiles
//     keep the registers at 64 (dk) + 64 (dv) + 16 (S, dP) + fragments, below the 255 cap with no spills, and the
//     shared memory at 43 KB; 64 keys per block gives 80 x B*H blocks at L 5120 (1920 for one image: 14 waves).
//     Queries past L get lse = +inf (P = 0, dS = 0) and zero rows; keys past L are zero rows and never written.
//   backward_dq_mma: grid (ceil(L/64), B*H); a block owns 64 queries, q and dout live in registers as A fragments
//     (2 x 32 regs) with lse and drow of rows g and g+8; keys stream in tiles of 32 (K, V: 2 x 8.5 KB). S = Q K^T,
//     dP = dout V^T, dS = P (dP - drow) (0 for keys past L), dq += dS K. 32-key tiles: 64 + 64 + 64 (dq) + 32 regs.
// ptxas (NVRTC 11.8, sm_80 / sm_90): dkdv_mma 212 / 210 registers, 43,648 B shared; dq_mma 210 / 210 registers,
// 17,408 B shared; no spills. 128 threads x ~210 registers allow 2 blocks (8 warps) per SM.
#include "mma.cuh"

// The residues x - bf16(x) of two floats, rounded to bf16 and packed: the low half of a two-term bf16 split.
__device__ __forceinline__ unsigned pack_bf16_residue(float x, float y)
{
    return pack_bf16(f2bf(x - bf2f(f2bf(x))), f2bf(y - bf2f(f2bf(y))));
}

#define BWD_WARPS 4
#define BWD_ROWS (16 * BWD_WARPS)   // keys per dkdv block, queries per dq block
#define BWD_BR 16                   // queries per tile in backward_dkdv_mma
#define BWD_BC 32                   // keys per tile in backward_dq_mma

// Copies rows [row0, row0 + rows) of a (B, H, L, 128) head (bhd) or of a (B, L, H*128) tensor (!bhd) into shared
// rows of SROW, zero past L; 32-bit words, consecutive threads on consecutive words of a row.
__device__ __forceinline__ void stage_rows(bf16* dst, const bf16* src, const AttnParams& p, int b, int h, bool bhd, int row0, int rows)
{
    const i64 base = ((i64)b * p.H + h) * p.L * MAXD;
    for (int e = threadIdx.x; e < rows * (MAXD / 2); e += blockDim.x)
    {
        int j = e / (MAXD / 2), c = (e % (MAXD / 2)) * 2, row = row0 + j;
        unsigned w = 0u;
        if (row < p.L) w = *(const unsigned*)(src + (bhd ? base + (i64)row * MAXD + c : bl_hd(p, b, h, row, c)));
        *(unsigned*)(dst + j * SROW + c) = w;
    }
}

extern "C" __global__ void __launch_bounds__(128) attention_backward_dkdv_mma(AttnParams p)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    __shared__ __align__(16) bf16 ks[BWD_ROWS * SROW];
    __shared__ __align__(16) bf16 vs[BWD_ROWS * SROW];
    __shared__ __align__(16) bf16 qs[BWD_BR * SROW];
    __shared__ __align__(16) bf16 dos[BWD_BR * SROW];
    __shared__ float lse_t[BWD_BR], dr_t[BWD_BR];
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, g = lane >> 2, t = lane & 3;
    const int bh = blockIdx.y, b = bh / p.H, h = bh % p.H, L = p.L;
    const int key0 = blockIdx.x * BWD_ROWS;

    stage_rows(ks, p.k, p, b, h, true, key0, BWD_ROWS);
    stage_rows(vs, p.v, p, b, h, true, key0, BWD_ROWS);
    const bf16* kw = ks + warp * 16 * SROW;   // this warp's 16 keys: rows of the A fragments
    const bf16* vw = vs + warp * 16 * SROW;

    float dk[MAXD / 8][4], dv[MAXD / 8][4];
#pragma unroll
    for (int n = 0; n < MAXD / 8; n++)
#pragma unroll
        for (int r = 0; r < 4; r++) dk[n][r] = dv[n][r] = 0.0f;

    for (int i0 = 0; i0 < L; i0 += BWD_BR)
    {
        __syncthreads();   // the previous tile is consumed (and, the first time, ks and vs are written)
        stage_rows(qs, p.q, p, b, h, true, i0, BWD_BR);
        stage_rows(dos, p.dout, p, b, h, false, i0, BWD_BR);
        if (threadIdx.x < BWD_BR)
        {
            int qi = i0 + threadIdx.x;
            lse_t[threadIdx.x] = qi < L ? p.lse[(i64)bh * L + qi] : INFINITY;   // P = exp(s - inf) = 0 past the end
            dr_t[threadIdx.x] = qi < L ? p.drow[(i64)bh * L + qi] : 0.0f;
        }
        __syncthreads();

        // S^T = K Q^T and dP^T = V dout^T: rows are this warp's keys, columns the tile's 16 queries (two n-tiles).
        float s[2][4], dp[2][4];
#pragma unroll
        for (int n = 0; n < 2; n++)
#pragma unroll
            for (int r = 0; r < 4; r++) s[n][r] = dp[n][r] = 0.0f;
#pragma unroll
        for (int k = 0; k < MAXD / 16; k++)
        {
            const bf16* ka = kw + g * SROW + k * 16 + 2 * t;
            const bf16* va = vw + g * SROW + k * 16 + 2 * t;
            unsigned k0 = *(const unsigned*)ka, k1 = *(const unsigned*)(ka + 8 * SROW);
            unsigned k2 = *(const unsigned*)(ka + 8), k3 = *(const unsigned*)(ka + 8 * SROW + 8);
            unsigned v0 = *(const unsigned*)va, v1 = *(const unsigned*)(va + 8 * SROW);
            unsigned v2 = *(const unsigned*)(va + 8), v3 = *(const unsigned*)(va + 8 * SROW + 8);
#pragma unroll
            for (int n = 0; n < 2; n++)
            {
                const bf16* qb = qs + (n * 8 + g) * SROW + k * 16 + 2 * t;
                const bf16* db = dos + (n * 8 + g) * SROW + k * 16 + 2 * t;
                mma_bf16_16816(s[n], k0, k1, k2, k3, *(const unsigned*)qb, *(const unsigned*)(qb + 8));
                mma_bf16_16816(dp[n], v0, v1, v2, v3, *(const unsigned*)db, *(const unsigned*)(db + 8));
            }
        }

        // P^T and dS^T in place: element (key g or g + 8, query 8n + 2t + e).
#pragma unroll
        for (int n = 0; n < 2; n++)
#pragma unroll
            for (int e = 0; e < 2; e++)
            {
                int c = n * 8 + 2 * t + e;
                float lse = lse_t[c], dr = dr_t[c];
                float pA = expf(s[n][e] * p.scale - lse), pB = expf(s[n][2 + e] * p.scale - lse);
                s[n][e] = pA;
                s[n][2 + e] = pB;
                dp[n][e] = pA * (dp[n][e] - dr);
                dp[n][2 + e] = pB * (dp[n][2 + e] - dr);
            }

        // dv += P^T dout, dk += dS^T q: one k-step over the 16 queries; B (query x dim) read down shared columns.
        unsigned pa0 = pack_bf16(f2bf(s[0][0]), f2bf(s[0][1])), pa1 = pack_bf16(f2bf(s[0][2]), f2bf(s[0][3]));
        unsigned pa2 = pack_bf16(f2bf(s[1][0]), f2bf(s[1][1])), pa3 = pack_bf16(f2bf(s[1][2]), f2bf(s[1][3]));
        unsigned da0 = pack_bf16(f2bf(dp[0][0]), f2bf(dp[0][1])), da1 = pack_bf16(f2bf(dp[0][2]), f2bf(dp[0][3]));
        unsigned da2 = pack_bf16(f2bf(dp[1][0]), f2bf(dp[1][1])), da3 = pack_bf16(f2bf(dp[1][2]), f2bf(dp[1][3]));
        unsigned pl0 = pack_bf16_residue(s[0][0], s[0][1]), pl1 = pack_bf16_residue(s[0][2], s[0][3]);
        unsigned pl2 = pack_bf16_residue(s[1][0], s[1][1]), pl3 = pack_bf16_residue(s[1][2], s[1][3]);
        unsigned dl0 = pack_bf16_residue(dp[0][0], dp[0][1]), dl1 = pack_bf16_residue(dp[0][2], dp[0][3]);
        unsigned dl2 = pack_bf16_residue(dp[1][0], dp[1][1]), dl3 = pack_bf16_residue(dp[1][2], dp[1][3]);
        const bf16* dcol = dos + 2 * t * SROW + g;
        const bf16* qcol = qs + 2 * t * SROW + g;
#pragma unroll
        for (int n = 0; n < MAXD / 8; n++)
        {
            const bf16* x = dcol + n * 8;
            unsigned xb0 = pack_bf16(x[0], x[SROW]), xb1 = pack_bf16(x[8 * SROW], x[9 * SROW]);
            mma_bf16_16816(dv[n], pa0, pa1, pa2, pa3, xb0, xb1);
            mma_bf16_16816(dv[n], pl0, pl1, pl2, pl3, xb0, xb1);
            const bf16* y = qcol + n * 8;
            unsigned yb0 = pack_bf16(y[0], y[SROW]), yb1 = pack_bf16(y[8 * SROW], y[9 * SROW]);
            mma_bf16_16816(dk[n], da0, da1, da2, da3, yb0, yb1);
            mma_bf16_16816(dk[n], dl0, dl1, dl2, dl3, yb0, yb1);
        }
    }

    const i64 base = (i64)bh * L * MAXD;
    const int rowA = key0 + warp * 16 + g, rowB = rowA + 8;
#pragma unroll
    for (int n = 0; n < MAXD / 8; n++)
    {
        int d = n * 8 + 2 * t;
        if (rowA < L)
        {
            *(unsigned*)(p.dk + base + (i64)rowA * MAXD + d) = pack_bf16(f2bf(dk[n][0] * p.scale), f2bf(dk[n][1] * p.scale));
            *(unsigned*)(p.dv + base + (i64)rowA * MAXD + d) = pack_bf16(f2bf(dv[n][0]), f2bf(dv[n][1]));
        }
        if (rowB < L)
        {
            *(unsigned*)(p.dk + base + (i64)rowB * MAXD + d) = pack_bf16(f2bf(dk[n][2] * p.scale), f2bf(dk[n][3] * p.scale));
            *(unsigned*)(p.dv + base + (i64)rowB * MAXD + d) = pack_bf16(f2bf(dv[n][2]), f2bf(dv[n][3]));
        }
    }
#endif
}

extern "C" __global__ void __launch_bounds__(128) attention_backward_dq_mma(AttnParams p)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    __shared__ __align__(16) bf16 ks[BWD_BC * SROW];
    __shared__ __align__(16) bf16 vs[BWD_BC * SROW];
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, g = lane >> 2, t = lane & 3;
    const int bh = blockIdx.y, b = bh / p.H, h = bh % p.H, L = p.L;
    const i64 base = (i64)bh * L * MAXD;
    const int rowA = blockIdx.x * BWD_ROWS + warp * 16 + g, rowB = rowA + 8;

    // q and dout rows g, g + 8 of this warp's 16 queries as A fragments (zero past the end).
    unsigned qa[MAXD / 16][4], oa[MAXD / 16][4];
#pragma unroll
    for (int k = 0; k < MAXD / 16; k++)
    {
        int c = k * 16 + 2 * t;
        qa[k][0] = ld_pair(p.q, base, rowA, c, L, MAXD);
        qa[k][1] = ld_pair(p.q, base, rowB, c, L, MAXD);
        qa[k][2] = ld_pair(p.q, base, rowA, c + 8, L, MAXD);
        qa[k][3] = ld_pair(p.q, base, rowB, c + 8, L, MAXD);
        oa[k][0] = rowA < L ? *(const unsigned*)(p.dout + bl_hd(p, b, h, rowA, c)) : 0u;
        oa[k][1] = rowB < L ? *(const unsigned*)(p.dout + bl_hd(p, b, h, rowB, c)) : 0u;
        oa[k][2] = rowA < L ? *(const unsigned*)(p.dout + bl_hd(p, b, h, rowA, c + 8)) : 0u;
        oa[k][3] = rowB < L ? *(const unsigned*)(p.dout + bl_hd(p, b, h, rowB, c + 8)) : 0u;
    }
    const float lseA = rowA < L ? p.lse[(i64)bh * L + rowA] : 0.0f, lseB = rowB < L ? p.lse[(i64)bh * L + rowB] : 0.0f;
    const float drA = rowA < L ? p.drow[(i64)bh * L + rowA] : 0.0f, drB = rowB < L ? p.drow[(i64)bh * L + rowB] : 0.0f;

    float dq[MAXD / 8][4];
#pragma unroll
    for (int n = 0; n < MAXD / 8; n++) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.0f;

    for (int j0 = 0; j0 < L; j0 += BWD_BC)
    {
        __syncthreads();
        stage_rows(ks, p.k, p, b, h, true, j0, BWD_BC);
        stage_rows(vs, p.v, p, b, h, true, j0, BWD_BC);
        __syncthreads();

        float s[BWD_BC / 8][4], dp[BWD_BC / 8][4];
#pragma unroll
        for (int n = 0; n < BWD_BC / 8; n++)
        {
#pragma unroll
            for (int r = 0; r < 4; r++) s[n][r] = dp[n][r] = 0.0f;
#pragma unroll
            for (int k = 0; k < MAXD / 16; k++)
            {
                const bf16* kb = ks + (n * 8 + g) * SROW + k * 16 + 2 * t;
                const bf16* vb = vs + (n * 8 + g) * SROW + k * 16 + 2 * t;
                mma_bf16_16816(s[n], qa[k][0], qa[k][1], qa[k][2], qa[k][3], *(const unsigned*)kb, *(const unsigned*)(kb + 8));
                mma_bf16_16816(dp[n], oa[k][0], oa[k][1], oa[k][2], oa[k][3], *(const unsigned*)vb, *(const unsigned*)(vb + 8));
            }
        }

        // dS in place of S: element (query g or g + 8, key j0 + 8n + 2t + e); 0 for keys past the end.
#pragma unroll
        for (int n = 0; n < BWD_BC / 8; n++)
#pragma unroll
            for (int e = 0; e < 2; e++)
            {
                bool ok = j0 + n * 8 + 2 * t + e < L;
                s[n][e] = ok ? expf(s[n][e] * p.scale - lseA) * (dp[n][e] - drA) : 0.0f;
                s[n][2 + e] = ok ? expf(s[n][2 + e] * p.scale - lseB) * (dp[n][2 + e] - drB) : 0.0f;
            }

        // dq += dS K: B (key x dim) read down the columns of the K tile.
#pragma unroll
        for (int kk = 0; kk < BWD_BC / 16; kk++)
        {
            unsigned a0 = pack_bf16(f2bf(s[2 * kk][0]), f2bf(s[2 * kk][1]));
            unsigned a1 = pack_bf16(f2bf(s[2 * kk][2]), f2bf(s[2 * kk][3]));
            unsigned a2 = pack_bf16(f2bf(s[2 * kk + 1][0]), f2bf(s[2 * kk + 1][1]));
            unsigned a3 = pack_bf16(f2bf(s[2 * kk + 1][2]), f2bf(s[2 * kk + 1][3]));
            unsigned l0 = pack_bf16_residue(s[2 * kk][0], s[2 * kk][1]), l1 = pack_bf16_residue(s[2 * kk][2], s[2 * kk][3]);
            unsigned l2 = pack_bf16_residue(s[2 * kk + 1][0], s[2 * kk + 1][1]), l3 = pack_bf16_residue(s[2 * kk + 1][2], s[2 * kk + 1][3]);
            const bf16* kcol = ks + (kk * 16 + 2 * t) * SROW + g;
#pragma unroll
            for (int n = 0; n < MAXD / 8; n++)
            {
                const bf16* x = kcol + n * 8;
                unsigned b0 = pack_bf16(x[0], x[SROW]), b1 = pack_bf16(x[8 * SROW], x[9 * SROW]);
                mma_bf16_16816(dq[n], a0, a1, a2, a3, b0, b1);
                mma_bf16_16816(dq[n], l0, l1, l2, l3, b0, b1);
            }
        }
    }

#pragma unroll
    for (int n = 0; n < MAXD / 8; n++)
    {
        int d = n * 8 + 2 * t;
        if (rowA < L) *(unsigned*)(p.dq + base + (i64)rowA * MAXD + d) = pack_bf16(f2bf(dq[n][0] * p.scale), f2bf(dq[n][1] * p.scale));
        if (rowB < L) *(unsigned*)(p.dq + base + (i64)rowB * MAXD + d) = pack_bf16(f2bf(dq[n][2] * p.scale), f2bf(dq[n][3] * p.scale));
    }
#endif
}
