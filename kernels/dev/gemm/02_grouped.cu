// 02_grouped.cu: version 2 of the GEMM group (kernels/dev; version 1 is one kernels/gemm.cu launch per product, or
// cuBLASLt, as GemmRouting sends each). Opt-in: METALORA_LORA_GROUPED=1 (CudaBackend.GroupedGemm).
// What: many independent small fp32 products in one launch (IBackend.GemmGroup). Entry e of a device table:
//   C_e (M, N) = alpha_e * op(A_e) (M, K) * op(B_e) (K, N) + beta_e * C_e, row-major blocks with leading dimensions
//   lda, ldb, ldc (elements); op a transpose when the entry's flag says so. A, B, C fp32 (Master), accumulation fp32
//   in the order of K (dot mode: per lane, then the xor butterfly). beta == 0 never reads C. Every output element has
//   one writer: deterministic. Written with = (beta 0) or accumulated (beta 1), as each entry asks.
// The two uses (FusedStage2Cache, METALORA_LORA_GROUPED=1), FLUX.1-dev Stage 2, r1 16, r2 1, 494 entries:
//   A_j = M_j D_j   (r2, d_in) = (r2, r1) (r1, d_in): general mode, M 1, N 3072 or 12288, K 16;
//   dM_j += G_j D_j^T (r2, r1) = (r2, d_in) (r1, d_in)^T: dot mode, M 1, N 16, K 3072 or 12288.
// Table decode: the host lays the entries out with tile_start, the first tile of each (a prefix sum, entries with
//   M N = 0 left out); block b finds the last entry whose tile_start <= b by binary search (thread 0, broadcast in
//   shared memory) and takes local tile t = b - tile_start. Two modes, chosen per entry by the host (GG_DOT):
//   dot (op(A) and op(B) both contiguous along K: A not transposed, B transposed): warp w of tile t owns output
//     o = 8 t + w of the row-major (M, N), i = o / N, j = o % N; lanes stride over K (float4 loads of A's row i and
//     B's row j when GG_VEC_IN: both 16-byte aligned, lda, ldb and K multiples of 4), warp_sum, lane 0 writes.
//     Tiles per entry ceil(M N / 8).
//   general (any other transposes): thread x of tile t owns item q = 256 t + x of (M, ceil(N / 4)): row i, columns
//     j0 = 4 (q % ceil(N / 4)) .. j0 + 3 (fewer at the right edge); it walks K, one op(A)(i, p) times four op(B)(p, j)
//     (a float4 of B's row p when GG_VEC_IN: B not transposed, 16-byte aligned, ldb a multiple of 4; else scalars),
//     and writes four c (a float4 when GG_VEC_C: C 16-byte aligned, ldc a multiple of 4, four columns left).
//     Tiles per entry ceil(M ceil(N / 4) / 256).
// Indices are 32-bit: the host checks that every operand's rows x ld, M N and the tile count fit in an int, and runs
//   an entry that does not through version 1. The table (64 bytes an entry) is uploaded once and cached by the host
//   while the entry list is unchanged (same pointers, shapes, scalars), so a steady step uploads nothing.
// Launch: grid (total tiles), block 256, 4 bytes of static shared memory.
// Replaces: one gemm.cu launch (gemv_dot, skinny_dot or rankk) per entry.
// The entry point calls its body as a __noinline__ function (NVRTC 11.8's sm_90 ptxas, see kernels/gemm.cu).
#include "common.cuh"

#define GG_THREADS 256
#define GG_WARPS (GG_THREADS / WARP)
#define GG_COLS 4

#define GG_TRANS_A 1
#define GG_TRANS_B 2
#define GG_VEC_IN 4
#define GG_VEC_C 8
#define GG_DOT 16

struct GroupedEntry
{
    const float* a;
    const float* b;
    float* c;
    int m, n, k;
    int lda, ldb, ldc;
    int flags;        // GG_* bits
    int tile_start;   // first tile of this entry
    float alpha, beta;
};
static_assert(sizeof(GroupedEntry) == 64, "GroupedEntry layout changed: update CudaBackend.GroupedEntry");

struct GroupedParams
{
    const GroupedEntry* table;
    int entries;
    int tiles;
};
static_assert(sizeof(GroupedParams) == 16, "GroupedParams layout changed: update CudaBackend.GroupedParams");

// The last entry whose first tile is <= tile (tile_start ascends; entry 0 starts at 0).
__device__ __forceinline__ int grouped_find(const GroupedEntry* table, int entries, int tile)
{
    int lo = 0, hi = entries - 1;
    while (lo < hi)
    {
        int mid = (lo + hi + 1) >> 1;
        if (table[mid].tile_start <= tile) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

__device__ __forceinline__ float grouped_out(const GroupedEntry& e, int ci, float acc)
{
    float v = e.alpha * acc;
    if (e.beta != 0.0f) v += e.beta * e.c[ci];
    return v;
}

__device__ __forceinline__ void grouped_dot(const GroupedEntry& e, int t)
{
    int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    int o = t * GG_WARPS + warp;
    if (o >= e.m * e.n) return;   // uniform over the warp: warp_sum sees whole warps
    int i = o / e.n, j = o - i * e.n;
    const float* ar = e.a + i * e.lda;
    const float* br = e.b + j * e.ldb;
    float acc = 0.0f;
    if (e.flags & GG_VEC_IN)
    {
        int k4 = e.k >> 2;
        for (int q = lane; q < k4; q += WARP)
        {
            float4 x = ((const float4*)ar)[q], y = ((const float4*)br)[q];
            acc += x.x * y.x;
            acc += x.y * y.y;
            acc += x.z * y.z;
            acc += x.w * y.w;
        }
    }
    else
    {
        for (int q = lane; q < e.k; q += WARP) acc += ar[q] * br[q];
    }
    acc = warp_sum(acc);
    if (lane == 0)
    {
        int ci = i * e.ldc + j;
        e.c[ci] = grouped_out(e, ci, acc);
    }
}

__device__ __forceinline__ void grouped_general(const GroupedEntry& e, int t)
{
    int groups = (e.n + GG_COLS - 1) / GG_COLS;
    int q = t * GG_THREADS + threadIdx.x;
    if (q >= e.m * groups) return;
    int i = q / groups, j0 = (q - i * groups) * GG_COLS;
    int cols = min(GG_COLS, e.n - j0);
    bool ta = (e.flags & GG_TRANS_A) != 0, tb = (e.flags & GG_TRANS_B) != 0;
    bool vec = (e.flags & GG_VEC_IN) && cols == GG_COLS;
    float acc[GG_COLS] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int p = 0; p < e.k; p++)
    {
        float av = e.a[ta ? p * e.lda + i : i * e.lda + p];
        if (vec)
        {
            float4 bv = *(const float4*)(e.b + p * e.ldb + j0);
            acc[0] += av * bv.x;
            acc[1] += av * bv.y;
            acc[2] += av * bv.z;
            acc[3] += av * bv.w;
        }
        else
        {
#pragma unroll
            for (int c = 0; c < GG_COLS; c++)
                if (c < cols) acc[c] += av * e.b[tb ? (j0 + c) * e.ldb + p : p * e.ldb + j0 + c];
        }
    }
    int ci = i * e.ldc + j0;
    if ((e.flags & GG_VEC_C) && cols == GG_COLS)
    {
        float4 v;
        if (e.beta != 0.0f)
        {
            float4 old = *(const float4*)(e.c + ci);
            v = make_float4(e.alpha * acc[0] + e.beta * old.x, e.alpha * acc[1] + e.beta * old.y,
                            e.alpha * acc[2] + e.beta * old.z, e.alpha * acc[3] + e.beta * old.w);
        }
        else v = make_float4(e.alpha * acc[0], e.alpha * acc[1], e.alpha * acc[2], e.alpha * acc[3]);
        *(float4*)(e.c + ci) = v;
    }
    else
    {
#pragma unroll
        for (int c = 0; c < GG_COLS; c++)
            if (c < cols) e.c[ci + c] = grouped_out(e, ci + c, acc[c]);
    }
}

__device__ __noinline__ void gemm_grouped_body(const GroupedParams p)
{
    __shared__ int entry_s;
    if (threadIdx.x == 0) entry_s = grouped_find(p.table, p.entries, (int)blockIdx.x);
    __syncthreads();
    const GroupedEntry e = p.table[entry_s];
    int t = (int)blockIdx.x - e.tile_start;
    if (e.flags & GG_DOT) grouped_dot(e, t);
    else grouped_general(e, t);
}

extern "C" __global__ void __launch_bounds__(GG_THREADS) gemm_grouped(const GroupedParams p)
{
    gemm_grouped_body(p);
}
