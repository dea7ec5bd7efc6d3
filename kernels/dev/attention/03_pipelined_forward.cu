// 03_pipelined_forward.cu: version 3 of the attention forward (kernels/dev; version 1 is attention_forward in
// kernels/attention.cu, version 2 is 02_mma_forward.cu). Opt-in: METALORA_ATTENTION=pipelined
// (CudaBackend.AttentionForwardKernel = Pipelined); its backward is version 2's.
// Same contract and outputs as attention_forward: out (B, L, H*D) bf16 = softmax(q k^T * scale) v, lse (B, H, L)
// fp32 natural log-sum-exp of each scaled score row. Requires D % 16 == 0, D <= MAXD, and 16-byte aligned q, k, v
// (every allocation is); the host falls back otherwise.
// What changes against version 2 (same mma.sync m16n8k16 bf16 tensor cores, fp32 accumulation, P rounded to bf16 for
// the second product while the row sums use the fp32 P):
//   - 8 warps x 16 query rows: a block covers 128 queries, so each K/V tile read from global memory serves twice
//     the rows;
//   - K and V tiles of 32 keys are double-buffered in shared memory with cp.async (16-byte copies, zero-filled past
//     the last key): tile j+1 is in flight while tile j is multiplied;
//   - B fragments come from ldmatrix.x4 (K, for S = Q K^T) and ldmatrix.x4.trans (V, for O += P V), one instruction
//     per two n-tiles instead of four 16-bit shared loads per register;
//   - the softmax runs in base 2 (exp2f), with scale * log2(e) folded into S; lse is converted back to base e.
// Launch: grid (ceil(L / 128), B * H), block 256, 34,816 bytes of static shared memory.
// Fragment layouts: mma.cuh. ldmatrix (PTX ISA, m8n8 .b16): lanes 8i..8i+7 give the row addresses of matrix i; lane
// l receives, per matrix, (row l/4, cols 2(l%4), 2(l%4)+1), or with .trans (rows 2(l%4), 2(l%4)+1, col l/4).
#include "mma.cuh"

#define P3_WARPS 8
#define P3_BR (16 * P3_WARPS)
#define P3_BC 32
#define P3_LOG2E 1.4426950408889634f

// Keys [j0, j0 + P3_BC) of k and v into one stage: P3_BC rows of D/8 16-byte chunks each, 4 per thread at D = 128.
__device__ __forceinline__ void load_kv_tile(const AttnParams& p, i64 base, int j0, bf16* ks, bf16* vs)
{
    const int chunks = p.D / 8;
    for (int e = threadIdx.x; e < P3_BC * chunks; e += blockDim.x)
    {
        int j = e / chunks, c = (e % chunks) * 8, key = j0 + j;
        bool ok = key < p.L;
        i64 at = base + (i64)(ok ? key : 0) * p.D + c;   // a valid address even when nothing is read
        cp_async16(ks + j * SROW + c, p.k + at, ok ? 16 : 0);
        cp_async16(vs + j * SROW + c, p.v + at, ok ? 16 : 0);
    }
}

extern "C" __global__ void __launch_bounds__(256) attention_forward_pipelined(AttnParams p)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    __shared__ __align__(16) bf16 ks[2][P3_BC * SROW];
    __shared__ __align__(16) bf16 vs[2][P3_BC * SROW];
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, g = lane >> 2, t = lane & 3;
    const int bh = blockIdx.y, b = bh / p.H, h = bh % p.H, D = p.D, L = p.L;
    const int KS = D / 16, NTO = D / 8;
    const i64 base = (i64)bh * L * D;
    const int rowA = blockIdx.x * P3_BR + warp * 16 + g, rowB = rowA + 8;
    const float scale2 = p.scale * P3_LOG2E;
    // ldmatrix row addresses: lane l serves matrix l/8, row l%8 of it.
    const int mi = lane >> 3, mr = lane & 7;

    const int tiles = (L + P3_BC - 1) / P3_BC;
    load_kv_tile(p, base, 0, ks[0], vs[0]);
    cp_async_commit();

    unsigned qa[MAXD / 16][4];
    load_q_fragments(qa, p, base, rowA, rowB, t);

    float o[MAXD / 8][4];
#pragma unroll
    for (int n = 0; n < MAXD / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float mA = -INFINITY, mB = -INFINITY, lA = 0.0f, lB = 0.0f;   // m in base-2 units; l: this thread's share of the row sum

    for (int tile = 0; tile < tiles; tile++)
    {
        const int st = tile & 1, j0 = tile * P3_BC;
        if (tile + 1 < tiles)
        {
            // The other stage was last read in the previous iteration, which ended with __syncthreads().
            load_kv_tile(p, base, j0 + P3_BC, ks[st ^ 1], vs[st ^ 1]);
            cp_async_commit();
            cp_async_wait<1>();   // this tile's group has landed; the next may still be in flight
        }
        else cp_async_wait<0>();
        __syncthreads();
        const bf16* kt = ks[st];
        const bf16* vt = vs[st];

        // S (16 x 32 per warp) = Q K^T: per k-step, one ldmatrix.x4 gives the B fragments of n-tiles np and np + 1
        // (matrices: keys 8np.. x cols 16k.., keys 8np.. x cols 16k+8.., keys 8np+8.. x cols 16k.., ... x 16k+8..).
        float s[P3_BC / 8][4];
#pragma unroll
        for (int n = 0; n < P3_BC / 8; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
        for (int np = 0; np < P3_BC / 8; np += 2)
#pragma unroll
            for (int k = 0; k < MAXD / 16; k++)
            {
                if (k < KS)
                {
                    unsigned kb[4];
                    ldmatrix_x4(kb, kt + (np * 8 + (mi >> 1) * 8 + mr) * SROW + k * 16 + (mi & 1) * 8);
                    mma_bf16_16816(s[np], qa[k][0], qa[k][1], qa[k][2], qa[k][3], kb[0], kb[1]);
                    mma_bf16_16816(s[np + 1], qa[k][0], qa[k][1], qa[k][2], qa[k][3], kb[2], kb[3]);
                }
            }

        online_softmax_tile<P3_BC / 8, true>(s, o, mA, mB, lA, lB, j0, L, t, scale2);

        // O += P V: the C fragments of S's n-tiles 2kk and 2kk+1 are P's A fragment for keys 16kk..16kk+15; one
        // ldmatrix.x4.trans gives the B fragments of d-tiles dp and dp + 1 (matrices: keys 16kk.. x cols 8dp..,
        // keys 16kk+8.. x cols 8dp.., keys 16kk.. x cols 8dp+8.., keys 16kk+8.. x cols 8dp+8..).
#pragma unroll
        for (int kk = 0; kk < P3_BC / 16; kk++)
        {
            unsigned a0, a1, a2, a3;
            p_fragment(s, kk, a0, a1, a2, a3);
#pragma unroll
            for (int dp = 0; dp < MAXD / 8; dp += 2)
            {
                if (dp < NTO)
                {
                    unsigned vb[4];
                    ldmatrix_x4_trans(vb, vt + (kk * 16 + (mi & 1) * 8 + mr) * SROW + dp * 8 + (mi >> 1) * 8);
                    mma_bf16_16816(o[dp], a0, a1, a2, a3, vb[0], vb[1]);
                    mma_bf16_16816(o[dp + 1], a0, a1, a2, a3, vb[2], vb[3]);
                }
            }
        }
        __syncthreads();   // every warp is done with this stage before the next iteration refills it
    }

    store_output_rows<true>(p, o, b, h, rowA, rowB, t, mA, mB, lA, lB);
#endif
}
