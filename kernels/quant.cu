// quant.cu: fp8 base weights (the Quant group, W8A16). A frozen linear's weight is held as OCP E4M3 codes with one
// fp32 scale per output row; before each product the backend decodes it into one bf16 scratch that every layer
// reuses, and the product is then the ordinary bf16 cuBLASLt GEMM with fp32 accumulation.
// Contract: codes (rows, cols) E4M3FN bytes, row-major (bias 7, no infinities, S.1111.111 is NaN); scale (rows)
// fp32; out (rows, cols) bf16 = f2bf(scale[j] * e4m3(codes[j, k])), written with =. The decode is exact; the product
// is one fp32 rounding, then bf16's (the host's Bf16Emulation reproduces both bit for bit).
// Launch: 1-D over rows * cols, block 256, grid capped; grid-stride loop.
#include "common.cuh"

// E4M3FN byte -> fp32, exact: subnormals are m * 2^-9, normals (1 + m/8) * 2^(e - 7), i.e. fp32 exponent e + 120.
__device__ __forceinline__ float e4m3_to_f(unsigned char c)
{
    unsigned int sign = ((unsigned int)c & 0x80u) << 24, e = ((unsigned int)c >> 3) & 0xFu, m = (unsigned int)c & 0x7u;
    float v;
    if (e == 0u) v = (float)m * 0.001953125f;
    else if (e == 15u && m == 7u) v = __uint_as_float(0x7fc00000u);
    else v = __uint_as_float(((e + 120u) << 23) | (m << 20));
    return __uint_as_float(__float_as_uint(v) | sign);
}

extern "C" __global__ void dequantize_e4m3_kernel(bf16* out, const unsigned char* codes, const float* scale, i64 rows, int cols)
{
    GRID_STRIDE(i, rows * cols) out[i] = f2bf(scale[i / cols] * e4m3_to_f(codes[i]));
}
