// 02_fused.cu: qkv_norm_rope version 2, one stream's split-qkv + QK RMSNorm + RoPE in one pass, written into the joint q, k, v,
// and its backward. Replaces the engine's unfused sequence (version 1): layout.cu split_qkv, norm.cu rmsnorm_forward
// (q and k), layout.cu concat (txt and img along tokens), attention.cu rope_apply (q and k); backward rope_apply
// (sign -1), layout.cu narrow (dq, dk, dv per stream), norm.cu rmsnorm_backward, layout.cu merge_qkv.
//
// Shapes (B batch, H heads, D head dim, C = H*D, L this stream's tokens, LJ the joint tokens, t = b*L + l):
//   qkv    bf16, row t at qkv + t*ld, columns [0, 3C) read as "(K H D)": q = K 0, k = K 1, v = K 2. ld >= 3C is the
//          row stride of the wider matrix the rows sit in (3C for the double block's qkv, 3C + mlp for linear1).
//   q, k, v  bf16 (B, H, LJ, D) joint tensors; this stream owns tokens [start, start + L).
//   wq, wk bf16 (D) query_norm / key_norm scales.  pe fp32 (pe_batch, LJ, D/2, 2) = (cos, sin) per pair.
//   q_rstd, k_rstd fp32 (B, H, L).
// qkv_norm_rope_forward (all written with =):
//   r = rsqrt(mean_d x^2 + eps), xh = x*r*w, then per pair (x0, x1) -> (c x0 - s x1, s x0 + c x1) (ApplyRope),
//   into q/k[b, h, start + l, :]; v copied; rstd stored. Rows of q, k, v outside [start, start + L) untouched.
// qkv_norm_rope_backward (dqkv written with =; dq, dk, dv are the joint gradients AttentionBackward returns):
//   u = (c g0 + s g1, -s g0 + c g1) (the transpose rotation), dx = r*(w*u - x*r^2*mean_d(u*w*x)); dv copied.
//   dqkv row t at dqkv + t*ld_d, columns [0, 3C); the rest of each dqkv row is untouched.
// Launch (both): block 256 = 8 warps, one warp per (token, head) pair, pair = t*H + h (heads fastest, so the 8
//   warps of a block read 8 consecutive head slices of one qkv row); grid ceil(B*L*H / 8). Lanes 0-15 own q,
//   lanes 16-31 own k; lane i of a half owns the 16-byte chunks i, i + 16 (8 bf16 = 4 RoPE pairs each, so a pair
//   never straddles lanes); the RMS sums reduce inside the half-warp (shuffle xor 8, 4, 2, 1). The v copy is
//   split over all 32 lanes: 16-byte chunk c (or, without vec, element d) by lane c % 32 (d % 32).
//   vec = 1 (host-checked: D % 8 == 0, D <= 256, every base pointer and row stride a multiple of 16 bytes) takes
//   16-byte loads and stores (pe as two float4 per chunk); vec = 0 the same ownership element pair by element pair.
// Index arithmetic is 32-bit: the host checks that every element index of every operand fits in an int.
// fp32 math throughout; each output is rounded to bf16 once.
#include "common.cuh"

#define QNR_WARPS 8
#define QNR_MAXCHUNKS 2   // 16-byte chunks per lane in the register path: D <= 16 lanes * 2 * 8 = 256

struct QkvNormRopeParams
{
    const bf16* qkv;      // row t at qkv + t*ld
    bf16* dqkv;           // backward output, row t at dqkv + t*ld_d
    bf16* q;              // (B, H, LJ, D): forward output, backward input dq
    bf16* k;              // (B, H, LJ, D): forward output, backward input dk
    bf16* v;              // (B, H, LJ, D): forward output, backward input dv
    const bf16* wq;       // (D)
    const bf16* wk;       // (D)
    const float* pe;      // (pe_batch, LJ, D/2, 2)
    float* q_rstd;        // (B, H, L): forward output, backward input
    float* k_rstd;        // (B, H, L)
    int B, H, L, D, LJ, start, pe_batch;
    int ld, ld_d;         // row strides of qkv and dqkv, in elements
    int vec;              // 1: 16-byte chunks (see the contract), 0: element pairs
    float eps;
};
static_assert(sizeof(QkvNormRopeParams) == 128, "QkvNormRopeParams layout changed: update CudaBackend.QkvNormRopeParams");

// Where one warp's (token, head) pair reads and writes. Mirrored in C# by the kernel emulation test
// (tests/.../Kernels/QkvNormRopeEmulationTests.cs): change both together.
struct QnrIndex
{
    int t, b, l, h;
    int src;        // element offset of qkv[t, 0 * C + h * D] (add C for k, 2C for v)
    int joint;      // element offset of q/k/v[b, h, start + l, 0]
    int pe;         // float offset of pe[b or 0, start + l, 0, 0]
    int stat;       // offset of rstd[b, h, l]
};

__device__ __forceinline__ QnrIndex qnr_index(const QkvNormRopeParams& p, int pair, int ld)
{
    QnrIndex x;
    x.h = pair % p.H;
    x.t = pair / p.H;
    x.l = x.t % p.L;
    x.b = x.t / p.L;
    x.src = x.t * ld + x.h * p.D;
    x.joint = ((x.b * p.H + x.h) * p.LJ + p.start + x.l) * p.D;
    x.pe = ((p.pe_batch == 1 ? 0 : x.b) * p.LJ + p.start + x.l) * p.D;
    x.stat = (x.b * p.H + x.h) * p.L + x.l;
    return x;
}

// Sum over the 16 lanes of a half-warp (every lane of the half gets it).
__device__ __forceinline__ float half_warp_sum(float v)
{
    for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ void unpack8(uint4 u, float* f)
{
    unsigned int w[4] = {u.x, u.y, u.z, u.w};
    for (int i = 0; i < 4; i++) { f[2 * i] = bf2f((bf16)(w[i] & 0xffffu)); f[2 * i + 1] = bf2f((bf16)(w[i] >> 16)); }
}

__device__ __forceinline__ uint4 pack8(const float* f)
{
    unsigned int w[4];
    for (int i = 0; i < 4; i++) w[i] = (unsigned int)f2bf(f[2 * i]) | ((unsigned int)f2bf(f[2 * i + 1]) << 16);
    return make_uint4(w[0], w[1], w[2], w[3]);
}

// (cos, sin) of the 4 pairs of chunk c: 8 floats, 32 bytes, two float4 loads.
__device__ __forceinline__ void load_pe8(const float* pe, float* cs)
{
    float4 a = ((const float4*)pe)[0], b = ((const float4*)pe)[1];
    cs[0] = a.x; cs[1] = a.y; cs[2] = a.z; cs[3] = a.w; cs[4] = b.x; cs[5] = b.y; cs[6] = b.z; cs[7] = b.w;
}

extern "C" __global__ void __launch_bounds__(QNR_WARPS * WARP) qkv_norm_rope_forward(QkvNormRopeParams p)
{
    int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    int pair = blockIdx.x * QNR_WARPS + warp;
    if (pair >= p.B * p.L * p.H) return;   // whole warps leave together, so the shuffles below see all 32 lanes
    QnrIndex ix = qnr_index(p, pair, p.ld);
    int half = lane >> 4, hl = lane & 15, C = p.H * p.D;
    const bf16* x = p.qkv + ix.src + half * C;
    const bf16* w = half ? p.wk : p.wq;
    bf16* y = (half ? p.k : p.q) + ix.joint;
    const float* pe = p.pe + ix.pe;
    if (p.vec)
    {
        int chunks = p.D / 8;
        float xs[QNR_MAXCHUNKS][8];
        float ss = 0.0f;
        for (int i = 0; i < QNR_MAXCHUNKS; i++)
        {
            int c = hl + 16 * i;
            if (c < chunks)
            {
                unpack8(((const uint4*)(x + 8 * c))[0], xs[i]);
                for (int e = 0; e < 8; e++) ss += xs[i][e] * xs[i][e];
            }
        }
        float r = rsqrtf(half_warp_sum(ss) / p.D + p.eps);
        for (int i = 0; i < QNR_MAXCHUNKS; i++)
        {
            int c = hl + 16 * i;
            if (c >= chunks) continue;
            float wf[8], cs[8], o[8];
            unpack8(((const uint4*)(w + 8 * c))[0], wf);
            load_pe8(pe + 8 * c, cs);
            for (int j = 0; j < 4; j++)
            {
                float x0 = xs[i][2 * j] * r * wf[2 * j], x1 = xs[i][2 * j + 1] * r * wf[2 * j + 1];
                float co = cs[2 * j], si = cs[2 * j + 1];
                o[2 * j] = co * x0 - si * x1;
                o[2 * j + 1] = si * x0 + co * x1;
            }
            ((uint4*)(y + 8 * c))[0] = pack8(o);
        }
        // v: chunk c of the head row by lane c % 32 (both halves), 16 bytes each
        const bf16* xv = p.qkv + ix.src + 2 * C;
        bf16* yv = p.v + ix.joint;
        for (int c = lane; c < chunks; c += WARP) ((uint4*)(yv + 8 * c))[0] = ((const uint4*)(xv + 8 * c))[0];
        if (hl == 0) (half ? p.k_rstd : p.q_rstd)[ix.stat] = r;
        return;
    }
    // element pairs: pair j of the head row by lane j % 16 of the half
    int pairs = p.D / 2;
    float ss = 0.0f;
    for (int j = hl; j < pairs; j += 16)
    {
        float x0 = bf2f(x[2 * j]), x1 = bf2f(x[2 * j + 1]);
        ss += x0 * x0 + x1 * x1;
    }
    float r = rsqrtf(half_warp_sum(ss) / p.D + p.eps);
    for (int j = hl; j < pairs; j += 16)
    {
        float x0 = bf2f(x[2 * j]) * r * bf2f(w[2 * j]), x1 = bf2f(x[2 * j + 1]) * r * bf2f(w[2 * j + 1]);
        float co = pe[2 * j], si = pe[2 * j + 1];
        y[2 * j] = f2bf(co * x0 - si * x1);
        y[2 * j + 1] = f2bf(si * x0 + co * x1);
    }
    const bf16* xv = p.qkv + ix.src + 2 * C;
    bf16* yv = p.v + ix.joint;
    for (int d = lane; d < p.D; d += WARP) yv[d] = xv[d];
    if (hl == 0) (half ? p.k_rstd : p.q_rstd)[ix.stat] = r;
}

extern "C" __global__ void __launch_bounds__(QNR_WARPS * WARP) qkv_norm_rope_backward(QkvNormRopeParams p)
{
    int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    int pair = blockIdx.x * QNR_WARPS + warp;
    if (pair >= p.B * p.L * p.H) return;
    QnrIndex ix = qnr_index(p, pair, p.ld);
    int half = lane >> 4, hl = lane & 15, C = p.H * p.D;
    int dst = ix.t * p.ld_d + ix.h * p.D;   // dqkv[t, h * D]: the same columns as src, at dqkv's row stride
    const bf16* x = p.qkv + ix.src + half * C;
    const bf16* w = half ? p.wk : p.wq;
    const bf16* g = (half ? p.k : p.q) + ix.joint;
    bf16* dx = p.dqkv + dst + half * C;
    const float* pe = p.pe + ix.pe;
    float r = (half ? p.k_rstd : p.q_rstd)[ix.stat];
    if (p.vec)
    {
        int chunks = p.D / 8;
        float us[QNR_MAXCHUNKS][8], xs[QNR_MAXCHUNKS][8], ws[QNR_MAXCHUNKS][8];
        float m = 0.0f;
        for (int i = 0; i < QNR_MAXCHUNKS; i++)
        {
            int c = hl + 16 * i;
            if (c >= chunks) continue;
            float gf[8], cs[8];
            unpack8(((const uint4*)(g + 8 * c))[0], gf);
            unpack8(((const uint4*)(x + 8 * c))[0], xs[i]);
            unpack8(((const uint4*)(w + 8 * c))[0], ws[i]);
            load_pe8(pe + 8 * c, cs);
            for (int j = 0; j < 4; j++)
            {
                float co = cs[2 * j], si = cs[2 * j + 1], g0 = gf[2 * j], g1 = gf[2 * j + 1];
                us[i][2 * j] = co * g0 + si * g1;
                us[i][2 * j + 1] = -si * g0 + co * g1;
            }
            for (int e = 0; e < 8; e++) m += us[i][e] * ws[i][e] * xs[i][e];
        }
        m = half_warp_sum(m) / p.D;
        for (int i = 0; i < QNR_MAXCHUNKS; i++)
        {
            int c = hl + 16 * i;
            if (c >= chunks) continue;
            float o[8];
            for (int e = 0; e < 8; e++) o[e] = r * (ws[i][e] * us[i][e] - xs[i][e] * r * r * m);
            ((uint4*)(dx + 8 * c))[0] = pack8(o);
        }
        const bf16* gv = p.v + ix.joint;
        bf16* dv = p.dqkv + dst + 2 * C;
        for (int c = lane; c < chunks; c += WARP) ((uint4*)(dv + 8 * c))[0] = ((const uint4*)(gv + 8 * c))[0];
        return;
    }
    int pairs = p.D / 2;
    float m = 0.0f;
    for (int j = hl; j < pairs; j += 16)
    {
        float co = pe[2 * j], si = pe[2 * j + 1], g0 = bf2f(g[2 * j]), g1 = bf2f(g[2 * j + 1]);
        float u0 = co * g0 + si * g1, u1 = -si * g0 + co * g1;
        m += u0 * bf2f(w[2 * j]) * bf2f(x[2 * j]) + u1 * bf2f(w[2 * j + 1]) * bf2f(x[2 * j + 1]);
    }
    m = half_warp_sum(m) / p.D;
    for (int j = hl; j < pairs; j += 16)
    {
        float co = pe[2 * j], si = pe[2 * j + 1], g0 = bf2f(g[2 * j]), g1 = bf2f(g[2 * j + 1]);
        float u0 = co * g0 + si * g1, u1 = -si * g0 + co * g1;
        dx[2 * j] = f2bf(r * (bf2f(w[2 * j]) * u0 - bf2f(x[2 * j]) * r * r * m));
        dx[2 * j + 1] = f2bf(r * (bf2f(w[2 * j + 1]) * u1 - bf2f(x[2 * j + 1]) * r * r * m));
    }
    const bf16* gv = p.v + ix.joint;
    bf16* dv = p.dqkv + dst + 2 * C;
    for (int d = lane; d < p.D; d += WARP) dv[d] = gv[d];
}
