using MetaLoraNative.Engine;
using MetaLoraNative.Kernels.Native;
using static MetaLoraNative.Kernels.Native.CublasLt;

namespace MetaLoraNative.Kernels;

// GEMMs through cuBLASLt. cuBLASLt is column-major; a row-major matrix X (r × c) is, to it, Xᵀ (c × r, ld c).
// So the row-major product C = op(A)·op(B) is computed as the column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: cuBLASLt's "A" is our
// b with our transB, its "B" is our a with our transA, and its output is (N × M, ld N). The bias epilogue adds a
// vector along cuBLASLt's rows, i.e. along our N = d_out: exactly Linear's bias.
// Descriptors, layouts and the heuristic's algorithm are cached per problem (shape, types, transposes, epilogue).
public sealed partial class CudaBackend
{
    const long WorkspaceBytes = 32L << 20;   // what NVIDIA recommends for Hopper
    readonly ulong workspace;
    readonly Dictionary<GemmKey, GemmPlan> gemmPlans = [];

    readonly record struct GemmKey(int TypeAB, int TypeC, bool TransA, bool TransB, long M, long N, long K, bool Bias);

    sealed class GemmPlan
    {
        public IntPtr Desc, LayoutA, LayoutB, LayoutC;
        public cublasLtMatmulAlgo_t Algo;
        public bool HasAlgo;
    }

    public void Gemm(Tensor a, bool transA, Tensor b, bool transB, Tensor c, float alpha = 1f, float beta = 0f)
    {
        using var _ = Op("gemm");
        Matmul(T(a, "a"), transA, T(b, "b"), transB, T(c, "c"), alpha, beta, null);
    }

    public Tensor Linear(Tensor x, Tensor w, Tensor? bias)
    {
        using var _ = Op("linear");
        var cx = T(x, "x");
        var cw = T(w, "w");
        Shapes.Require(cw.Rank == 2 && cw.Shape[1] == cx.Cols, $"linear: x {cx} against w {cw}");
        int[] shape = (int[])cx.Shape.Clone();
        shape[^1] = cw.Shape[0];
        var y = Alloc(shape);
        if (bias != null)
        {
            Shapes.Require(bias.Length == cw.Shape[0], $"linear: bias {bias} for d_out {cw.Shape[0]}");
            using var b16 = Bf16(bias, "bias");   // the epilogue's bias has the output's type
            Matmul(cx, false, cw, true, y, 1f, 0f, b16.Tensor);
        }
        else Matmul(cx, false, cw, true, y, 1f, 0f, null);
        return y;
    }

    public Tensor LinearBackward(Tensor dy, Tensor w)
    {
        using var _ = Op("linear_backward");
        var cdy = T(dy, "dy");
        var cw = T(w, "w");
        Shapes.Require(cw.Rank == 2 && cw.Shape[0] == cdy.Cols, $"linear_backward: dy {cdy} against w {cw}");
        int[] shape = (int[])cdy.Shape.Clone();
        shape[^1] = cw.Shape[1];
        var dx = Alloc(shape);
        Matmul(cdy, false, cw, false, dx, 1f, 0f, null);
        return dx;
    }

    unsafe void Matmul(CudaTensor a, bool transA, CudaTensor b, bool transB, CudaTensor c, float alpha, float beta, CudaTensor? bias)
    {
        long m = transA ? a.Cols : a.Rows, k = transA ? a.Rows : a.Cols;
        long n = transB ? b.Rows : b.Cols, kb = transB ? b.Cols : b.Rows;
        Shapes.Require(k == kb && c.Rows == m && c.Cols == n,
            $"gemm: op(a) {m}×{k} · op(b) {kb}×{n} into c {c.Rows}×{c.Cols} (a {a}, b {b}, c {c})");
        if (m == 0 || n == 0) return;
        if (k == 0)
        {
            ScaleOrZero(c, beta);
            return;
        }

        // fp32 throughout only when everything is fp32; otherwise bf16 inputs (converted if needed).
        bool allF32 = a.Precision == Precision.Master && b.Precision == Precision.Master && c.Precision == Precision.Master && bias == null;
        using var ba = allF32 ? Borrowed<CudaTensor>.Of(a) : Bf16(a);
        using var bb = allF32 ? Borrowed<CudaTensor>.Of(b) : Bf16(b);
        int typeAB = allF32 ? CUDA_R_32F : CUDA_R_16BF;
        int typeC = c.Precision == Precision.Master ? CUDA_R_32F : CUDA_R_16BF;

        var key = new GemmKey(typeAB, typeC, transA, transB, m, n, k, bias != null);
        var plan = Plan(key, b.Cols, b.Rows, a.Cols, a.Rows);
        if (bias != null)
        {
            ulong bp = bias.Ptr;
            CudaCheck.Blas(cublasLtMatmulDescSetAttribute(plan.Desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp, sizeof(ulong)));
        }
        var algo = plan.Algo;
        CudaCheck.Blas(cublasLtMatmul(blasLt.DangerousGetHandle(), plan.Desc, &alpha, bb.Ptr, plan.LayoutA, ba.Ptr, plan.LayoutB,
            &beta, c.Ptr, plan.LayoutC, c.Ptr, plan.LayoutC, plan.HasAlgo ? &algo : null, workspace, (nuint)WorkspaceBytes, Stream));
    }

    /// <param name="bRows">cuBLASLt's A layout = our b's storage seen column-major: (b.Cols × b.Rows).</param>
    unsafe GemmPlan Plan(GemmKey key, long bRows, long bCols, long aRows, long aCols)
    {
        if (gemmPlans.TryGetValue(key, out var plan)) return plan;
        plan = new GemmPlan();
        CudaCheck.Blas(cublasLtMatmulDescCreate(out plan.Desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        int opA = key.TransB ? CUBLAS_OP_T : CUBLAS_OP_N;
        int opB = key.TransA ? CUBLAS_OP_T : CUBLAS_OP_N;
        CudaCheck.Blas(cublasLtMatmulDescSetAttribute(plan.Desc, CUBLASLT_MATMUL_DESC_TRANSA, &opA, sizeof(int)));
        CudaCheck.Blas(cublasLtMatmulDescSetAttribute(plan.Desc, CUBLASLT_MATMUL_DESC_TRANSB, &opB, sizeof(int)));
        if (key.Bias)
        {
            int epilogue = CUBLASLT_EPILOGUE_BIAS;
            CudaCheck.Blas(cublasLtMatmulDescSetAttribute(plan.Desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(int)));
        }
        CudaCheck.Blas(cublasLtMatrixLayoutCreate(out plan.LayoutA, key.TypeAB, (ulong)bRows, (ulong)bCols, bRows));
        CudaCheck.Blas(cublasLtMatrixLayoutCreate(out plan.LayoutB, key.TypeAB, (ulong)aRows, (ulong)aCols, aRows));
        CudaCheck.Blas(cublasLtMatrixLayoutCreate(out plan.LayoutC, key.TypeC, (ulong)key.N, (ulong)key.M, key.N));

        CudaCheck.Blas(cublasLtMatmulPreferenceCreate(out IntPtr pref));
        try
        {
            ulong ws = WorkspaceBytes;
            CudaCheck.Blas(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ulong)));
            cublasLtMatmulHeuristicResult_t result;
            CudaCheck.Blas(cublasLtMatmulAlgoGetHeuristic(blasLt.DangerousGetHandle(), plan.Desc, plan.LayoutA, plan.LayoutB,
                plan.LayoutC, plan.LayoutC, pref, 1, &result, out int found));
            if (found == 0)
                throw new CudaException("cuBLASLt", 15, "no algorithm for this problem", $"cublasLtMatmulAlgoGetHeuristic({key})");
            plan.Algo = result.algo;
            plan.HasAlgo = true;
        }
        finally
        {
            cublasLtMatmulPreferenceDestroy(pref);
        }
        gemmPlans[key] = plan;
        return plan;
    }

    void ScaleOrZero(CudaTensor c, float beta)
    {
        if (beta == 0f) FillWith(c, 0f);
        else if (beta != 1f) ScaleWith(c, beta);
    }

    void DisposeGemmCache()
    {
        foreach (var p in gemmPlans.Values)
        {
            cublasLtMatrixLayoutDestroy(p.LayoutA);
            cublasLtMatrixLayoutDestroy(p.LayoutB);
            cublasLtMatrixLayoutDestroy(p.LayoutC);
            cublasLtMatmulDescDestroy(p.Desc);
        }
        gemmPlans.Clear();
    }
}
