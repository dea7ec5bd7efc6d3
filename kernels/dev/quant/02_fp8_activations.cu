// 02_fp8_activations.cu: the activation side of the W8A8 forward product of an fp8 base weight (version 2
// of the Quant group's forward; version 1, quant.cu, decodes the weight to bf16 and runs a bf16 GEMM).
//   y (M, N) bf16 = s_x · s_w[n] · Σ_k q_x[m, k] · q_w[n, k] + b[n]
// q_w (N, K) are the weight's E4M3 codes with one fp32 scale s_w[n] per output row (as uploaded); q_x (M, K) are the
// activations quantised here with one per-tensor scale s_x = amax(|x|) / 448, on the device (no host sync):
//   1. fp8_amax_bf16        amax (one u32) = max over x of the bits of |x|, with atomicMax; the caller zeroes it
//                           first. For non-negative floats the u32 order is the float order, and a NaN's bits
//                           (0x7f8xxxxx with a payload, after the sign is cleared) exceed +inf's, so amax is NaN if
//                           any x is NaN, else +inf if any is infinite, else the largest magnitude.
//   2. fp8_quantize_bf16    q_x[i] = e4m3(x[i] / s_x), s_x = fp8_activation_scale(amax): amax / 448 (fp32 division),
//                           1 when amax = 0 (all zeros quantise to 0), NaN when amax is not finite (so every code
//                           is NaN and so is every output: a diverged activation stays visible as a NaN loss).
//                           The encode is round-to-nearest-even with saturation to ±448 (HalfPrecision's rule on the
//                           host, bit for bit). Element 0's thread writes s_x to scale[0] for the GEMM.
//   3. cuBLASLt FP8 GEMM    E4M3 A (q_w, op T) and B (q_x, op N), fp32 compute, B scale pointer = s_x, and either
//                           the outer-vector A scale s_w with a bf16 D and the bias epilogue (no step 4), or an fp32
//                           D = s_x · Σ q_x·q_w, followed by
//   4. fp8_scale_columns    y[m, n] = bf16(fmaf(acc[m, n], s_w[n], b[n])) (b = 0 without bias), written with =.
// Shapes: x (M·K) bf16 contiguous; q_x (M·K) bytes; acc (M, N) fp32; s_w (N) fp32; b (N) bf16 or null; y (M, N) bf16.
// Launch: all three 1-D grid-stride, block 256 (fp8_amax_bf16 reduces a block in shared memory: 8 warps).
#include "common.cuh"

#define FP8_E4M3_MAX 448.0f

// The per-tensor activation scale from amax's bits (step 2's rule).
__device__ __forceinline__ float fp8_activation_scale(unsigned int amaxBits)
{
    float amax = __uint_as_float(amaxBits);
    if (amaxBits >= 0x7f800000u) return __uint_as_float(0x7fc00000u);
    return amax > 0.0f ? __fdiv_rn(amax, FP8_E4M3_MAX) : 1.0f;
}

// fp32 -> OCP E4M3FN byte: round to nearest even, saturating; NaN -> S.1111.111 (the host's FloatToFloat8E4M3).
__device__ __forceinline__ unsigned char f_to_e4m3(float f)
{
    unsigned int bits = __float_as_uint(f), sign = (bits >> 24) & 0x80u, a = bits & 0x7fffffffu;
    if (a > 0x7f800000u) return (unsigned char)(sign | 0x7fu);
    if (a >= 0x43e00000u) return (unsigned char)(sign | 0x7eu);
    int e = (int)(a >> 23) - 127;
    if (e < -6) return (unsigned char)(sign | (unsigned int)rintf(__uint_as_float(a) * 512.0f));   // units of 2^-9
    unsigned int kept = (a & 0x7fffffu) >> 20, rest = a & 0xfffffu;
    unsigned int code = ((unsigned int)(e + 7) << 3) | kept;
    if (rest > 0x80000u || (rest == 0x80000u && (kept & 1u))) code++;
    return (unsigned char)(sign | code);
}

extern "C" __global__ void fp8_amax_bf16(unsigned int* amax, const bf16* x, i64 n)
{
    __shared__ unsigned int warpMax[32];
    unsigned int m = 0u;
    GRID_STRIDE(i, n) m = max(m, __float_as_uint(bf2f(x[i])) & 0x7fffffffu);
    for (int o = WARP / 2; o > 0; o >>= 1) m = max(m, __shfl_xor_sync(0xffffffffu, m, o));
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    if (lane == 0) warpMax[warp] = m;
    __syncthreads();
    if (warp == 0)
    {
        m = lane < (int)(blockDim.x / WARP) ? warpMax[lane] : 0u;
        for (int o = WARP / 2; o > 0; o >>= 1) m = max(m, __shfl_xor_sync(0xffffffffu, m, o));
        if (lane == 0 && m != 0u) atomicMax(amax, m);
    }
}

extern "C" __global__ void fp8_quantize_bf16(unsigned char* q, float* scale, const unsigned int* amax, const bf16* x, i64 n)
{
    float s = fp8_activation_scale(*amax);
    if (blockIdx.x == 0 && threadIdx.x == 0) scale[0] = s;
    GRID_STRIDE(i, n) q[i] = f_to_e4m3(__fdiv_rn(bf2f(x[i]), s));
}

extern "C" __global__ void fp8_scale_columns(bf16* y, const float* acc, const float* rowScale, const bf16* bias, i64 m, int n)
{
    GRID_STRIDE(i, m * n)
    {
        int j = (int)(i % n);
        y[i] = f2bf(fmaf(acc[i], rowScale[j], bias != nullptr ? bf2f(bias[j]) : 0.0f));
    }
}
