// 02_strided.cu: tanh-GELU forward and backward on blocks of wider row-major matrices (the strided forms,
// IBackend.GeluTanhSlice / GeluTanhBackwardSlice). Version 01 is kernels/elementwise.cu's gelu_tanh_forward /
// gelu_tanh_backward, which read and write whole contiguous tensors; these read a block in place instead, so the
// single block's GELU reads linear1's MLP columns (row stride 3C + mlp) and writes the MLP columns of cat
// (row stride C + mlp), and its backward reads dcat's columns and writes dlin1's: no Narrow and no Concat copy.
//
// Contract: a block of rows x cols elements; each pointer is the block's first element, each ld its tensor's row
//   length in elements. bf16 storage, fp32 math (the formulas of version 01).
//   forward   out[r*ld_out + c] = gelu(x[r*ld_x + c])                          (=)
//   backward  out[r*ld_out + c] = gelu'(x[r*ld_x + c]) * dy[r*ld_dy + c]       (=)
//   Nothing outside the block is touched. Indices are 32-bit: the launcher guarantees (rows-1)*ld + cols < 2^31
//   for every operand of one launch, cutting the rows into chunks (pointers advanced) when a block is larger.
// Two forms each:
//   *_v8: 8 bf16 (16 bytes, one uint4) per thread and operand; needs cols, every ld and every pointer's element
//         offset multiples of 8 (16-byte aligned rows). Thread v (grid-stride) owns vector v of the block:
//         row v / (cols/8), columns 8·(v % (cols/8)) .. +7.
//   scalar: one element per thread, any alignment (the fallback the launcher picks otherwise).
// Launch: 1-D, block 256, grid ceil(work/256) capped at 65536, grid-stride loops (work = rows*cols/8 or rows*cols).
#include "common.cuh"
#include "gelu.cuh"

// A packed pair of bf16 (element 2j in the low half, 2j+1 in the high half: little-endian) to and from fp32.
__device__ __forceinline__ float lo_f(unsigned int u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float hi_f(unsigned int u) { return __uint_as_float(u & 0xffff0000u); }
__device__ __forceinline__ unsigned int pack2(float lo, float hi)
{
    return (unsigned int)f2bf(lo) | ((unsigned int)f2bf(hi) << 16);
}

extern "C" __global__ void gelu_tanh_forward_strided_v8(bf16* out, int ld_out, const bf16* x, int ld_x, int rows, int cols)
{
    const unsigned int per_row = (unsigned int)cols >> 3;
    const unsigned int n = (unsigned int)rows * per_row;
    for (unsigned int v = blockIdx.x * blockDim.x + threadIdx.x; v < n; v += gridDim.x * blockDim.x)
    {
        unsigned int r = v / per_row, c = (v - r * per_row) << 3;
        uint4 a = *reinterpret_cast<const uint4*>(x + (r * (unsigned int)ld_x + c));
        uint4 o;
        o.x = pack2(gelu_tanh_f(lo_f(a.x)), gelu_tanh_f(hi_f(a.x)));
        o.y = pack2(gelu_tanh_f(lo_f(a.y)), gelu_tanh_f(hi_f(a.y)));
        o.z = pack2(gelu_tanh_f(lo_f(a.z)), gelu_tanh_f(hi_f(a.z)));
        o.w = pack2(gelu_tanh_f(lo_f(a.w)), gelu_tanh_f(hi_f(a.w)));
        *reinterpret_cast<uint4*>(out + (r * (unsigned int)ld_out + c)) = o;
    }
}

extern "C" __global__ void gelu_tanh_backward_strided_v8(bf16* out, int ld_out, const bf16* x, int ld_x,
                                                         const bf16* dy, int ld_dy, int rows, int cols)
{
    const unsigned int per_row = (unsigned int)cols >> 3;
    const unsigned int n = (unsigned int)rows * per_row;
    for (unsigned int v = blockIdx.x * blockDim.x + threadIdx.x; v < n; v += gridDim.x * blockDim.x)
    {
        unsigned int r = v / per_row, c = (v - r * per_row) << 3;
        uint4 a = *reinterpret_cast<const uint4*>(x + (r * (unsigned int)ld_x + c));
        uint4 g = *reinterpret_cast<const uint4*>(dy + (r * (unsigned int)ld_dy + c));
        uint4 o;
        o.x = pack2(gelu_tanh_grad_f(lo_f(a.x)) * lo_f(g.x), gelu_tanh_grad_f(hi_f(a.x)) * hi_f(g.x));
        o.y = pack2(gelu_tanh_grad_f(lo_f(a.y)) * lo_f(g.y), gelu_tanh_grad_f(hi_f(a.y)) * hi_f(g.y));
        o.z = pack2(gelu_tanh_grad_f(lo_f(a.z)) * lo_f(g.z), gelu_tanh_grad_f(hi_f(a.z)) * hi_f(g.z));
        o.w = pack2(gelu_tanh_grad_f(lo_f(a.w)) * lo_f(g.w), gelu_tanh_grad_f(hi_f(a.w)) * hi_f(g.w));
        *reinterpret_cast<uint4*>(out + (r * (unsigned int)ld_out + c)) = o;
    }
}

extern "C" __global__ void gelu_tanh_forward_strided(bf16* out, int ld_out, const bf16* x, int ld_x, int rows, int cols)
{
    const unsigned int n = (unsigned int)rows * (unsigned int)cols;
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    {
        unsigned int r = i / (unsigned int)cols, c = i - r * (unsigned int)cols;
        out[r * (unsigned int)ld_out + c] = f2bf(gelu_tanh_f(bf2f(x[r * (unsigned int)ld_x + c])));
    }
}

extern "C" __global__ void gelu_tanh_backward_strided(bf16* out, int ld_out, const bf16* x, int ld_x,
                                                      const bf16* dy, int ld_dy, int rows, int cols)
{
    const unsigned int n = (unsigned int)rows * (unsigned int)cols;
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    {
        unsigned int r = i / (unsigned int)cols, c = i - r * (unsigned int)cols;
        float g = bf2f(dy[r * (unsigned int)ld_dy + c]);
        out[r * (unsigned int)ld_out + c] = f2bf(gelu_tanh_grad_f(bf2f(x[r * (unsigned int)ld_x + c])) * g);
    }
}
