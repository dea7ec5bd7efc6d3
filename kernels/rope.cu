// rope.cu: rotary position embedding on adjacent channel pairs (FLUX's interleaved layout).
// rope_table:  ids (B, L, n_axes) in either precision (dt_ids) -> pe (B, L, D/2, 2) fp32 = (cos, sin) per pair.
//              Pair j belongs to the axis whose range of dims[a]/2 pairs contains it (axes in order); with k its
//              index inside that axis, angle = id[b, l, a] * theta^(-2k / dims[a]), computed in fp64, stored in fp32.
// rope_apply:  x (B, H, L, D) bf16, pe fp32 -> out bf16 (written with =):
//              sign = +1: (x0, x1) -> (cos x0 - sin x1, sin x0 + cos x1);  sign = -1: the transpose (the backward).
// Launch: 1-D grid-stride, block 256; table over B*L*D/2 pairs, apply over B*H*L*D/2 pairs.
#include "common.cuh"

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
