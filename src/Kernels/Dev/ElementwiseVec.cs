namespace MetaLoraNative.Kernels;

/// <summary>
/// n / d by a multiply-high, an add and a shift, for 0 ≤ n &lt; 2^31 and 1 ≤ d &lt; 2^31 (the kernels' FastDiv in
/// kernels/dev/elementwise/02_vec16.cu and kernels/dev/layout/02_vec16.cu): S = ⌈log2 d⌉ and
/// M = ⌊2^32 (2^S − d) / d⌋ + 1, so 2^32 + M = ⌊2^(32+S) / d⌋ + 1 = 2^(32+S)/d + e with 0 &lt; e ≤ 1, and
/// q = ⌊n (2^32 + M) / 2^(32+S)⌋ = ⌊n/d + n e / 2^(32+S)⌋, whose second term is below 1/d because n·d &lt; 2^32·2^S:
/// never enough to carry n/d past the next integer. mulhi(n, M) &lt; n &lt; 2^31, so the 32-bit sum cannot wrap.
/// Field order mirrors the kernels' struct (d, m, s).
/// </summary>
public readonly record struct FastDivisor(uint D, uint M, uint S)
{
    public static FastDivisor Of(long d)
    {
        if (d < 1 || d > int.MaxValue) throw new ArgumentOutOfRangeException(nameof(d), $"fast division by {d}: needs 1 ≤ d < 2^31");
        uint s = d == 1 ? 0u : (uint)(32 - System.Numerics.BitOperations.LeadingZeroCount((uint)(d - 1)));
        ulong m = ((1UL << 32) * ((1UL << (int)s) - (ulong)d)) / (ulong)d + 1;
        return new((uint)d, (uint)m, s);
    }

    /// <summary>The kernels' fdiv, bit for bit: (mulhi(n, M) + n) &gt;&gt; S in unsigned 32-bit arithmetic.</summary>
    public uint Div(uint n) => unchecked((uint)(((ulong)n * M) >> 32) + n) >> (int)S;
}

/// <summary>One slice_copy_v16 launch: Rows rows of Cols contiguous elements, row strides and column offsets in elements.</summary>
public readonly record struct SliceVecPlan(long Rows, long Cols, long LdDst, long LdSrc, long OffDst, long OffSrc)
{
    public long Vectors => Rows * Cols / ElementwiseVec.Vector;
}

/// <summary>
/// Where the 16-byte, 32-bit-index kernels of version 2 (kernels/dev/elementwise/02_vec16.cu,
/// kernels/dev/layout/02_vec16.cu) may run in place of version 1's, decided on the host from the shapes and the
/// pointers: pure logic, emulated in tests/.../Kernels/ElementwiseVecEmulationTests. Every refusal means version 1
/// runs (the same results: the copies are bit-identical, the activations use version 1's formulas).
/// </summary>
public static class ElementwiseVec
{
    /// <summary>Elements per vector: 8 bf16 are 16 bytes (8 fp32 are two 16-byte accesses).</summary>
    public const int Vector = 8;

    /// <summary>Largest element count (exclusive bound 2^31) the 32-bit indices cover.</summary>
    public const long IndexLimit = 1L << 31;

    /// <summary>The environment switch: METALORA_ELEMENTWISE=vec16 turns version 2 on (CudaBackend.ElementwiseVec16).</summary>
    public const string EnvironmentVariable = "METALORA_ELEMENTWISE";

    public static bool FromEnvironment() => Parse(Environment.GetEnvironmentVariable(EnvironmentVariable));

    public static bool Parse(string? value) => value is "vec16";

    static bool Aligned(ReadOnlySpan<ulong> pointers)
    {
        foreach (ulong p in pointers) if (p % 16 != 0) return false;
        return true;
    }

    /// <summary>A whole contiguous tensor of n elements (axpy, scale, the activations): n a multiple of 8 below 2^31, every pointer 16-byte aligned.</summary>
    public static bool Contiguous(long n, params ReadOnlySpan<ulong> pointers) =>
        n > 0 && n % Vector == 0 && n < IndexLimit && Aligned(pointers);

    /// <summary>The gated residual over (B, L, C) with gate (B, C): also C a multiple of 8, so a vector stays in one row of gate.</summary>
    public static bool GatedResidual(int b, int l, int c, params ReadOnlySpan<ulong> pointers) =>
        c % Vector == 0 && Contiguous((long)b * l * c, pointers);

    /// <summary>split_qkv / merge_qkv over (B, L, 3, H, D): D a multiple of 8, so a vector stays in one head's row.</summary>
    public static bool Qkv(int b, int l, int h, int d, params ReadOnlySpan<ulong> pointers) =>
        d % Vector == 0 && Contiguous(3L * b * l * h * d, pointers);

    /// <summary>
    /// slice_copy's (outer, dim, inner) views as a 2-D copy of outer rows of len·inner contiguous elements, or null
    /// (version 1 runs) unless the row length and both column offsets are multiples of 8, so are both row strides
    /// when there is more than one row, both pointers are 16-byte aligned, and both tensors have fewer than 2^31 elements.
    /// </summary>
    public static SliceVecPlan? Slice(long outer, long inner, int dstDim, int dstStart, int srcDim, int srcStart, int len,
                                      ulong dstPtr, ulong srcPtr)
    {
        long cols = len * inner;
        if (outer <= 0 || cols <= 0) return null;
        if (outer * dstDim * inner >= IndexLimit || outer * srcDim * inner >= IndexLimit) return null;
        long ldDst = dstDim * inner, ldSrc = srcDim * inner, offDst = dstStart * inner, offSrc = srcStart * inner;
        if (cols % Vector != 0 || offDst % Vector != 0 || offSrc % Vector != 0) return null;
        if (outer > 1 && (ldDst % Vector != 0 || ldSrc % Vector != 0)) return null;
        if (!Aligned([dstPtr, srcPtr])) return null;
        return new SliceVecPlan(outer, cols, ldDst, ldSrc, offDst, offSrc);
    }
}
