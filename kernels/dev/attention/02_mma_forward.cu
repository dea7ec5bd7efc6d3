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
#pragma unroll
    for (int k = 0; k < MAXD / 16; k++)
    {
        if (k < KS)
        {
            int c = k * 16 + 2 * t;
            qa[k][0] = ld_pair(p.q, base, rowA, c, L, D);
            qa[k][1] = ld_pair(p.q, base, rowB, c, L, D);
            qa[k][2] = ld_pair(p.q, base, rowA, c + 8, L, D);
            qa[k][3] = ld_pair(p.q, base, rowB, c + 8, L, D);
        }
    }

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

        float mxA = -INFINITY, mxB = -INFINITY;
#pragma unroll
        for (int n = 0; n < MMA_BC / 8; n++)
#pragma unroll
            for (int e = 0; e < 2; e++)
            {
                bool ok = j0 + n * 8 + 2 * t + e < L;
                s[n][e] = ok ? s[n][e] * p.scale : -INFINITY;
                s[n][2 + e] = ok ? s[n][2 + e] * p.scale : -INFINITY;
                mxA = fmaxf(mxA, s[n][e]);
                mxB = fmaxf(mxB, s[n][2 + e]);
            }
        mxA = fmaxf(mxA, __shfl_xor_sync(0xffffffffu, mxA, 1));
        mxA = fmaxf(mxA, __shfl_xor_sync(0xffffffffu, mxA, 2));
        mxB = fmaxf(mxB, __shfl_xor_sync(0xffffffffu, mxB, 1));
        mxB = fmaxf(mxB, __shfl_xor_sync(0xffffffffu, mxB, 2));
        float mnA = fmaxf(mA, mxA), mnB = fmaxf(mB, mxB);   // finite: key j0 is valid
        float alA = expf(mA - mnA), alB = expf(mB - mnB);
        lA *= alA;
        lB *= alB;
#pragma unroll
        for (int n = 0; n < MAXD / 8; n++)
        {
            o[n][0] *= alA; o[n][1] *= alA;
            o[n][2] *= alB; o[n][3] *= alB;
        }
#pragma unroll
        for (int n = 0; n < MMA_BC / 8; n++)
#pragma unroll
            for (int e = 0; e < 2; e++)
            {
                s[n][e] = expf(s[n][e] - mnA);
                s[n][2 + e] = expf(s[n][2 + e] - mnB);
                lA += s[n][e];
                lB += s[n][2 + e];
            }
        mA = mnA;
        mB = mnB;

#pragma unroll
        for (int kk = 0; kk < MMA_BC / 16; kk++)
        {
            unsigned a0 = pack_bf16(f2bf(s[2 * kk][0]), f2bf(s[2 * kk][1]));
            unsigned a1 = pack_bf16(f2bf(s[2 * kk][2]), f2bf(s[2 * kk][3]));
            unsigned a2 = pack_bf16(f2bf(s[2 * kk + 1][0]), f2bf(s[2 * kk + 1][1]));
            unsigned a3 = pack_bf16(f2bf(s[2 * kk + 1][2]), f2bf(s[2 * kk + 1][3]));
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

    lA += __shfl_xor_sync(0xffffffffu, lA, 1);
    lA += __shfl_xor_sync(0xffffffffu, lA, 2);
    lB += __shfl_xor_sync(0xffffffffu, lB, 1);
    lB += __shfl_xor_sync(0xffffffffu, lB, 2);
    float invA = 1.0f / lA, invB = 1.0f / lB;
#pragma unroll
    for (int n = 0; n < MAXD / 8; n++)
    {
        if (n < NTO)
        {
            int d = n * 8 + 2 * t;
            if (rowA < L) *(unsigned*)(p.out + bl_hd(p, b, h, rowA, d)) = pack_bf16(f2bf(o[n][0] * invA), f2bf(o[n][1] * invA));
            if (rowB < L) *(unsigned*)(p.out + bl_hd(p, b, h, rowB, d)) = pack_bf16(f2bf(o[n][2] * invB), f2bf(o[n][3] * invB));
        }
    }
    if (t == 0)
    {
        if (rowA < L) p.lse[(i64)bh * L + rowA] = mA + logf(lA);
        if (rowB < L) p.lse[(i64)bh * L + rowB] = mB + logf(lB);
    }
#endif
}
