// 02_mma_forward.cu: version 2 of the attention forward (kernels/dev; version 1 is attention_forward in
// kernels/attention.cu). Opt-in: METALORA_ATTENTION=mma (CudaBackend.AttentionForwardKernel = TensorCore).
// Tensor cores (mma.sync m16n8k16, bf16 in, fp32 accumulate), FlashAttention-2 layout.
// Same contract and outputs as attention_forward, plus: D % 16 == 0 (the host falls back to version 1 otherwise).
// Block 128 (4 warps); each warp owns 16 query rows, so a block covers 64; keys stream through shared memory in
// tiles of 64. grid (ceil(L/64), B*H). S = Q K^T and O += P V are both mma.sync; P is rounded to bf16 for the second
// product, as FlashAttention does, while the row sums l use the fp32 P.
// The C fragments of two adjacent 8-key tiles of S are exactly the A fragment of P for one 16-key step (fragment
// layouts: mma.cuh).
#include "mma.cuh"

#define MMA_WARPS 4
#define MMA_BR (16 * MMA_WARPS)
#define MMA_BC 64

extern "C" __global__ void __launch_bounds__(128) attention_forward_mma(AttnParams p)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    __shared__ __align__(16) bf16 ks[MMA_BC * SROW];
    __shared__ __align__(16) bf16 vs[MMA_BC * SROW];
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, g = lane >> 2, t = lane & 3;
    const int bh = blockIdx.y, b = bh / p.H, h = bh % p.H, D = p.D, L = p.L;
    const int KS = D / 16, NTO = D / 8;
    const i64 base = (i64)bh * L * D;
    const int rowA = blockIdx.x * MMA_BR + warp * 16 + g, rowB = rowA + 8;

    unsigned qa[MAXD / 16][4];
    load_q_fragments(qa, p, base, rowA, rowB, t);

    float o[MAXD / 8][4];
#pragma unroll
    for (int n = 0; n < MAXD / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float mA = -INFINITY, mB = -INFINITY, lA = 0.0f, lB = 0.0f;   // l: this thread's share of the row sum

    for (int j0 = 0; j0 < L; j0 += MMA_BC)
    {
        __syncthreads();
        for (int e = threadIdx.x; e < MMA_BC * (D / 2); e += blockDim.x)
        {
            int j = e / (D / 2), c = (e % (D / 2)) * 2, key = j0 + j;
            *(unsigned*)(ks + j * SROW + c) = ld_pair(p.k, base, key, c, L, D);
            *(unsigned*)(vs + j * SROW + c) = ld_pair(p.v, base, key, c, L, D);
        }
        __syncthreads();

        float s[MMA_BC / 8][4];
#pragma unroll
        for (int n = 0; n < MMA_BC / 8; n++)
        {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
            for (int k = 0; k < MAXD / 16; k++)
            {
                if (k < KS)
                {
                    const bf16* kr = ks + (n * 8 + g) * SROW + k * 16 + 2 * t;
                    mma_bf16_16816(s[n], qa[k][0], qa[k][1], qa[k][2], qa[k][3], *(const unsigned*)kr, *(const unsigned*)(kr + 8));
                }
            }
        }

        online_softmax_tile<MMA_BC / 8, false>(s, o, mA, mB, lA, lB, j0, L, t, p.scale);

#pragma unroll
        for (int kk = 0; kk < MMA_BC / 16; kk++)
        {
            unsigned a0, a1, a2, a3;
            p_fragment(s, kk, a0, a1, a2, a3);
            const bf16* vr = vs + (kk * 16 + 2 * t) * SROW + g;
#pragma unroll
            for (int n = 0; n < MAXD / 8; n++)
            {
                if (n < NTO)
                {
                    const bf16* v = vr + n * 8;
                    mma_bf16_16816(o[n], a0, a1, a2, a3, pack_bf16(v[0], v[SROW]), pack_bf16(v[8 * SROW], v[9 * SROW]));
                }
            }
        }
    }

    store_output_rows<false>(p, o, b, h, rowA, rowB, t, mA, mB, lA, lB);
#endif
}
