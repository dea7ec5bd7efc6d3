using MetaLoraNative.Engine;
using MetaLoraNative.Kernels.Native;
using static MetaLoraNative.Kernels.Native.CublasLt;

namespace MetaLoraNative.Kernels;

// GEMMs: GemmRouting sends each product to cuBLASLt or to our kernels in kernels/gemm.cu (M or N = 1, K ≤ 16,
// min(M, N) ≤ 16, or an operand off the 16-byte rule: docs/GPU.md, "Skinny GEMMs"). Our kernels read bf16 and
// fp32 operands as they are; cuBLASLt gets fp32 operands of a mixed product converted to bf16 (the same values:
// gemm.cu rounds them as it loads).
//
// cuBLASLt is column-major; a row-major matrix X (r × c) is, to it, Xᵀ (c × r, ld c). So the row-major product
// C = op(A)·op(B) is computed as the column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: cuBLASLt's "A" is our b with our transB, its
// "B" is our a with our transA, and its output is (N × M, ld N). The bias epilogue adds a vector along cuBLASLt's
// rows, i.e. along our N = d_out: exactly Linear's bias. Descriptors, layouts and up to 8 heuristic candidates are
// cached per problem (shape, types, transposes, epilogue, pointer alignments); a candidate that answers
// NOT_SUPPORTED is skipped from then on, and when none runs with the bias epilogue the product runs without it
// and bias_add follows. GemmSlice runs the same code on blocks of wider matrices: a block is a pointer offset and the
// tensor's row length as its leading dimension (cuBLASLt's layout ld, our kernels' element strides), so a product
// writes straight into a column slice of y and reads dyₛ in place.
public sealed partial class CudaBackend
{
    const long WorkspaceBytes = 32L << 20;   // what NVIDIA recommends for Hopper; also our split-K scratch
    const int GemmCandidates = 8;
    readonly ulong workspace;
    readonly Dictionary<GemmKey, GemmPlan> gemmPlans = [];

    /// <param name="Epilogue">0: the bias epilogue when Bias, else none; otherwise a GELU epilogue (Dev/CudaBackend.GeluFusion.cs)
    /// with its aux matrix's ld and pointer alignment.</param>
    readonly record struct GemmKey(int TypeAB, int TypeC, bool TransA, bool TransB, long M, long N, long K, bool Bias,
                                   long Lda, long Ldb, long Ldc, int AlignA, int AlignB, int AlignC,
                                   int Epilogue = 0, long AuxLd = 0, int AlignAux = 0);

    /// <summary>One GEMM operand: a block (Rows × Cols) of a tensor seen as a row-major matrix, leading dimension Ld.</summary>
    readonly record struct Operand(CudaTensor Tensor, long Offset, long Rows, long Cols, long Ld)
    {
        public static Operand Whole(CudaTensor t) => new(t, 0, t.Rows, t.Cols, t.Cols);
        public ulong Ptr => Tensor.Ptr + (ulong)(Offset * Tensor.ElementSize);
        public int ElementSize => Tensor.ElementSize;
        public bool IsWhole => Offset == 0 && Rows == Tensor.Rows && Cols == Tensor.Cols;
        /// <summary>The same block of another tensor of the same shape (a precision-converted copy).</summary>
        public Operand Of(CudaTensor t) => this with { Tensor = t };
        public override string ToString() => IsWhole ? Tensor.ToString() : $"{Rows}×{Cols} at +{Offset} (ld {Ld}) of {Tensor}";
    }

    sealed class GemmPlan
    {
        public IntPtr Desc, LayoutA, LayoutB, LayoutC;
        public cublasLtMatmulAlgo_t[] Candidates = [];   // the heuristic's answers, best first
        public int Next;                                 // first candidate not yet seen to answer NOT_SUPPORTED
        public int HeuristicStatus;
    }

    public void Gemm(Tensor a, bool transA, Tensor b, bool transB, Tensor c, float alpha = 1f, float beta = 0f)
    {
        using var _ = Op("gemm");
        Matmul("gemm", Operand.Whole(T(a, "a")), transA, Operand.Whole(T(b, "b")), transB, Operand.Whole(T(c, "c")), alpha, beta, null);
    }

    public void GemmSlice(MatrixSlice a, bool transA, MatrixSlice b, bool transB, MatrixSlice c, float alpha = 1f, float beta = 0f)
    {
        using var _ = Op("gemm_slice");
        a.Check("gemm_slice", "a");
        b.Check("gemm_slice", "b");
        c.Check("gemm_slice", "c");
        Matmul("gemm_slice", OperandOf(a, "a"), transA, OperandOf(b, "b"), transB, OperandOf(c, "c"), alpha, beta, null);
    }

    /// <summary>
    /// The entries of a GemmGroup: with <see cref="GroupedGemm"/> the fp32 ones in one launch of version 2
    /// (kernels/dev/gemm/02_grouped.cu, src/Kernels/Dev/CudaBackend.GemmGrouped.cs); otherwise each entry as GemmSlice runs it.
    /// </summary>
    public void GemmGroup(IReadOnlyList<GemmEntry> entries)
    {
        using var _ = Op("gemm_group");
        var ops = new (Operand A, bool TransA, Operand B, bool TransB, Operand C, float Alpha, float Beta)[entries.Count];
        for (int i = 0; i < entries.Count; i++)
        {
            var e = entries[i];
            e.A.Check("gemm_group", "a");
            e.B.Check("gemm_group", "b");
            e.C.Check("gemm_group", "c");
            var (m, n, k) = e.Dims;
            long kb = e.TransB ? e.B.Columns : e.B.Rows;
            Shapes.Require(k == kb && e.C.Rows == m && e.C.Columns == n, $"gemm_group: entry {i}: op(a) {m}×{k} · op(b) {kb}×{n} into c {e.C.Rows}×{e.C.Columns}");
            ops[i] = (OperandOf(e.A, "a"), e.TransA, OperandOf(e.B, "b"), e.TransB, OperandOf(e.C, "c"), e.Alpha, e.Beta);
        }
        if (GroupedGemm)
        {
            GemmGroupGrouped("gemm_group", ops);
            return;
        }
        foreach (var o in ops) Matmul("gemm_group", o.A, o.TransA, o.B, o.TransB, o.C, o.Alpha, o.Beta, null);
    }

    /// <summary>
    /// dU += dyᵀ·a and dmid = dy·u (IBackend.LoraUpBackward): with <see cref="LoraUpBackwardKernel"/> and what version 2
    /// takes (r2 ≤ 4, bf16 dy, a and dmid, fp32 u and dU: Dev/CudaBackend.LoraUpBackward.cs) one pass over dy;
    /// otherwise (the default) the two routed GEMMs GemmSlice runs.
    /// </summary>
    public void LoraUpBackward(MatrixSlice dy, Tensor u, MatrixSlice? a, Tensor? dU, MatrixSlice dmid)
    {
        using var _ = Op("lora_up_backward");
        dy.Check("lora_up_backward", "dy");
        dmid.Check("lora_up_backward", "dmid");
        a?.Check("lora_up_backward", "a");
        Shapes.Require(a.HasValue == (dU != null), "lora_up_backward: a and dU are given together or not at all");
        Shapes.Require(u.Rank == 2 && u.Rows == dy.Columns && dmid.Rows == dy.Rows && dmid.Columns == u.Cols &&
                       (a is not { } s || s.Rows == dy.Rows && s.Columns == u.Cols && dU!.Shape.SequenceEqual(u.Shape)),
                       $"lora_up_backward: dy {dy}, u {u}, a {a?.ToString() ?? "null"}, dU {dU?.ToString() ?? "null"}, dmid {dmid}");
        if (LoraUpBackwardKernel && LoraUpBackwardOnePass(dy, u, a, dU, dmid)) return;
        if (a is { } aa) Matmul("lora_up_backward", OperandOf(dy, "dy"), true, OperandOf(aa, "a"), false, Operand.Whole(T(dU!, "dU")), 1f, 1f, null);   // dU += dyᵀ·a
        Matmul("lora_up_backward", OperandOf(dy, "dy"), false, Operand.Whole(T(u, "u")), false, OperandOf(dmid, "dmid"), 1f, 0f, null);           // dmid = dy·u
    }

    Operand OperandOf(MatrixSlice s, string what) => Slice(T(s.Tensor, what), s);

    static Operand Slice(CudaTensor t, MatrixSlice s) => new(t, s.Offset, s.Rows, s.Columns, s.Tensor.Cols);

    /// <summary>A GemmSlice product as GemmRouting sees it (the parity check confirms the route of each of its cases).</summary>
    internal static GemmProblem Describe(MatrixSlice a, bool transA, MatrixSlice b, bool transB, MatrixSlice c) =>
        Describe(Slice((CudaTensor)a.Tensor, a), transA, Slice((CudaTensor)b.Tensor, b), transB, Slice((CudaTensor)c.Tensor, c));

    public Tensor Linear(Tensor x, Tensor w, Tensor? bias)
    {
        using var _ = Op("linear");
        var cx = T(x, "x");
        var cw = T(w, "w");
        Shapes.Require(cw.Rank == 2 && cw.Shape[1] == cx.Cols, $"linear: x {cx} against w {cw}");
        int[] shape = (int[])cx.Shape.Clone();
        shape[^1] = cw.Shape[0];
        var y = Alloc(shape);
        if (bias != null) Shapes.Require(bias.Length == cw.Shape[0], $"linear: bias {bias} for d_out {cw.Shape[0]}");
        Matmul("linear", Operand.Whole(cx), false, Operand.Whole(cw), true, Operand.Whole(y), 1f, 0f, bias == null ? null : T(bias, "bias"));
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
        Matmul("linear_backward", Operand.Whole(cdy), false, Operand.Whole(cw), false, Operand.Whole(dx), 1f, 0f, null);
        return dx;
    }

    /// <summary>c = alpha·op(a)·op(b) + beta·c (+ bias along c's columns, converted to c's precision).</summary>
    void Matmul(string op, Operand a, bool transA, Operand b, bool transB, Operand c, float alpha, float beta, CudaTensor? bias)
    {
        long m = transA ? a.Cols : a.Rows, k = transA ? a.Rows : a.Cols;
        long n = transB ? b.Rows : b.Cols, kb = transB ? b.Cols : b.Rows;
        Shapes.Require(k == kb && c.Rows == m && c.Cols == n,
            $"{op}: op(a) {m}×{k} · op(b) {kb}×{n} into c {c.Rows}×{c.Cols} (a {a}, b {b}, c {c})");
        if (m == 0 || n == 0) return;
        Borrowed<CudaTensor>? biasC = bias == null ? null : c.Tensor.Precision == Precision.Master ? F32(bias, "bias") : Bf16(bias, "bias");
        try
        {
            ulong biasPtr = biasC?.Ptr ?? 0;
            if (k == 0)
            {
                // an empty reduction scales c; only a whole c can be scaled by the elementwise ops
                Shapes.Require(c.IsWhole, $"{op}: k = 0 into a block of c ({c}) is not supported");
                ScaleOrZero(c.Tensor, beta);
                if (biasC is { } bc) AddBias(c.Tensor, bc.Tensor, m, n);
                return;
            }
            var problem = Describe(a, transA, b, transB, c);
            var route = GemmRouting.Route(problem).Route;
            Counted.Gemm(route.ToString().ToLowerInvariant());
            if (route != GemmRoute.CublasLt)
            {
                var launch = GemmRouting.Plan(problem, route, a.Ptr, b.Ptr, c.Ptr, biasPtr, alpha, beta, workspace, WorkspaceBytes,
                                              4 * Device.Multiprocessors);
                LaunchParams("gemm.cu", launch.Kernel, launch.Grid, launch.Block, launch.Params);
                if (launch.Finish != null) LaunchParams("gemm.cu", launch.Finish, launch.FinishGrid, (Block, 1, 1), launch.Params);
                return;
            }
            CublasMatmul(op, problem, a, b, c, alpha, beta, biasC?.Tensor);
        }
        finally
        {
            biasC?.Dispose();
        }
    }

    /// <summary>The product c = op(a)·op(b) as GemmRouting sees it (shapes already checked).</summary>
    internal static GemmProblem Describe(CudaTensor a, bool transA, CudaTensor b, bool transB, CudaTensor c) =>
        Describe(Operand.Whole(a), transA, Operand.Whole(b), transB, Operand.Whole(c));

    static GemmProblem Describe(Operand a, bool transA, Operand b, bool transB, Operand c)
    {
        bool allF32 = a.ElementSize == 4 && b.ElementSize == 4 && c.ElementSize == 4;
        return new(transA ? a.Cols : a.Rows, transB ? b.Rows : b.Cols, transA ? a.Rows : a.Cols, transA, transB, a.Ld, b.Ld, c.Ld,
                   a.ElementSize, b.ElementSize, c.ElementSize, InputAlignment(a, allF32), InputAlignment(b, allF32), GemmRouting.Alignment(c.Ptr));
    }

    /// <summary>
    /// An input's alignment as the routing must see it: the fp32 side of a mixed product reaches cuBLASLt as a bf16
    /// copy (a fresh, 256-byte aligned tensor) whose block starts offset·2 bytes in, so the lower of the two counts.
    /// (Our kernels read the fp32 block itself; the lower figure only ever turns their 16-byte loads off.)
    /// </summary>
    static int InputAlignment(Operand o, bool allF32) =>
        allF32 || o.ElementSize == 2 ? GemmRouting.Alignment(o.Ptr)
            : Math.Min(GemmRouting.Alignment(o.Ptr), GemmRouting.Alignment((ulong)(o.Offset * 2)));

    void CublasMatmul(string op, in GemmProblem problem, Operand a, Operand b, Operand c, float alpha, float beta, CudaTensor? bias)
    {
        // fp32 throughout only when everything is fp32; otherwise bf16 inputs (cuBLASLt needs A and B of one type).
        // A block's copy is the whole tensor converted: the block sits at the same offset in it.
        using var ta = problem.AllF32 ? Borrowed<CudaTensor>.Of(a.Tensor) : Bf16(a.Tensor);
        using var tb = problem.AllF32 ? Borrowed<CudaTensor>.Of(b.Tensor) : Bf16(b.Tensor);
        Operand ba = a.Of(ta.Tensor), bb = b.Of(tb.Tensor);
        int typeAB = problem.AllF32 ? CUDA_R_32F : CUDA_R_16BF;
        int typeC = c.Tensor.Precision == Precision.Master ? CUDA_R_32F : CUDA_R_16BF;
        var key = new GemmKey(typeAB, typeC, problem.TransA, problem.TransB, problem.M, problem.N, problem.K, bias != null,
                              a.Ld, b.Ld, c.Ld, GemmRouting.Alignment(ba.Ptr), GemmRouting.Alignment(bb.Ptr), GemmRouting.Alignment(c.Ptr));
        var plan = Plan(key, b.Cols, b.Rows, a.Cols, a.Rows);
        if (TryMatmul(op, problem, plan, ba.Ptr, bb.Ptr, c.Ptr, alpha, beta, bias?.Ptr ?? 0)) return;
        var plain = plan;
        if (bias != null)
        {
            plain = Plan(key with { Bias = false }, b.Cols, b.Rows, a.Cols, a.Rows);
            if (TryMatmul(op, problem, plain, ba.Ptr, bb.Ptr, c.Ptr, alpha, beta, 0))
            {
                AddBias(c.Tensor, bias, problem.M, problem.N);
                return;
            }
        }
        int status = plain.HeuristicStatus != CUBLAS_STATUS_SUCCESS ? plain.HeuristicStatus : CUBLAS_STATUS_NOT_SUPPORTED;
        throw new CudaException("cuBLASLt", status, ErrorString(status),
            $"{op} ({problem}{(bias != null ? ", bias" : "")}; cuBLASLt types {(problem.AllF32 ? "f32" : "bf16")}→{(typeC == CUDA_R_32F ? "f32" : "bf16")}): " +
            $"no algorithm ran ({plan.Candidates.Length} heuristic candidates{(bias != null ? $" with the bias epilogue, {plain.Candidates.Length} without" : "")})");
    }

    /// <summary>
    /// Runs the first candidate that does not answer NOT_SUPPORTED; false when none does. D is c unless
    /// <paramref name="d"/> is given; <paramref name="aux"/> is a GELU epilogue's aux matrix.
    /// </summary>
    unsafe bool TryMatmul(string op, in GemmProblem problem, GemmPlan plan, ulong a, ulong b, ulong c, float alpha, float beta, ulong bias,
                          ulong d = 0, ulong aux = 0)
    {
        if (d == 0) d = c;
        if (bias != 0) CudaCheck.Blas(cublasLtMatmulDescSetAttribute(plan.Desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(ulong)));
        if (aux != 0) CudaCheck.Blas(cublasLtMatmulDescSetAttribute(plan.Desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof(ulong)));
        for (; plan.Next < plan.Candidates.Length; plan.Next++)
        {
            var algo = plan.Candidates[plan.Next];
            int status = cublasLtMatmul(blasLt.DangerousGetHandle(), plan.Desc, &alpha, b, plan.LayoutA, a, plan.LayoutB,
                                        &beta, c, plan.LayoutC, d, plan.LayoutC, &algo, workspace, (nuint)WorkspaceBytes, Stream);
            if (status == CUBLAS_STATUS_SUCCESS) return true;
            if (status != CUBLAS_STATUS_NOT_SUPPORTED)
                throw new CudaException("cuBLASLt", status, ErrorString(status), $"{op}: cublasLtMatmul({problem}), candidate {plan.Next}");
        }
        return false;
    }

    /// <param name="bRows">cuBLASLt's A layout = our b's block seen column-major: (b.Cols × b.Rows), ld key.Ldb.</param>
    /// <param name="aux">A GELU epilogue's aux pointer: the heuristic reads its alignment from it.</param>
    unsafe GemmPlan Plan(GemmKey key, long bRows, long bCols, long aRows, long aCols, ulong aux = 0)
    {
        if (gemmPlans.TryGetValue(key, out var plan)) return plan;
        plan = new GemmPlan();
        CudaCheck.Blas(cublasLtMatmulDescCreate(out plan.Desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        int opA = key.TransB ? CUBLAS_OP_T : CUBLAS_OP_N;
        int opB = key.TransA ? CUBLAS_OP_T : CUBLAS_OP_N;
        CudaCheck.Blas(cublasLtMatmulDescSetAttribute(plan.Desc, CUBLASLT_MATMUL_DESC_TRANSA, &opA, sizeof(int)));
        CudaCheck.Blas(cublasLtMatmulDescSetAttribute(plan.Desc, CUBLASLT_MATMUL_DESC_TRANSB, &opB, sizeof(int)));
        if (key.Bias || key.Epilogue != 0)
        {
            int epilogue = key.Epilogue != 0 ? key.Epilogue : CUBLASLT_EPILOGUE_BIAS;
            CudaCheck.Blas(cublasLtMatmulDescSetAttribute(plan.Desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(int)));
        }
        if (key.AuxLd != 0)
        {
            long auxLd = key.AuxLd;
            CudaCheck.Blas(cublasLtMatmulDescSetAttribute(plan.Desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &auxLd, sizeof(long)));
            CudaCheck.Blas(cublasLtMatmulDescSetAttribute(plan.Desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof(ulong)));
        }
        CudaCheck.Blas(cublasLtMatrixLayoutCreate(out plan.LayoutA, key.TypeAB, (ulong)bRows, (ulong)bCols, key.Ldb));
        CudaCheck.Blas(cublasLtMatrixLayoutCreate(out plan.LayoutB, key.TypeAB, (ulong)aRows, (ulong)aCols, key.Lda));
        CudaCheck.Blas(cublasLtMatrixLayoutCreate(out plan.LayoutC, key.TypeC, (ulong)key.N, (ulong)key.M, key.Ldc));

        int status = QueryCandidates(plan, key.AlignA, key.AlignB, key.AlignC);
        if (status != CUBLAS_STATUS_SUCCESS && status != CUBLAS_STATUS_NOT_SUPPORTED && status != CUBLAS_STATUS_INVALID_VALUE)
            CudaCheck.Blas(status, $"cublasLtMatmulAlgoGetHeuristic({key})");
        gemmPlans[key] = plan;
        return plan;
    }

    /// <summary>
    /// Asks cuBLASLt's heuristic for up to <see cref="GemmCandidates"/> algorithms for the plan's descriptor and layouts,
    /// with the workspace limit and the real pointers' alignments (cuBLASLt's A is our b, its B our a): no candidate
    /// may assume more than they have. Fills plan.Candidates on success; returns the heuristic's status.
    /// </summary>
    unsafe int QueryCandidates(GemmPlan plan, long alignA, long alignB, long alignC)
    {
        CudaCheck.Blas(cublasLtMatmulPreferenceCreate(out IntPtr pref));
        try
        {
            ulong ws = WorkspaceBytes;
            CudaCheck.Blas(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ulong)));
            foreach (var (attr, align) in new[] { (CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, alignB), (CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, alignA),
                                                   (CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, alignC), (CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, alignC) })
            {
                uint bytes = (uint)align;
                CudaCheck.Blas(cublasLtMatmulPreferenceSetAttribute(pref, attr, &bytes, sizeof(uint)));
            }
            var results = stackalloc cublasLtMatmulHeuristicResult_t[GemmCandidates];
            int status = cublasLtMatmulAlgoGetHeuristic(blasLt.DangerousGetHandle(), plan.Desc, plan.LayoutA, plan.LayoutB,
                plan.LayoutC, plan.LayoutC, pref, GemmCandidates, results, out int found);
            plan.HeuristicStatus = status;
            if (status == CUBLAS_STATUS_SUCCESS)
            {
                plan.Candidates = new cublasLtMatmulAlgo_t[found];
                for (int i = 0; i < found; i++) plan.Candidates[i] = results[i].algo;
            }
            return status;
        }
        finally
        {
            cublasLtMatmulPreferenceDestroy(pref);
        }
    }

    /// <summary>c (m, n) += bias along the columns: the bias epilogue done apart.</summary>
    void AddBias(CudaTensor c, CudaTensor bias, long m, long n) =>
        Launch1D("gemm.cu", c.Dt == 1 ? "bias_add_f32" : "bias_add_bf16", m * n, c.Ptr, bias.Ptr, m, n);

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
