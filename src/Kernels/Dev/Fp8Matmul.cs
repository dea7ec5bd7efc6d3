using static MetaLoraNative.Kernels.Native.CublasLt;

namespace MetaLoraNative.Kernels;

/// <summary>How a W8A8 product runs on CUDA (<see cref="Fp8Matmul.Choose"/>).</summary>
public enum Fp8GemmMode
{
    /// <summary>Today's W8A16 path: the weight decoded to bf16, then the bf16 GEMM (quant.cu).</summary>
    Dequantize,
    /// <summary>cuBLASLt FP8 with fp32 D = s_x·Σ q_x·q_w, then fp8_scale_columns applies s_w[n] and the bias.</summary>
    ScaleEpilogue,
    /// <summary>cuBLASLt FP8 with s_w as A's outer-vector scale, bf16 D and the bias epilogue: one launch.</summary>
    OuterVector,
}

/// <summary>
/// The cuBLASLt descriptor of one W8A8 product, as cuBLASLt sees it (column-major: its A is our weight, its B our
/// activations, its D is yᵀ). FP8 needs TN: A transposed, B not.
/// </summary>
public sealed record Fp8GemmDescriptor(Fp8GemmMode Mode, int TypeA, int TypeB, int TypeD, int OpA, int OpB, int AScaleMode, int BScaleMode,
                                       bool BiasEpilogue, bool ScaleKernel, long Rows, long Cols, long Inner);

/// <summary>The choice with its reason (logged once when it is <see cref="Fp8GemmMode.Dequantize"/>).</summary>
public sealed record Fp8GemmChoice(Fp8GemmMode Mode, string Reason);

/// <summary>
/// Which W8A8 route a device and cuBLASLt allow, as pure logic (tested without a GPU). FP8 tensor cores are sm_89
/// (Ada) and sm_90 (Hopper) and later; cuBLASLt's FP8 matmul wants E4M3 A and B in TN layout with K and the leading
/// dimensions multiples of 16 (16 bytes at one byte each) and D's leading dimension 16-byte aligned. The outer-vector
/// scale mode (one fp32 per row of op(A): our s_w[n]) is cuBLASLt 12.9's; it is tried first on sm_90+, and a plan
/// whose heuristic answers nothing falls to <see cref="Fp8GemmMode.ScaleEpilogue"/>, then to
/// <see cref="Fp8GemmMode.Dequantize"/> (the launcher does that; this only says what may be tried first).
/// </summary>
public static class Fp8Matmul
{
    /// <summary>cublasLtGetVersion of 12.9.0 (major·10000 + minor·100 + patch).</summary>
    public const long OuterVectorVersion = 120900;

    public static Fp8GemmChoice Choose(int ccMajor, int ccMinor, long cublasLtVersion, long m, long n, long k, bool bf16Input)
    {
        if (ccMajor * 10 + ccMinor < 89)
            return new(Fp8GemmMode.Dequantize, $"compute capability {ccMajor}.{ccMinor} has no FP8 tensor cores (sm_89+)");
        if (!bf16Input)
            return new(Fp8GemmMode.Dequantize, "the activations are not bf16 (the quantise kernel reads bf16)");
        if (k % 16 != 0 || n % 16 != 0)
            return new(Fp8GemmMode.Dequantize, $"d_in {k} and d_out {n} must be multiples of 16 for cuBLASLt's FP8 matmul");
        if (m == 0 || n == 0 || k == 0)
            return new(Fp8GemmMode.Dequantize, "an empty product");
        if (ccMajor >= 9 && cublasLtVersion >= OuterVectorVersion)
            return new(Fp8GemmMode.OuterVector, $"cuBLASLt {cublasLtVersion} has the outer-vector scale mode");
        return new(Fp8GemmMode.ScaleEpilogue, cublasLtVersion < OuterVectorVersion
            ? $"cuBLASLt {cublasLtVersion} predates the outer-vector scale mode (12.9): fp32 D, then the column-scale kernel"
            : $"compute capability {ccMajor}.{ccMinor}: fp32 D, then the column-scale kernel");
    }

    /// <summary>
    /// The descriptor of y (m, n) = x (m, k)·Wᵀ for W (n, k) in <paramref name="mode"/>: cuBLASLt's A = W seen
    /// column-major (k × n, ld k) with op T, its B = x (k × m, ld k) with op N, its D = yᵀ (n × m, ld n).
    /// </summary>
    public static Fp8GemmDescriptor Describe(Fp8GemmMode mode, long m, long n, long k, bool bias)
    {
        if (mode == Fp8GemmMode.Dequantize) throw new ArgumentException("the dequantise path runs no FP8 GEMM", nameof(mode));
        bool outer = mode == Fp8GemmMode.OuterVector;
        return new(mode, CUDA_R_8F_E4M3, CUDA_R_8F_E4M3, outer ? CUDA_R_16BF : CUDA_R_32F, CUBLAS_OP_T, CUBLAS_OP_N,
                   outer ? CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F : CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F,
                   CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F, BiasEpilogue: outer && bias, ScaleKernel: !outer, n, m, k);
    }
}
