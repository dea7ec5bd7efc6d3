// 02_up_backward.cu: version 2 of the LoRA up factor's backward (kernels/dev; version 1 is the two routed GEMMs of
// IBackend.LoraUpBackward on CUDA, kernels/gemm.cu or cuBLASLt as GemmRouting sends each, both reading dy).
// Opt-in: METALORA_LORA_UPBACK=1 (CudaBackend.LoraUpBackwardKernel).
// What, for one target of the fused Stage-2 LoRA (src/Engine/Lora/FusedStage2.cs), with R = r2 in 1..4:
//   dmid (n, R)  = dy (n, rows) · u (rows, R)        written (=), bf16, into a block of a wider (n, Σ r2) matrix
//   dU (rows, R) += dyᵀ (rows, n) · a (n, R)          accumulated (+=), fp32 (Master), contiguous
// dy: bf16, a block of the module's output gradient (leading dimension ldy, the module's d_out); a: bf16, a block of
// the forward's kept down product (ld lda = Σ r2); u: fp32, contiguous (rows, R). Products and sums fp32.
// dy is read once: each element feeds both its row's dot with u (dmid) and its column's sum against a (dU).
// One launch, lora_up_backward_rR: grid (tiles = ceil(n / 64), chunks = ceil(rows / 1024)), block 128 (4 warps).
//   Block (t, ch) owns rows i0 = 64 t .. i0 + 63 of dy and columns ch·1024 .. ch·1024 + 1023; thread x owns the 8
//   columns c0 = ch·1024 + 8x .. c0 + 7 (fewer, or none, at the right edge). It stages a's 64 × R tile in shared
//   memory (zeros past n) and keeps u's 8 × R values in registers, then walks its 64 rows, 4 at a time (their loads
//   issued first): one 16-byte load of dy[i, c0 .. c0 + 7] (UB_VEC: dy's block 16-byte aligned and ldy a multiple of
//   8, all 8 columns inside; else scalars, zeros past rows), dU partial du[j][k] += dy[i, c0 + j]·a[i, k] in registers, and the row's dmid part
//   Σ_j dy[i, c0 + j]·u[c0 + j, k], summed over the warp (warp_sum) into red[warp][i][k]. At the end the block sums
//   red over its 4 warps in warp order into part_m[ch][i][k] (its chunk's share of dmid), and each thread writes its
//   du into part_u[t][c][k] (the tile's share of dU). No float atomics: every partial has one writer.
// The finish, in the same launch ("last block finishes"): count (tiles + chunks) unsigned ints, zero on entry and
//   left zero on exit. count[t] counts the blocks of row tile t that have written their part_m rows, count[tiles + ch]
//   (with UB_DU) the blocks of column chunk ch that have written their part_u columns. Each thread fences its own
//   partial stores (__threadfence), the block synchronises, then thread 0 adds 1 to count[t] and count[tiles + ch]
//   (atomicAdd, device scope). The block that reads chunks - 1 from count[t] is the last of tile t: every other block
//   of the tile fenced its stores before its add, and its add is ordered before ours (atomics on one address are
//   totally ordered), so after our own fence all of the tile's part_m rows are visible; it reads them through L2
//   (__ldcg, no stale L1 line) and writes dmid[i0 + i, k] = bf16(Σ_ch part_m[ch][i0 + i][k]) in chunk order, then
//   stores count[t] = 0 (every add of this launch to it has happened). Likewise the block that reads tiles - 1 from
//   count[tiles + ch] adds dU[c, k] += Σ_t part_u[t][c][k] in tile order over its chunk's columns (thread x its 8
//   columns, 8·R independent sums, U = 4 (R ≤ 2) or 2 tiles' loads issued before their adds) and stores
//   count[tiles + ch] = 0.
//   Exactly one block finishes each tile and each chunk; which block that is depends on the schedule, but the order of
//   every sum is fixed by the indices, so the bits are the same from run to run (and the same as the earlier
//   two-launch form's finish pass). The next call, stream-ordered after this launch, finds every counter 0: the
//   backend keeps one counter buffer, zeroed once when allocated, for all calls (and CUDA graph replays).
// Without UB_DU (a and dU absent) only dmid is formed: part_u and the chunk counters are not touched.
// Scratch: part_u (tiles, rows, R) and part_m (chunks, n, R) fp32, from the pool. At FLUX.1-dev 1024² (n 4,608,
//   tiles 72), rows 12,288, R 1: 3.5 MB of part_u against dy's 113 MB. count: the backend's (tiles + chunks) ints.
// Indices are 32-bit: the host checks n·ldy, n·lda, n·ldm, tiles·rows·R and chunks·n·R below 2^31, and runs version 1
//   otherwise; likewise for R > 4 and any other dtype.
// Launch: one kernel; 64·R·4 + 4·64·R·4 bytes of static shared memory (+ 4 for the block's finish flags).
// Replaces: the two GEMMs (dU: a rank-k or skinny product; dmid: gemv_dot at R = 1) that each read all of dy.
// The entry points call their bodies as __noinline__ functions (NVRTC 11.8's sm_90 ptxas, see kernels/gemm.cu).
#include "common.cuh"

#define UB_THREADS 128
#define UB_WARPS (UB_THREADS / WARP)
#define UB_VEC_COLS 8                            // bf16 in 16 bytes
#define UB_CHUNK (UB_THREADS * UB_VEC_COLS)      // columns per block
#define UB_TILE 64                               // rows of dy per block
#define UB_MAX_R 4
#define UB_UNROLL 4                              // rows whose dy loads are in flight together

#define UB_VEC 1   // 16-byte loads of dy
#define UB_DU 2    // a and dU given: form dU too

struct LoraUpBackwardParams
{
    const bf16* dy;      // block start; row i, column c at dy[i * ldy + c]
    const bf16* a;       // block start; a[i * lda + k]
    const float* u;      // (rows, R) contiguous
    float* du;           // (rows, R) contiguous, +=
    bf16* dmid;          // block start; dmid[i * ldm + k], =
    float* part_u;       // (tiles, rows, R)
    float* part_m;       // (chunks, n, R)
    unsigned int* count; // (tiles + chunks): zero on entry, left zero
    int n, rows, r;
    int ldy, lda, ldm;
    int tiles, chunks;
    int flags;           // UB_* bits
    int pad;
};
static_assert(sizeof(LoraUpBackwardParams) == 104, "LoraUpBackwardParams layout changed: update CudaBackend.LoraUpBackwardParams");

__device__ __forceinline__ void ub_unpack(uint4 v, float* f)
{
    unsigned int w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int q = 0; q < 4; q++)
    {
        f[2 * q] = __uint_as_float(w[q] << 16);
        f[2 * q + 1] = __uint_as_float(w[q] & 0xffff0000u);
    }
}

template <int R> __device__ __noinline__ void lora_up_backward_body(const LoraUpBackwardParams p)
{
    __shared__ float a_s[UB_TILE][R];
    __shared__ float red[UB_WARPS][UB_TILE][R];
    int x = threadIdx.x, warp = x / WARP, lane = x % WARP;
    int t = blockIdx.x, ch = blockIdx.y;
    int i0 = t * UB_TILE, c0 = ch * UB_CHUNK + x * UB_VEC_COLS;
    int nrows = min(UB_TILE, p.n - i0);
    int cols = max(0, min(UB_VEC_COLS, p.rows - c0));
    bool du_on = (p.flags & UB_DU) != 0;
    bool vec = (p.flags & UB_VEC) != 0 && cols == UB_VEC_COLS;

    for (int q = x; q < UB_TILE * R; q += UB_THREADS)
    {
        int i = q / R, k = q - i * R;
        a_s[i][k] = du_on && i < nrows ? bf2f(p.a[(i0 + i) * p.lda + k]) : 0.0f;
    }
    float u_r[UB_VEC_COLS][R], du[UB_VEC_COLS][R];
#pragma unroll
    for (int j = 0; j < UB_VEC_COLS; j++)
#pragma unroll
        for (int k = 0; k < R; k++)
        {
            u_r[j][k] = j < cols ? p.u[(c0 + j) * R + k] : 0.0f;
            du[j][k] = 0.0f;
        }
    __syncthreads();

    // UB_UNROLL rows' loads are issued before their arithmetic, so each thread keeps that many 16-byte loads in flight
    for (int i = 0; i < nrows; i += UB_UNROLL)
    {
        uint4 raw[UB_UNROLL];
#pragma unroll
        for (int v = 0; v < UB_UNROLL; v++)
        {
            raw[v] = make_uint4(0, 0, 0, 0);
            if (vec && i + v < nrows) raw[v] = *(const uint4*)(p.dy + (i0 + i + v) * p.ldy + c0);
        }
#pragma unroll
        for (int v = 0; v < UB_UNROLL; v++)
        {
            if (i + v >= nrows) break;   // uniform over the block: warp_sum below sees whole warps
            const bf16* row = p.dy + (i0 + i + v) * p.ldy + c0;
            float y[UB_VEC_COLS];
            if (vec) ub_unpack(raw[v], y);
            else
            {
#pragma unroll
                for (int j = 0; j < UB_VEC_COLS; j++) y[j] = j < cols ? bf2f(row[j]) : 0.0f;
            }
#pragma unroll
            for (int k = 0; k < R; k++)
            {
                float m = 0.0f, ak = a_s[i + v][k];
#pragma unroll
                for (int j = 0; j < UB_VEC_COLS; j++)
                {
                    m += y[j] * u_r[j][k];
                    du[j][k] += y[j] * ak;
                }
                m = warp_sum(m);
                if (lane == 0) red[warp][i + v][k] = m;
            }
        }
    }
    __syncthreads();

    for (int q = x; q < nrows * R; q += UB_THREADS)
    {
        int i = q / R, k = q - i * R;
        float s = 0.0f;
#pragma unroll
        for (int w = 0; w < UB_WARPS; w++) s += red[w][i][k];
        p.part_m[(ch * p.n + i0 + i) * R + k] = s;
    }
    if (du_on)
    {
        float* pu = p.part_u + (t * p.rows + c0) * R;
#pragma unroll
        for (int j = 0; j < UB_VEC_COLS; j++)
#pragma unroll
            for (int k = 0; k < R; k++)
                if (j < cols) pu[j * R + k] = du[j][k];
    }

    // the last block of this tile (of this chunk) finishes it: see "The finish" above for the ordering
    __shared__ int last;
    __threadfence();   // this thread's partials visible device-wide before the block's count below
    __syncthreads();   // ... for every thread of the block
    if (x == 0)
    {
        int f = 0;
        if (atomicAdd(p.count + t, 1u) == (unsigned int)(p.chunks - 1)) f |= 1;
        if (du_on && atomicAdd(p.count + p.tiles + ch, 1u) == (unsigned int)(p.tiles - 1)) f |= 2;
        last = f;
    }
    __syncthreads();
    int f = last;
    if (f == 0) return;
    __threadfence();   // the other blocks' partials, counted before ours, are read after this

    if (f & 1)   // dmid of rows i0 .. i0 + nrows - 1: the sum over chunks in chunk order
    {
        for (int q = x; q < nrows * R; q += UB_THREADS)
        {
            int i = q / R, k = q - i * R;
            const float* pm = p.part_m + (i0 + i) * R + k;
            float s = 0.0f;
#pragma unroll 4
            for (int c = 0; c < p.chunks; c++) s += __ldcg(pm + c * p.n * R);
            p.dmid[(i0 + i) * p.ldm + k] = f2bf(s);
        }
        if (x == 0) p.count[t] = 0;
    }
    if (f & 2)   // dU of this thread's 8 columns: the sum over tiles in tile order, then +=
    {
        float s[UB_VEC_COLS][R];
#pragma unroll
        for (int j = 0; j < UB_VEC_COLS; j++)
#pragma unroll
            for (int k = 0; k < R; k++) s[j][k] = 0.0f;
        // U tiles' loads (8·R·U floats, 32 or 64 of them) are issued before their adds, which stay in tile order
        constexpr int U = R <= 2 ? 4 : 2;
        const float* pu = p.part_u + c0 * R;
        int tt = 0;
        for (; tt + U <= p.tiles; tt += U)
        {
            float v[U][UB_VEC_COLS][R];
#pragma unroll
            for (int g = 0; g < U; g++)
#pragma unroll
                for (int j = 0; j < UB_VEC_COLS; j++)
#pragma unroll
                    for (int k = 0; k < R; k++)
                        v[g][j][k] = j < cols ? __ldcg(pu + (tt + g) * p.rows * R + j * R + k) : 0.0f;
#pragma unroll
            for (int g = 0; g < U; g++)
#pragma unroll
                for (int j = 0; j < UB_VEC_COLS; j++)
#pragma unroll
                    for (int k = 0; k < R; k++) s[j][k] += v[g][j][k];
        }
        for (; tt < p.tiles; tt++)
#pragma unroll
            for (int j = 0; j < UB_VEC_COLS; j++)
#pragma unroll
                for (int k = 0; k < R; k++)
                    if (j < cols) s[j][k] += __ldcg(pu + tt * p.rows * R + j * R + k);
#pragma unroll
        for (int j = 0; j < UB_VEC_COLS; j++)
#pragma unroll
            for (int k = 0; k < R; k++)
                if (j < cols) p.du[(c0 + j) * R + k] += s[j][k];
        if (x == 0) p.count[p.tiles + ch] = 0;
    }
}

#define UB_ENTRY(R) \
    extern "C" __global__ void __launch_bounds__(UB_THREADS) lora_up_backward_r##R(const LoraUpBackwardParams p) \
    { \
        lora_up_backward_body<R>(p); \
    }
UB_ENTRY(1)
UB_ENTRY(2)
UB_ENTRY(3)
UB_ENTRY(4)
