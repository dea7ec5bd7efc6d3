// attention.cu: the Attention group. Rotary position embedding (FLUX's rope / apply_rope) and fused attention
// softmax(q k^T * scale) v with the log-sum-exp kept, and its backward. This is version 1 of the attention kernels
// (fp32 CUDA cores), the engine's fallback; the tensor-core version 2 lives in kernels/dev/attention until a GPU run
// has passed it.
//
// rope_table:  ids (B, L, n_axes) in either precision (dt_ids) -> pe (B, L, D/2, 2) fp32 = (cos, sin) per pair.
//              Pair j belongs to the axis whose range of dims[a]/2 pairs contains it (axes in order); with k its
//              index inside that axis, angle = id[b, l, a] * theta^(-2k / dims[a]), computed in fp64, stored in fp32.
// rope_apply:  x (B, H, L, D) bf16, pe fp32 -> out bf16 (written with =):
//              sign = +1: (x0, x1) -> (cos x0 - sin x1, sin x0 + cos x1);  sign = -1: the transpose (the backward).
//              Launch: 1-D grid-stride, block 256; table over B*L*D/2 pairs, apply over B*H*L*D/2 pairs.
//
// attention: shapes in attention.cuh. Every output is written with = (dq, dk, dv have one writer each: no atomics).
// Never materialises an L x L matrix: scores live one 32-key (or 32-query) tile at a time in registers.
// Forward (online softmax): per query row keep the running max m, the running sum l and the unnormalised output;
//   a new tile rescales them by exp(m_old - m_new). lse = m + log(l).
// Backward (FlashAttention-2 order): drow = rowsum(dout * o) first; then with P = exp(s - lse),
//   dP = dout v^T, dS = P (dP - drow): dq = scale dS k (query-centric kernel), dv = P^T dout and
//   dk = scale dS^T q (key-centric kernel). P is recomputed in both rather than stored.
// Layout of work: one warp per row of the outer side; lane j owns key (or query) j of the current 32-wide tile for
//   the dot products, and dims lane + 32 i (i < 4) of the row's accumulators. Tiles sit in shared memory as fp32,
//   padded to 129 floats per row so that 32 lanes reading 32 different rows hit 32 different banks.
// Launch: block 256 (8 warps). forward grid (ceil(L/16), B*H), 2 query rows per warp; backward_dq and
//   backward_dkdv grid (ceil(L/8), B*H), 1 row per warp; backward_preprocess grid ceil(B*H*L/8), one warp per row.
#include "attention.cuh"

#define ROPE_MAX_AXES 8

struct RopeTableParams
{
    const void* ids;   // (B, L, n_axes)
    float* pe;         // (B, L, D/2, 2)
    int dt_ids;
    int B, L, n_axes, half_d;   // half_d = D/2 = sum of dims / 2
    float theta;
    int dims[ROPE_MAX_AXES];
};
static_assert(sizeof(RopeTableParams) == 72, "RopeTableParams layout changed: update CudaBackend.RopeTableParams");

extern "C" __global__ void rope_table(RopeTableParams p)
{
    GRID_STRIDE(i, (i64)p.B * p.L * p.half_d)
    {
        i64 bl = i / p.half_d;
        int j = (int)(i % p.half_d);
        int a = 0, k = j;
        while (a < p.n_axes - 1 && k >= p.dims[a] / 2) { k -= p.dims[a] / 2; a++; }
        double pos = (double)ldx(p.ids, p.dt_ids, bl * p.n_axes + a);
        double omega = pow((double)p.theta, -2.0 * k / p.dims[a]);
        double ang = pos * omega;
        p.pe[2 * i] = (float)cos(ang);
        p.pe[2 * i + 1] = (float)sin(ang);
    }
}

extern "C" __global__ void rope_apply(bf16* out, const bf16* x, const float* pe, int B, int H, int L, int D, float sign)
{
    int half = D / 2;
    GRID_STRIDE(i, (i64)B * H * L * half)
    {
        int j = (int)(i % half);
        i64 row = i / half;               // (b, h, l)
        i64 l = row % L, b = row / ((i64)H * L);
        const float* cs = pe + ((b * L + l) * half + j) * 2;
        float c = cs[0], s = sign * cs[1];
        float x0 = bf2f(x[row * D + 2 * j]), x1 = bf2f(x[row * D + 2 * j + 1]);
        out[row * D + 2 * j] = f2bf(c * x0 - s * x1);
        out[row * D + 2 * j + 1] = f2bf(s * x0 + c * x1);
    }
}

// ---------------------------------------------------------------- attention
#define KT 32
#define PADD (MAXD + 1)
#define DPL (MAXD / WARP)   // accumulator dims per lane
#define NWARPS 8
#define FWD_ROWS 2

extern "C" __global__ void __launch_bounds__(256) attention_forward(AttnParams p)
{
    __shared__ float ks[KT][PADD];
    __shared__ float vs[KT][MAXD];
    __shared__ float qs[NWARPS][FWD_ROWS][MAXD];
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    const int bh = blockIdx.y, b = bh / p.H, h = bh % p.H, D = p.D, L = p.L;
    const i64 base = (i64)bh * L * D;
    const int row0 = blockIdx.x * (NWARPS * FWD_ROWS) + warp * FWD_ROWS;

    for (int r = 0; r < FWD_ROWS; r++)
        for (int d = lane; d < D; d += WARP)
            qs[warp][r][d] = row0 + r < L ? bf2f(p.q[base + (i64)(row0 + r) * D + d]) * p.scale : 0.0f;

    float m[FWD_ROWS], l[FWD_ROWS], acc[FWD_ROWS][DPL];
    for (int r = 0; r < FWD_ROWS; r++)
    {
        m[r] = -INFINITY;
        l[r] = 0.0f;
        for (int i = 0; i < DPL; i++) acc[r][i] = 0.0f;
    }

    for (int j0 = 0; j0 < L; j0 += KT)
    {
        __syncthreads();   // everyone is done with the previous tile (and qs is written)
        for (int e = threadIdx.x; e < KT * D; e += blockDim.x)
        {
            int j = e / D, d = e % D, key = j0 + j;
            ks[j][d] = key < L ? bf2f(p.k[base + (i64)key * D + d]) : 0.0f;
            vs[j][d] = key < L ? bf2f(p.v[base + (i64)key * D + d]) : 0.0f;
        }
        __syncthreads();

        const bool valid = j0 + lane < L;
        for (int r = 0; r < FWD_ROWS; r++)
        {
            float s = 0.0f;
            for (int d = 0; d < D; d++) s += qs[warp][r][d] * ks[lane][d];
            if (!valid) s = -INFINITY;
            float m_new = fmaxf(m[r], warp_max(s));      // finite: the tile holds at least one valid key
            float pr = expf(s - m_new);
            float alpha = expf(m[r] - m_new);             // 0 on the first tile (m = -inf)
            l[r] = l[r] * alpha + warp_sum(pr);
            for (int i = 0; i < DPL; i++) acc[r][i] *= alpha;
            for (int j = 0; j < KT; j++)
            {
                float pj = __shfl_sync(0xffffffffu, pr, j);
                for (int i = 0; i < DPL; i++)
                {
                    int d = lane + WARP * i;
                    if (d < D) acc[r][i] += pj * vs[j][d];
                }
            }
            m[r] = m_new;
        }
    }

    for (int r = 0; r < FWD_ROWS; r++)
    {
        int row = row0 + r;
        if (row >= L) continue;
        float inv = 1.0f / l[r];
        for (int i = 0; i < DPL; i++)
        {
            int d = lane + WARP * i;
            if (d < D) p.out[bl_hd(p, b, h, row, d)] = f2bf(acc[r][i] * inv);
        }
        if (lane == 0) p.lse[(i64)bh * L + row] = m[r] + logf(l[r]);
    }
}

// drow[b, h, l] = sum_d dout[b, l, h, d] * o[b, l, h, d].
extern "C" __global__ void attention_backward_preprocess(AttnParams p)
{
    i64 row = (i64)blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;   // over (b, h, l)
    int lane = threadIdx.x % WARP;
    if (row >= (i64)p.B * p.H * p.L) return;
    int l = (int)(row % p.L);
    int bh = (int)(row / p.L), b = bh / p.H, h = bh % p.H;
    float s = 0.0f;
    for (int d = lane; d < p.D; d += WARP)
    {
        i64 o = bl_hd(p, b, h, l, d);
        s += bf2f(p.dout[o]) * bf2f(p.o[o]);
    }
    s = warp_sum(s);
    if (lane == 0) p.drow[row] = s;
}

// dq[row] = scale * sum_j P_ij (dP_ij - drow_i) k_j: one warp per query row, 32 keys per tile.
extern "C" __global__ void __launch_bounds__(256) attention_backward_dq(AttnParams p)
{
    __shared__ float ks[KT][PADD];
    __shared__ float vs[KT][PADD];
    __shared__ float qs[NWARPS][MAXD];
    __shared__ float dos[NWARPS][MAXD];
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    const int bh = blockIdx.y, b = bh / p.H, h = bh % p.H, D = p.D, L = p.L;
    const i64 base = (i64)bh * L * D;
    const int row = blockIdx.x * NWARPS + warp;
    const bool row_ok = row < L;

    for (int d = lane; d < D; d += WARP)
    {
        qs[warp][d] = row_ok ? bf2f(p.q[base + (i64)row * D + d]) : 0.0f;
        dos[warp][d] = row_ok ? bf2f(p.dout[bl_hd(p, b, h, row, d)]) : 0.0f;
    }
    const float lse = row_ok ? p.lse[(i64)bh * L + row] : 0.0f;
    const float dr = row_ok ? p.drow[(i64)bh * L + row] : 0.0f;
    float acc[DPL];
    for (int i = 0; i < DPL; i++) acc[i] = 0.0f;

    for (int j0 = 0; j0 < L; j0 += KT)
    {
        __syncthreads();
        for (int e = threadIdx.x; e < KT * D; e += blockDim.x)
        {
            int j = e / D, d = e % D, key = j0 + j;
            ks[j][d] = key < L ? bf2f(p.k[base + (i64)key * D + d]) : 0.0f;
            vs[j][d] = key < L ? bf2f(p.v[base + (i64)key * D + d]) : 0.0f;
        }
        __syncthreads();

        float s = 0.0f, dp = 0.0f;
        for (int d = 0; d < D; d++)
        {
            s += qs[warp][d] * ks[lane][d];
            dp += dos[warp][d] * vs[lane][d];
        }
        float pr = j0 + lane < L ? expf(s * p.scale - lse) : 0.0f;
        float ds = pr * (dp - dr);
        for (int j = 0; j < KT; j++)
        {
            float dsj = __shfl_sync(0xffffffffu, ds, j);
            for (int i = 0; i < DPL; i++)
            {
                int d = lane + WARP * i;
                if (d < D) acc[i] += dsj * ks[j][d];
            }
        }
    }
    if (!row_ok) return;
    for (int i = 0; i < DPL; i++)
    {
        int d = lane + WARP * i;
        if (d < D) p.dq[base + (i64)row * D + d] = f2bf(acc[i] * p.scale);
    }
}

// dv[key] = sum_i P_ij dout_i;  dk[key] = scale * sum_i dS_ij q_i: one warp per key row, 32 queries per tile.
extern "C" __global__ void __launch_bounds__(256) attention_backward_dkdv(AttnParams p)
{
    __shared__ float qs[KT][PADD];
    __shared__ float dos[KT][PADD];
    __shared__ float lse_t[KT], dr_t[KT];
    __shared__ float kr[NWARPS][MAXD];
    __shared__ float vr[NWARPS][MAXD];
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    const int bh = blockIdx.y, b = bh / p.H, h = bh % p.H, D = p.D, L = p.L;
    const i64 base = (i64)bh * L * D;
    const int key = blockIdx.x * NWARPS + warp;
    const bool key_ok = key < L;

    for (int d = lane; d < D; d += WARP)
    {
        kr[warp][d] = key_ok ? bf2f(p.k[base + (i64)key * D + d]) : 0.0f;
        vr[warp][d] = key_ok ? bf2f(p.v[base + (i64)key * D + d]) : 0.0f;
    }
    float dk[DPL], dv[DPL];
    for (int i = 0; i < DPL; i++) { dk[i] = 0.0f; dv[i] = 0.0f; }

    for (int i0 = 0; i0 < L; i0 += KT)
    {
        __syncthreads();
        for (int e = threadIdx.x; e < KT * D; e += blockDim.x)
        {
            int i = e / D, d = e % D, qi = i0 + i;
            qs[i][d] = qi < L ? bf2f(p.q[base + (i64)qi * D + d]) : 0.0f;
            dos[i][d] = qi < L ? bf2f(p.dout[bl_hd(p, b, h, qi, d)]) : 0.0f;
        }
        if (threadIdx.x < KT)
        {
            int qi = i0 + threadIdx.x;
            lse_t[threadIdx.x] = qi < L ? p.lse[(i64)bh * L + qi] : INFINITY;   // P = exp(s - inf) = 0 past the end
            dr_t[threadIdx.x] = qi < L ? p.drow[(i64)bh * L + qi] : 0.0f;
        }
        __syncthreads();

        float s = 0.0f, dp = 0.0f;
        for (int d = 0; d < D; d++)
        {
            s += qs[lane][d] * kr[warp][d];
            dp += dos[lane][d] * vr[warp][d];
        }
        float pr = expf(s * p.scale - lse_t[lane]);
        float ds = pr * (dp - dr_t[lane]);
        for (int i = 0; i < KT; i++)
        {
            float pi = __shfl_sync(0xffffffffu, pr, i);
            float dsi = __shfl_sync(0xffffffffu, ds, i);
            for (int c = 0; c < DPL; c++)
            {
                int d = lane + WARP * c;
                if (d < D)
                {
                    dv[c] += pi * dos[i][d];
                    dk[c] += dsi * qs[i][d];
                }
            }
        }
    }
    if (!key_ok) return;
    for (int c = 0; c < DPL; c++)
    {
        int d = lane + WARP * c;
        if (d < D)
        {
            p.dk[base + (i64)key * D + d] = f2bf(dk[c] * p.scale);
            p.dv[base + (i64)key * D + d] = f2bf(dv[c]);
        }
    }
}
