// 04_onepass_backward.cu: version 4 of the attention backward (kernels/dev; version 1 is attention_backward_dq and
// attention_backward_dkdv in kernels/attention.cu, version 2 is 02_mma_backward.cu). Opt-in: METALORA_ATTENTION=onepass
// (forward version 3, backward version 4; CudaBackend.AttentionBackwardKernel = OnePass).
// Same contract as versions 1 and 2: q, k, v, dq, dk, dv (B, H, L, 128) bf16; dout (B, L, H*128) bf16; lse, drow
// (B, H, L) fp32 (drow = rowsum(dout o) from version 1's attention_backward_preprocess, as version 2). D == 128 only,
// sm_80+ (the host falls back to version 1 otherwise). dk, dv are written with =; dq is accumulated (+=) in an fp32
// scratch dq_acc (B, H, L, 128), which the host zeroes first (memset) and attention_backward_onepass_convert turns
// into dq = bf16(dq_acc * scale) (=), in the layout versions 1 and 2 return.
// One pass instead of version 2's two kernels: a block owns 64 keys and streams every query tile once, forming S, P,
// dP and dS once per (query tile, key block): 5 products (S, dP, dv, dk, dq) instead of version 2's 7 (S and dP
// again in its dq kernel). The price is the (B, H, L, 128) fp32 scratch and fp32 atomics into it
// (red.global.add.f32; the vectorised red.global.add.v2.f32 needs PTX 8.1 / sm_90, beyond NVRTC 11.8's PTX 7.8).
// NOT BITWISE REPRODUCIBLE: each element of dq sums ceil(L / 64) block contributions in the order the blocks reach
// their atomics, so two runs may differ in dq by fp32 rounding (before the bf16 conversion, which can then flip an
// ulp). dk and dv have one writer each and are reproducible.
// Two-term bf16 split of P and dS kept from version 2 (hi = bf16(x), lo = bf16(x - hi), both against the same B
// fragment): version 2's emulation showed one rounding of dS leaves dq about one bf16 ulp of its largest value off
// (dq sums dS_ij k_j over keys with sum_j dS_ij = 0, so the rounding errors do not cancel with the result), at the edge
// of the parity rule; this kernel's dq sums the same terms, only in a different grouping (64 keys per block, then
// fp32 atomics). With the split the products are S, dP, 2 x dv, 2 x dk, 2 x dq: 8 mma passes against version 2's 10.
// Launch: attention_backward_onepass grid (ceil(L/64), B*H), block 128 (4 warps, 16 keys each);
//         attention_backward_onepass_convert a 1-D grid-stride launch over B*H*L*128 elements.
// Per block: K (64 keys) stays in shared memory for the whole loop; V passes once through the query stages into A
// fragments held in registers (32 regs: shared memory has no room for V next to two query stages under 48 KB);
// query tiles of 16 (q, dout: cp.async, double-buffered, zero past L; lse = +inf past L so P = dS = 0 there, drow).
// Per query tile and warp: S^T = K_w Q^T and dP^T = V_w dout^T (16 keys x 16 queries; A from ldmatrix.x4 of K and
// the V registers, B from ldmatrix.x4 of q and dout rows), P^T = exp(S^T scale - lse), dS^T = P^T (dP^T - drow);
// dv += P^T dout, dk += dS^T q (B from ldmatrix.x4.trans of the stage). dS^T (hi and lo) goes to shared memory
// (64 keys x 16 queries, rows of 24 bf16), then warp w forms the tile's dq for dims 32w..32w+31 over all 64 keys,
// dS (A, ldmatrix.x4.trans of dS^T) times K (B, ldmatrix.x4.trans of the K rows), and adds it to dq_acc with atomics.
// Keys past L are zero rows of K and V: their P is not 0, but their dq terms (dS x 0) are, and their dk, dv rows are
// never written. Static shared memory: 17,408 (K) + 17,408 (2 stages x q, dout) + 6,144 (dS^T hi, lo) + 256 = 41,216 B.
// ptxas (NVRTC 11.8, sm_80 / sm_90): onepass 255 / 254 registers (255 is what __launch_bounds__(128) allows; no local
// memory, no spills), 41,216 B shared (42,240 reported on sm_90); convert 28 / 28. 128 threads x 255 registers: 2 blocks
// (8 warps) per SM, as version 2.
#include "mma.cuh"

#define OP_WARPS 4
#define OP_KEYS (16 * OP_WARPS)   // keys per block
#define OP_BR 16                  // queries per tile
#define DSROW (OP_BR + 8)         // bf16 per shared row of dS^T: 48 bytes, so ldmatrix's 8 rows hit distinct 16-byte bank groups

// The argument of both kernels: version 1/2's parameters and the fp32 dq accumulator (mirrored by CudaBackend.OnePassParams).
struct OnePassParams
{
    AttnParams a;
    float* dq_acc;   // (B, H, L, 128) fp32, zeroed by the host
};
static_assert(sizeof(OnePassParams) == 120, "OnePassParams layout changed: update CudaBackend.OnePassParams");

// The residues x - bf16(x) of two floats, rounded to bf16 and packed: the low half of a two-term bf16 split.
__device__ __forceinline__ unsigned pack_bf16_lo(float x, float y)
{
    return pack_bf16(f2bf(x - bf2f(f2bf(x))), f2bf(y - bf2f(f2bf(y))));
}

// Rows [row0, row0 + rows) of a (B, H, L, 128) head into shared rows of SROW, zero past L: 16-byte cp.async chunks.
__device__ __forceinline__ void load_head_rows(bf16* dst, const bf16* src, i64 base, int row0, int rows, int L)
{
    for (int e = threadIdx.x; e < rows * (MAXD / 8); e += blockDim.x)
    {
        int j = e / (MAXD / 8), c = (e % (MAXD / 8)) * 8, row = row0 + j;
        bool ok = row < L;
        cp_async16(dst + j * SROW + c, src + base + (i64)(ok ? row : 0) * MAXD + c, ok ? 16 : 0);
    }
}

// Query tile [i0, i0 + 16) into one stage: q (B, H, L, 128) and dout (B, L, H*128) rows by cp.async (zero past L),
// lse (+inf past L) and drow (0 past L) by plain stores (visible after the caller's __syncthreads).
__device__ __forceinline__ void load_query_tile(const AttnParams& p, int b, int h, i64 base, int i0, bf16* qs, bf16* dos, float* lse, float* dr)
{
    for (int e = threadIdx.x; e < OP_BR * (MAXD / 8); e += blockDim.x)
    {
        int j = e / (MAXD / 8), c = (e % (MAXD / 8)) * 8, row = i0 + j;
        bool ok = row < p.L;
        int r = ok ? row : 0;   // a valid address even when nothing is read
        cp_async16(qs + j * SROW + c, p.q + base + (i64)r * MAXD + c, ok ? 16 : 0);
        cp_async16(dos + j * SROW + c, p.dout + bl_hd(p, b, h, r, c), ok ? 16 : 0);
    }
    if (threadIdx.x < OP_BR)
    {
        int qi = i0 + threadIdx.x;
        i64 at = ((i64)b * p.H + h) * p.L + qi;
        lse[threadIdx.x] = qi < p.L ? p.lse[at] : INFINITY;   // P = exp(s - inf) = 0 past the end
        dr[threadIdx.x] = qi < p.L ? p.drow[at] : 0.0f;
    }
}

extern "C" __global__ void __launch_bounds__(128) attention_backward_onepass(OnePassParams op)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const AttnParams& p = op.a;
    __shared__ __align__(16) bf16 ks[OP_KEYS * SROW];
    __shared__ __align__(16) bf16 qd[2][2][OP_BR * SROW];   // [stage][q, dout]; before the loop, V's 64 rows (the same size)
    __shared__ __align__(16) bf16 dst[2][OP_KEYS * DSROW];  // dS^T of the tile: [hi, lo][key][query]
    __shared__ float lse_t[2][OP_BR], dr_t[2][OP_BR];
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, g = lane >> 2, t = lane & 3;
    const int mi = lane >> 3, mr = lane & 7;   // ldmatrix: lane l gives row mr of matrix mi
    const int bh = blockIdx.y, b = bh / p.H, h = bh % p.H, L = p.L;
    const int key0 = blockIdx.x * OP_KEYS;
    const i64 base = (i64)bh * L * MAXD;
    bf16* vstage = &qd[0][0][0];

    // K and V of the block's keys; V's A fragments (this warp's 16 keys) into registers, then the stages are free.
    load_head_rows(ks, p.k, base, key0, OP_KEYS, L);
    load_head_rows(vstage, p.v, base, key0, OP_KEYS, L);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    unsigned va[MAXD / 16][4];
#pragma unroll
    for (int k = 0; k < MAXD / 16; k++)
        ldmatrix_x4(va[k], vstage + (warp * 16 + (mi & 1) * 8 + mr) * SROW + k * 16 + (mi >> 1) * 8);
    __syncthreads();

    float dk[MAXD / 8][4], dv[MAXD / 8][4];
#pragma unroll
    for (int n = 0; n < MAXD / 8; n++)
#pragma unroll
        for (int r = 0; r < 4; r++) dk[n][r] = dv[n][r] = 0.0f;

    const int tiles = (L + OP_BR - 1) / OP_BR;
    load_query_tile(p, b, h, base, 0, qd[0][0], qd[0][1], lse_t[0], dr_t[0]);
    cp_async_commit();

    for (int tile = 0; tile < tiles; tile++)
    {
        const int st = tile & 1, i0 = tile * OP_BR;
        if (tile + 1 < tiles)
        {
            // The other stage was last read in the previous iteration, which ended with __syncthreads().
            load_query_tile(p, b, h, base, i0 + OP_BR, qd[st ^ 1][0], qd[st ^ 1][1], lse_t[st ^ 1], dr_t[st ^ 1]);
            cp_async_commit();
            cp_async_wait<1>();   // this tile's group has landed; the next may still be in flight
        }
        else cp_async_wait<0>();
        __syncthreads();
        const bf16* qs = qd[st][0];
        const bf16* dos = qd[st][1];

        // S^T = K_w Q^T, dP^T = V_w dout^T (rows: this warp's keys; columns: the 16 queries, n-tiles 0 and 1). Per
        // k-step one ldmatrix.x4 gives K's A fragment (matrices: keys 0.. x cols 16k, keys 8.. x 16k, keys 0.. x
        // 16k+8, keys 8.. x 16k+8) and one each q's and dout's B fragments of both n-tiles (queries 0.. x 16k,
        // queries 0.. x 16k+8, queries 8.. x 16k, queries 8.. x 16k+8).
        float s[2][4], dp[2][4];
#pragma unroll
        for (int n = 0; n < 2; n++)
#pragma unroll
            for (int r = 0; r < 4; r++) s[n][r] = dp[n][r] = 0.0f;
#pragma unroll
        for (int k = 0; k < MAXD / 16; k++)
        {
            unsigned ka[4], qb[4], ob[4];
            ldmatrix_x4(ka, ks + (warp * 16 + (mi & 1) * 8 + mr) * SROW + k * 16 + (mi >> 1) * 8);
            ldmatrix_x4(qb, qs + ((mi >> 1) * 8 + mr) * SROW + k * 16 + (mi & 1) * 8);
            ldmatrix_x4(ob, dos + ((mi >> 1) * 8 + mr) * SROW + k * 16 + (mi & 1) * 8);
            mma_bf16_16816(s[0], ka[0], ka[1], ka[2], ka[3], qb[0], qb[1]);
            mma_bf16_16816(s[1], ka[0], ka[1], ka[2], ka[3], qb[2], qb[3]);
            mma_bf16_16816(dp[0], va[k][0], va[k][1], va[k][2], va[k][3], ob[0], ob[1]);
            mma_bf16_16816(dp[1], va[k][0], va[k][1], va[k][2], va[k][3], ob[2], ob[3]);
        }

        // P^T and dS^T in place: element (key g or g + 8, query 8n + 2t + e).
#pragma unroll
        for (int n = 0; n < 2; n++)
#pragma unroll
            for (int e = 0; e < 2; e++)
            {
                int c = n * 8 + 2 * t + e;
                float lse = lse_t[st][c], dr = dr_t[st][c];
                float pA = expf(s[n][e] * p.scale - lse), pB = expf(s[n][2 + e] * p.scale - lse);
                s[n][e] = pA;
                s[n][2 + e] = pB;
                dp[n][e] = pA * (dp[n][e] - dr);
                dp[n][2 + e] = pB * (dp[n][2 + e] - dr);
            }

        // dS^T hi and lo to shared memory for the dq product: row = key of the block, column = query.
        {
            bf16* hiA = dst[0] + (warp * 16 + g) * DSROW + 2 * t;
            bf16* loA = dst[1] + (warp * 16 + g) * DSROW + 2 * t;
#pragma unroll
            for (int n = 0; n < 2; n++)
            {
                *(unsigned*)(hiA + n * 8) = pack_bf16(f2bf(dp[n][0]), f2bf(dp[n][1]));
                *(unsigned*)(hiA + 8 * DSROW + n * 8) = pack_bf16(f2bf(dp[n][2]), f2bf(dp[n][3]));
                *(unsigned*)(loA + n * 8) = pack_bf16_lo(dp[n][0], dp[n][1]);
                *(unsigned*)(loA + 8 * DSROW + n * 8) = pack_bf16_lo(dp[n][2], dp[n][3]);
            }
        }

        // dv += P^T dout, dk += dS^T q: one k-step over the 16 queries; one ldmatrix.x4.trans gives the B fragments
        // of d-tiles n and n + 1 (matrices: queries 0.. x cols 8n, queries 8.. x 8n, queries 0.. x 8n+8, 8.. x 8n+8).
        {
            unsigned pa0 = pack_bf16(f2bf(s[0][0]), f2bf(s[0][1])), pa1 = pack_bf16(f2bf(s[0][2]), f2bf(s[0][3]));
            unsigned pa2 = pack_bf16(f2bf(s[1][0]), f2bf(s[1][1])), pa3 = pack_bf16(f2bf(s[1][2]), f2bf(s[1][3]));
            unsigned da0 = pack_bf16(f2bf(dp[0][0]), f2bf(dp[0][1])), da1 = pack_bf16(f2bf(dp[0][2]), f2bf(dp[0][3]));
            unsigned da2 = pack_bf16(f2bf(dp[1][0]), f2bf(dp[1][1])), da3 = pack_bf16(f2bf(dp[1][2]), f2bf(dp[1][3]));
            unsigned pl0 = pack_bf16_lo(s[0][0], s[0][1]), pl1 = pack_bf16_lo(s[0][2], s[0][3]);
            unsigned pl2 = pack_bf16_lo(s[1][0], s[1][1]), pl3 = pack_bf16_lo(s[1][2], s[1][3]);
            unsigned dl0 = pack_bf16_lo(dp[0][0], dp[0][1]), dl1 = pack_bf16_lo(dp[0][2], dp[0][3]);
            unsigned dl2 = pack_bf16_lo(dp[1][0], dp[1][1]), dl3 = pack_bf16_lo(dp[1][2], dp[1][3]);
#pragma unroll
            for (int n = 0; n < MAXD / 8; n += 2)
            {
                unsigned ob[4];
                ldmatrix_x4_trans(ob, dos + ((mi & 1) * 8 + mr) * SROW + n * 8 + (mi >> 1) * 8);
                mma_bf16_16816(dv[n], pa0, pa1, pa2, pa3, ob[0], ob[1]);
                mma_bf16_16816(dv[n], pl0, pl1, pl2, pl3, ob[0], ob[1]);
                mma_bf16_16816(dv[n + 1], pa0, pa1, pa2, pa3, ob[2], ob[3]);
                mma_bf16_16816(dv[n + 1], pl0, pl1, pl2, pl3, ob[2], ob[3]);
            }
#pragma unroll
            for (int n = 0; n < MAXD / 8; n += 2)
            {
                unsigned qb[4];
                ldmatrix_x4_trans(qb, qs + ((mi & 1) * 8 + mr) * SROW + n * 8 + (mi >> 1) * 8);
                mma_bf16_16816(dk[n], da0, da1, da2, da3, qb[0], qb[1]);
                mma_bf16_16816(dk[n], dl0, dl1, dl2, dl3, qb[0], qb[1]);
                mma_bf16_16816(dk[n + 1], da0, da1, da2, da3, qb[2], qb[3]);
                mma_bf16_16816(dk[n + 1], dl0, dl1, dl2, dl3, qb[2], qb[3]);
            }
        }
        __syncthreads();   // every warp's dS^T is in shared memory

        // dq (16 queries x dims 32w..32w+31) += dS K over the block's 64 keys: per 16-key step, dS's A fragments
        // (hi, lo) by ldmatrix.x4.trans of dS^T (matrices: keys 0.. x queries 0.., keys 0.. x queries 8.., keys 8.. x
        // queries 0.., keys 8.. x queries 8..) and K's B fragments of d-tiles n, n + 1 by ldmatrix.x4.trans.
        {
            float dq[4][4];
#pragma unroll
            for (int j = 0; j < 4; j++) dq[j][0] = dq[j][1] = dq[j][2] = dq[j][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < OP_KEYS / 16; kk++)
            {
                unsigned ah[4], al[4];
                ldmatrix_x4_trans(ah, dst[0] + (kk * 16 + (mi >> 1) * 8 + mr) * DSROW + (mi & 1) * 8);
                ldmatrix_x4_trans(al, dst[1] + (kk * 16 + (mi >> 1) * 8 + mr) * DSROW + (mi & 1) * 8);
#pragma unroll
                for (int j = 0; j < 4; j += 2)
                {
                    unsigned kb[4];
                    ldmatrix_x4_trans(kb, ks + (kk * 16 + (mi & 1) * 8 + mr) * SROW + (warp * 4 + j) * 8 + (mi >> 1) * 8);
                    mma_bf16_16816(dq[j], ah[0], ah[1], ah[2], ah[3], kb[0], kb[1]);
                    mma_bf16_16816(dq[j], al[0], al[1], al[2], al[3], kb[0], kb[1]);
                    mma_bf16_16816(dq[j + 1], ah[0], ah[1], ah[2], ah[3], kb[2], kb[3]);
                    mma_bf16_16816(dq[j + 1], al[0], al[1], al[2], al[3], kb[2], kb[3]);
                }
            }
            const int rowA = i0 + g, rowB = rowA + 8;
#pragma unroll
            for (int j = 0; j < 4; j++)
            {
                int d = (warp * 4 + j) * 8 + 2 * t;
                if (rowA < L)
                {
                    atomicAdd(op.dq_acc + base + (i64)rowA * MAXD + d, dq[j][0]);
                    atomicAdd(op.dq_acc + base + (i64)rowA * MAXD + d + 1, dq[j][1]);
                }
                if (rowB < L)
                {
                    atomicAdd(op.dq_acc + base + (i64)rowB * MAXD + d, dq[j][2]);
                    atomicAdd(op.dq_acc + base + (i64)rowB * MAXD + d + 1, dq[j][3]);
                }
            }
        }
        __syncthreads();   // this stage and dS^T are consumed before the next iteration refills them
    }

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

// dq (B, H, L, 128) bf16 = dq_acc * scale, grid-stride over the B*H*L*128 elements.
extern "C" __global__ void attention_backward_onepass_convert(OnePassParams op)
{
    const i64 n = (i64)op.a.B * op.a.H * op.a.L * MAXD;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        op.a.dq[i] = f2bf(op.dq_acc[i] * op.a.scale);
}
