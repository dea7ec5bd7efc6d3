// gemm.cu: our GEMMs for the products cuBLASLt is not given (src/Kernels/Ops/GemmRouting.cs decides; docs/GPU.md,
// "Skinny GEMMs"): M or N equal to 1 (GEMV), a reduction K <= 16 (rank-k update: the LoRA up products), M or N <= 16
// with a long K (the LoRA down products and factor gradients), and any operand off cuBLASLt's 16-byte rule.
//
// Contract, row-major as IBackend.Gemm: C = alpha * op(A) op(B) + beta * C (+ bias[j] along C's columns when given),
//   op(A) (M, K), op(B) (K, N), C (M, N). Accumulation in fp32 whatever the storage. beta == 0 never reads C (a C full
//   of NaN is overwritten); bias (N) has C's type. A, B and C are each bf16 or fp32: one instantiation per (L, S, C)
//   storage combination. An fp32 operand is rounded to bf16 as it is loaded unless L, S and C are all fp32: the rule
//   of the cuBLASLt path, which converts the fp32 side of a mixed product to bf16, so a route never changes the
//   numbers beyond the order of the fp32 sums. Every output element has one writer (no atomics): deterministic.
// Operands as the host hands them (transposes and leading dimensions already turned into element strides):
//   skinny and GEMV kernels: L(r, p) = l[r*l_r + p*l_p], the operand whose free dimension R is the larger of M, N;
//     S(s, p) = s[s*s_s + p*s_p], the other one (its free dimension S); C(r, s) = c[r*c_r + s*c_s];
//     bias index r*bias_r + s*bias_s. Blocks take S in tiles of NS (1 for GEMV, 16 for skinny) along gridDim.y.
//   rankk: L = op(A) (R = M rows), S(j, p) = op(B)(p, j) (S = N columns), C(i, j) = c[i*c_r + j*c_s].
// Kernels and launch shapes:
//   gemv_dot, skinny_dot (L contiguous along p): one warp per r; lanes stride over p in chunks of 8 elements
//     (16-byte loads when vec_l / vec_s, else strided scalars), then a scalar tail; NS accumulators per lane,
//     reduced by warp_sum (xor butterfly); lane j writes C(r, s0 + j). Block 256 (8 rows r), grid (ceil(R/8), ceil(S/NS)).
//   gemv_cols, skinny_cols (L contiguous along r): thread x owns r (coalesced), the 8 thread rows y split p
//     (p = y, y + 8, ...), then a shared (8, NS, 32) sum in y order. blockIdx.z takes k_chunk values of p (split-K):
//     with one chunk it writes C, else fp32 partials (ksplit, R, S) that gemm_finish sums in z order.
//     Block (32, 8), grid (ceil(R/32), ceil(S/NS), ksplit).
//   rankk (K <= 16): thread x owns column j and keeps op(B)(0..K-1, j) in registers; the block walks tiles of 16
//     rows of op(A) through shared memory (grid-stride over tiles along y). Block 256, grid (ceil(N/256), tiles, capped).
//   gemm_finish: 1-D grid-stride over R*S, block 256. bias_add: c[i, j] += bias[j], C (M, N) with ldc N, for the
//     cuBLASLt path when no algorithm takes the bias epilogue.
// Each entry point calls its body as a __noinline__ function: NVRTC 11.8's ptxas for sm_90 overflows its stack
// under -lineinfo when a kernel parameter feeds arithmetic inlined from a device function (a one-line repro:
// `f(a, b)` with f returning (a + b) * 3, a and b kernel parameters); behind the call they are plain values.
// NVRTC 12+ is not affected; the cost is one call per thread.
#include "common.cuh"

typedef float f32;

#define NS_SKINNY 16   // S tile of the skinny kernels: r1 <= 16 in one tile
#define DOT_WARPS 8    // rows r per dot block (one per warp)
#define COLS_X 32      // rows r per cols block
#define COLS_Y 8       // p slices per cols block
#define RK_ROWS 16     // rows of op(A) per rankk tile
#define RK_K 16        // largest K of rankk
#define RK_THREADS 256 // columns j per rankk block

struct GemmParams
{
    const void* l;        // L(r, p); rankk: op(A)
    const void* s;        // S(s, p); rankk: op(B) transposed
    void* c;              // C(r, s)
    const void* bias;     // (N), C's type, or null
    float* partial;       // split-K partial sums (ksplit, R, S), or null
    i64 R, S, K;
    i64 l_r, l_p;         // element strides of L
    i64 s_s, s_p;         // element strides of S
    i64 c_r, c_s;         // element strides of C
    i64 bias_r, bias_s;   // bias index = r*bias_r + s*bias_s (one of them 1, the other 0)
    i64 k_chunk;          // p per blockIdx.z in the cols kernels (K when there is no split)
    float alpha, beta;
    int vec_l, vec_s;     // dot kernels: L, S rows start 16-byte aligned and are contiguous along p
};
static_assert(sizeof(GemmParams) == 152, "GemmParams layout changed: update GemmRouting.GemmParams");
static_assert(RK_ROWS * RK_K == RK_THREADS, "rankk loads its A tile with one element per thread");

template <class T> struct IsF32 { static constexpr bool value = false; };
template <> struct IsF32<f32> { static constexpr bool value = true; };

// Round fp32 operands to bf16 unless the whole product is fp32 (see the contract).
template <class TL, class TS, class TC> struct RoundInputs
{
    static constexpr bool value = !(IsF32<TL>::value && IsF32<TS>::value && IsF32<TC>::value);
};

template <bool RND> __device__ __forceinline__ float ld(const bf16* p, i64 i) { return bf2f(p[i]); }
template <bool RND> __device__ __forceinline__ float ld(const f32* p, i64 i)
{
    float v = p[i];
    return RND ? bf2f(f2bf(v)) : v;
}

// Eight consecutive elements from a 16-byte aligned address: one 16-byte load of bf16, two of fp32.
template <bool RND> __device__ __forceinline__ void ld8(const bf16* p, float v[8])
{
    uint4 u = *(const uint4*)p;
    unsigned int w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int e = 0; e < 4; e++)
    {
        v[2 * e] = __uint_as_float(w[e] << 16);
        v[2 * e + 1] = __uint_as_float(w[e] & 0xffff0000u);
    }
}
template <bool RND> __device__ __forceinline__ void ld8(const f32* p, float v[8])
{
    float4 a = ((const float4*)p)[0], b = ((const float4*)p)[1];
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
    v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
    if (RND)
    {
#pragma unroll
        for (int e = 0; e < 8; e++) v[e] = bf2f(f2bf(v[e]));
    }
}

__device__ __forceinline__ void st(bf16* p, i64 i, float v) { p[i] = f2bf(v); }
__device__ __forceinline__ void st(f32* p, i64 i, float v) { p[i] = v; }

// C(r, s) = alpha * acc + beta * C(r, s) + bias; C is read only when beta != 0.
template <class TC> __device__ __forceinline__ void epilogue(const GemmParams& p, i64 r, i64 s, float acc)
{
    TC* c = (TC*)p.c;
    i64 ci = r * p.c_r + s * p.c_s;
    float v = p.alpha * acc;
    if (p.beta != 0.0f) v += p.beta * ld<false>((const TC*)c, ci);
    if (p.bias) v += ld<false>((const TC*)p.bias, r * p.bias_r + s * p.bias_s);
    st(c, ci, v);
}

// ---------------------------------------------------------------- dot: warp per r, long contiguous p

template <int NS, class TL, class TS, class TC> __device__ __noinline__ void gemm_dot(const GemmParams p)
{
    constexpr bool RND = RoundInputs<TL, TS, TC>::value;
    int lane = threadIdx.x % WARP;
    i64 r = (i64)blockIdx.x * DOT_WARPS + threadIdx.x / WARP;
    i64 s0 = (i64)blockIdx.y * NS;
    if (r >= p.R) return;   // r is uniform over a warp: warp_sum below always sees whole warps
    int ns = (int)min((i64)NS, p.S - s0);
    const TL* l = (const TL*)p.l + r * p.l_r;
    const TS* s = (const TS*)p.s + s0 * p.s_s;
    float acc[NS];
#pragma unroll
    for (int j = 0; j < NS; j++) acc[j] = 0.0f;

    i64 tail = 0;   // first p of the scalar loop
    if (p.vec_l)    // l_p == 1: 8 elements per lane and step
    {
        i64 chunks = p.K / 8;
        for (i64 q = lane; q < chunks; q += WARP)
        {
            float lv[8], sv[8];
            ld8<RND>(l + q * 8, lv);
#pragma unroll
            for (int j = 0; j < NS; j++)
            {
                if (j >= ns) break;
                if (p.vec_s) ld8<RND>(s + j * p.s_s + q * 8, sv);
                else
                {
#pragma unroll
                    for (int e = 0; e < 8; e++) sv[e] = ld<RND>(s, j * p.s_s + (q * 8 + e) * p.s_p);
                }
#pragma unroll
                for (int e = 0; e < 8; e++) acc[j] += lv[e] * sv[e];
            }
        }
        tail = chunks * 8;
    }
    for (i64 q = tail + lane; q < p.K; q += WARP)
    {
        float lv = ld<RND>(l, q * p.l_p);
#pragma unroll
        for (int j = 0; j < NS; j++)
        {
            if (j >= ns) break;
            acc[j] += lv * ld<RND>(s, j * p.s_s + q * p.s_p);
        }
    }
#pragma unroll
    for (int j = 0; j < NS; j++) acc[j] = warp_sum(acc[j]);
#pragma unroll
    for (int j = 0; j < NS; j++)
        if (j < ns && lane == j) epilogue<TC>(p, r, s0 + j, acc[j]);
}

// ---------------------------------------------------------------- cols: thread per r, p split over y and z

template <int NS, class TL, class TS, class TC> __device__ __noinline__ void gemm_cols(const GemmParams p)
{
    constexpr bool RND = RoundInputs<TL, TS, TC>::value;
    __shared__ float red[COLS_Y][NS][COLS_X];
    int tx = threadIdx.x, ty = threadIdx.y;
    i64 r = (i64)blockIdx.x * COLS_X + tx;
    i64 s0 = (i64)blockIdx.y * NS;
    int ns = (int)min((i64)NS, p.S - s0);
    i64 q_begin = (i64)blockIdx.z * p.k_chunk, q_end = min(p.K, q_begin + p.k_chunk);
    float acc[NS];
#pragma unroll
    for (int j = 0; j < NS; j++) acc[j] = 0.0f;
    if (r < p.R)
    {
        const TL* l = (const TL*)p.l + r * p.l_r;
        const TS* s = (const TS*)p.s + s0 * p.s_s;
        for (i64 q = q_begin + ty; q < q_end; q += COLS_Y)
        {
            float lv = ld<RND>(l, q * p.l_p);   // coalesced over tx: l_r == 1
#pragma unroll
            for (int j = 0; j < NS; j++)
            {
                if (j >= ns) break;
                acc[j] += lv * ld<RND>(s, j * p.s_s + q * p.s_p);   // one address per warp: a broadcast
            }
        }
    }
#pragma unroll
    for (int j = 0; j < NS; j++) red[ty][j][tx] = acc[j];
    __syncthreads();
    if (r >= p.R) return;
    for (int j = ty; j < ns; j += COLS_Y)
    {
        float v = 0.0f;
#pragma unroll
        for (int y = 0; y < COLS_Y; y++) v += red[y][j][tx];
        if (gridDim.z == 1) epilogue<TC>(p, r, s0 + j, v);
        else p.partial[((i64)blockIdx.z * p.R + r) * p.S + s0 + j] = v;
    }
}

// Split-K second pass: C(r, s) from the partial sums of every chunk, in chunk order.
template <class TC> __device__ __noinline__ void gemm_finish(const GemmParams p)
{
    i64 ksplit = (p.K + p.k_chunk - 1) / p.k_chunk;
    GRID_STRIDE(i, p.R * p.S)
    {
        i64 r = i / p.S, s = i % p.S;
        float v = 0.0f;
        for (i64 z = 0; z < ksplit; z++) v += p.partial[(z * p.R + r) * p.S + s];
        epilogue<TC>(p, r, s, v);
    }
}

// ---------------------------------------------------------------- rankk: K <= 16, thread per column j

template <class TA, class TB, class TC> __device__ __noinline__ void gemm_rankk(const GemmParams p)
{
    constexpr bool RND = RoundInputs<TA, TB, TC>::value;
    __shared__ float a_tile[RK_ROWS][RK_K];
    i64 j = (i64)blockIdx.x * RK_THREADS + threadIdx.x;
    const TA* a = (const TA*)p.l;
    const TB* b = (const TB*)p.s;
    float bj[RK_K];
#pragma unroll
    for (int q = 0; q < RK_K; q++) bj[q] = j < p.S && q < p.K ? ld<RND>(b, j * p.s_s + q * p.s_p) : 0.0f;
    int tr = threadIdx.x / RK_K, tq = threadIdx.x % RK_K;
    i64 tiles = (p.R + RK_ROWS - 1) / RK_ROWS;
    for (i64 t = blockIdx.y; t < tiles; t += gridDim.y)
    {
        i64 i0 = t * RK_ROWS;
        __syncthreads();   // every thread is done with the previous tile
        a_tile[tr][tq] = i0 + tr < p.R && tq < p.K ? ld<RND>(a, (i0 + tr) * p.l_r + tq * p.l_p) : 0.0f;
        __syncthreads();
        if (j >= p.S) continue;
        for (int rr = 0; rr < RK_ROWS; rr++)
        {
            if (i0 + rr >= p.R) break;
            float acc = 0.0f;
#pragma unroll
            for (int q = 0; q < RK_K; q++)
            {
                if (q >= p.K) break;
                acc += a_tile[rr][q] * bj[q];
            }
            epilogue<TC>(p, i0 + rr, j, acc);
        }
    }
}

// ---------------------------------------------------------------- entry points

template <class TC> __device__ __noinline__ void bias_add(TC* c, const TC* bias, i64 M, i64 N)
{
    GRID_STRIDE(i, M * N) st(c, i, ld<false>((const TC*)c, i) + ld<false>(bias, i % N));
}

// One set of entry points per (L, S, C) storage: e.g. skinny_dot_bf16_f32_bf16 reads L bf16, S fp32, writes C bf16.
#define GEMM_ENTRIES(TL, TS, TC)                                                                                        \
    extern "C" __global__ void __launch_bounds__(256) gemv_dot_##TL##_##TS##_##TC(GemmParams p) { gemm_dot<1, TL, TS, TC>(p); } \
    extern "C" __global__ void __launch_bounds__(256) skinny_dot_##TL##_##TS##_##TC(GemmParams p) { gemm_dot<NS_SKINNY, TL, TS, TC>(p); } \
    extern "C" __global__ void __launch_bounds__(256) gemv_cols_##TL##_##TS##_##TC(GemmParams p) { gemm_cols<1, TL, TS, TC>(p); } \
    extern "C" __global__ void __launch_bounds__(256) skinny_cols_##TL##_##TS##_##TC(GemmParams p) { gemm_cols<NS_SKINNY, TL, TS, TC>(p); } \
    extern "C" __global__ void __launch_bounds__(256) rankk_##TL##_##TS##_##TC(GemmParams p) { gemm_rankk<TL, TS, TC>(p); }

GEMM_ENTRIES(bf16, bf16, bf16)
GEMM_ENTRIES(bf16, bf16, f32)
GEMM_ENTRIES(bf16, f32, bf16)
GEMM_ENTRIES(bf16, f32, f32)
GEMM_ENTRIES(f32, bf16, bf16)
GEMM_ENTRIES(f32, bf16, f32)
GEMM_ENTRIES(f32, f32, bf16)
GEMM_ENTRIES(f32, f32, f32)

extern "C" __global__ void gemm_finish_bf16(GemmParams p) { gemm_finish<bf16>(p); }
extern "C" __global__ void gemm_finish_f32(GemmParams p) { gemm_finish<f32>(p); }
extern "C" __global__ void bias_add_bf16(bf16* c, const bf16* bias, i64 M, i64 N) { bias_add<bf16>(c, bias, M, N); }
extern "C" __global__ void bias_add_f32(f32* c, const f32* bias, i64 M, i64 N) { bias_add<f32>(c, bias, M, N); }
