using static MetaLoraNative.Kernels.Native.CublasLt;

namespace MetaLoraNative.Kernels;

/// <summary>The direction of a GELU-fused product: mlp.0's forward, or mlp.2's input gradient through the GELU.</summary>
public enum GeluEpilogueKind
{
    /// <summary>pre = x·Wᵀ + b + c0, act = gelu(pre): CUBLASLT_EPILOGUE_GELU_AUX(_BIAS), pre written as the aux matrix.</summary>
    Forward,
    /// <summary>dPre = (dy·W + c0) ⊙ gelu'(pre): CUBLASLT_EPILOGUE_DGELU, pre read as the aux matrix.</summary>
    Backward,
}

/// <summary>How cuBLASLt runs a GELU-fused product: its epilogue and the aux matrix's leading dimension.</summary>
public readonly record struct GeluEpilogueSetup(int Epilogue, long AuxLd);

/// <summary>The fused form's decision for one product: the setup, or null and why the unfused ops run instead.</summary>
public readonly record struct GeluEpilogueDecision(GeluEpilogueSetup? Setup, string Reason);

/// <summary>
/// Whether a GELU-fused product (IBackend.LinearGelu / LinearBackwardGelu) can run as one cuBLASLt call: pure logic,
/// unit-tested without a GPU. cuBLASLt's GELU is the tanh approximation FLUX uses (its documentation's note on
/// GELU: 0.5x(1 + tanh(√(2/π)(x + 0.044715x³)))), applied to alpha·op(A)·op(B) + beta·C + bias, so a LoRA delta in C
/// (beta = 1) is inside the GELU as FLUX has it. The aux matrix is D's shape in cuBLASLt's column-major view, our
/// row-major (M × N) output, so its ld is N; cuBLASLt wants it a multiple of 8. Its type is left at the default,
/// D's (bf16): the documentation allows setting CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE only for fp8 outputs.
/// Refused (the unfused Linear, AddInPlace, GeluTanh sequence runs): a product GemmRouting does not send to cuBLASLt,
/// an fp32 output (the aux matrix follows D), an N off the multiple of 8, and a bias on the backward (DGELU takes
/// none; the bias is frozen anyway). At run time the caller also falls back when the heuristic offers no algorithm
/// or every candidate answers NOT_SUPPORTED. An fp8 weight (Linear.Quantized) never reaches these ops.
/// </summary>
public static class GeluEpilogue
{
    public static GeluEpilogueDecision Choose(GeluEpilogueKind kind, in GemmProblem problem, bool bias)
    {
        var route = GemmRouting.Route(problem);
        if (route.Route != GemmRoute.CublasLt)
            return new(null, $"routed to {route.Route} ({route.Reason}); the epilogue is cuBLASLt's");
        if (problem.SizeC != 2)
            return new(null, "the output is fp32; the fused form writes bf16 pre and act");
        if (problem.N % 8 != 0)
            return new(null, $"aux ld {problem.N} is not a multiple of 8");
        if (kind == GeluEpilogueKind.Backward && bias)
            return new(null, "DGELU takes no bias");
        int epilogue = kind == GeluEpilogueKind.Forward
            ? bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX
            : CUBLASLT_EPILOGUE_DGELU;
        return new(new GeluEpilogueSetup(epilogue, problem.N), $"cuBLASLt epilogue {epilogue}, aux ld {problem.N}");
    }
}

/// <summary>One launch of the strided GELU kernels (kernels/dev/gelu/02_strided.cu): rows [Row, Row + Rows) of the block.</summary>
public readonly record struct GeluStridedChunk(long Row, int Rows);

/// <summary>
/// How the strided GELU kernels cover a block: the 16-byte form when cols, every ld and every block offset are
/// multiples of 8 elements (with 16-byte aligned base pointers), else the scalar form; and the row chunks that keep
/// every index of a launch below 2^31 (the kernels' indices are 32-bit). Pure logic, emulated in
/// tests/.../Kernels/GeluStridedEmulationTests.
/// </summary>
public static class GeluStrided
{
    public const int Block = 256, Vector = 8;

    /// <summary>True when the 16-byte (8 × bf16) kernels may run: the element offsets and lds are multiples of 8, the pointers 16-byte aligned.</summary>
    public static bool Vectorised(int cols, ReadOnlySpan<long> lds, ReadOnlySpan<ulong> pointers)
    {
        if (cols % Vector != 0) return false;
        foreach (long ld in lds) if (ld % Vector != 0) return false;
        foreach (ulong p in pointers) if (p % 16 != 0) return false;
        return true;
    }

    /// <summary>
    /// The row chunks of one block: each launch's largest index, (rows − 1)·ld + cols for the widest ld, stays
    /// below 2^31, and its thread count (rows·cols, or /8 when vectorised) fits one 32-bit grid-stride loop.
    /// </summary>
    public static IReadOnlyList<GeluStridedChunk> Chunks(long rows, int cols, long maxLd, long limit = int.MaxValue)
    {
        if (cols <= 0 || rows <= 0) return [];
        if (maxLd < cols) throw new ArgumentException($"ld {maxLd} below the block's {cols} columns");
        // (k − 1)·ld + cols ≤ limit  ⇔  k ≤ (limit − cols)/ld + 1
        long perChunk = Math.Max(1, Math.Min((limit - cols) / maxLd + 1, int.MaxValue));
        var chunks = new List<GeluStridedChunk>();
        for (long r = 0; r < rows; r += perChunk)
            chunks.Add(new(r, (int)Math.Min(perChunk, rows - r)));
        return chunks;
    }
}
