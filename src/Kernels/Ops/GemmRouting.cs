using System.Runtime.InteropServices;

namespace MetaLoraNative.Kernels;

/// <summary>Where a GEMM runs: cuBLASLt, or one of our kernels in kernels/gemm.cu.</summary>
public enum GemmRoute
{
    /// <summary>cuBLASLt: every dimension above <see cref="GemmRouting.SmallDim"/> and every operand 16-byte clean.</summary>
    CublasLt,
    /// <summary>M or N is 1: gemv_dot / gemv_cols.</summary>
    Gemv,
    /// <summary>K ≤ <see cref="GemmRouting.SmallDim"/> (M, N &gt; 1): rankk, the LoRA up products.</summary>
    RankK,
    /// <summary>min(M, N) ≤ <see cref="GemmRouting.SmallDim"/> with a long K, or an operand off the 16-byte rule: skinny_dot / skinny_cols.</summary>
    Skinny,
}

/// <summary>
/// One row-major product C (M, N) = op(A) (M, K) · op(B) (K, N) as the backend is about to issue it: leading
/// dimensions of the stored matrices (a is (K, M) when TransA, b is (N, K) when TransB), element sizes (2 bf16,
/// 4 fp32) and the largest power of two (capped at 256) dividing each pointer.
/// </summary>
public readonly record struct GemmProblem(long M, long N, long K, bool TransA, bool TransB, long Lda, long Ldb, long Ldc,
                                          int SizeA, int SizeB, int SizeC, int AlignA, int AlignB, int AlignC)
{
    /// <summary>All three fp32: the product runs in fp32 on either path; otherwise bf16 operands (see gemm.cu's contract).</summary>
    public bool AllF32 => SizeA == 4 && SizeB == 4 && SizeC == 4;

    public override string ToString() =>
        $"m {M}, n {N}, k {K}, transA {TransA}, transB {TransB}, lda {Lda}, ldb {Ldb}, ldc {Ldc}, " +
        $"{GemmRouting.TypeName(SizeA)}·{GemmRouting.TypeName(SizeB)}→{GemmRouting.TypeName(SizeC)}";
}

/// <summary>A route and the rule that chose it (for messages, tests and docs/GPU.md's counts).</summary>
public readonly record struct GemmDecision(GemmRoute Route, string Reason);

/// <summary>
/// The parameter struct of every kernel in kernels/gemm.cu (<c>struct GemmParams</c>, static_assert 152 bytes): the
/// operands as element strides, so one kernel serves both transposes. Field comments are in the .cu file.
/// </summary>
[StructLayout(LayoutKind.Sequential)]
public struct GemmParams
{
    public ulong L, S, C, Bias, Partial;
    public long R, Sn, K;
    public long LR, LP, SS, SP, CR, CS, BiasR, BiasS;
    public long KChunk;
    public float Alpha, Beta;
    public int VecL, VecS;
}

/// <summary>A launch of our kernels: the main kernel and, for a split K, the finishing pass over the partial sums.</summary>
public sealed record GemmLaunch(string Kernel, (uint X, uint Y, uint Z) Grid, (uint X, uint Y, uint Z) Block, GemmParams Params,
                                string? Finish, (uint X, uint Y, uint Z) FinishGrid)
{
    public long KSplit => Params.KChunk >= Params.K ? 1 : (Params.K + Params.KChunk - 1) / Params.KChunk;
}

/// <summary>
/// Which GEMMs go to cuBLASLt and which to our kernels, and how our kernels are launched: pure functions of the
/// problem, so the routing is unit-tested on a flux-dev step's real shapes and the kernels' indexing is emulated on
/// the CPU with the very parameters the GPU gets (tests/.../Kernels).
///
/// Rule, first match wins:
///   M or N = 1 → Gemv;  K ≤ 16 → RankK;  min(M, N) ≤ 16 → Skinny;
///   a leading dimension in bytes not a multiple of 16, or a pointer not 16-byte aligned → Skinny;  else cuBLASLt.
/// Why: cuBLASLt's heuristic answers INVALID_VALUE / NOT_SUPPORTED for some one-row or one-column matrices and its
/// tensor-core kernels need 16-byte rows; and such products are memory-bound anyway (a rank-1 LoRA product moves
/// n·d elements for 2·n·d flops), where a plain fp32 loop at bandwidth is what any library reaches. 16 = the r1 of
/// the paper: the down products (n = r1) and factor gradients stay ours, the stacked qkv / linear1 downs (48, 64 rows)
/// go to cuBLASLt. For the cuBLASLt ld rule a mixed product counts its operands as bf16: they are converted first.
/// </summary>
public static class GemmRouting
{
    /// <summary>Largest dimension that counts as small (the paper's r1 = 16).</summary>
    public const int SmallDim = 16;

    // Launch constants, as kernels/gemm.cu defines them (a test compares the two).
    public const int NsSkinny = 16, DotWarps = 8, ColsX = 32, ColsY = 8, RkRows = 16, RkK = 16, RkThreads = 256;

    /// <summary>Smallest p range of one split-K chunk (16 steps for each of the 8 thread rows).</summary>
    public const long MinChunk = 128;

    const uint MaxGridYZ = 65535;

    /// <summary>Largest power of two dividing the address, capped at 256 (cuBLASLt's default alignment); 256 for null.</summary>
    public static int Alignment(ulong ptr) => ptr == 0 ? 256 : (int)Math.Min(256, ptr & (~ptr + 1));

    public static string TypeName(int size) => size switch
    {
        2 => "bf16",
        4 => "f32",
        _ => throw new ArgumentException($"element size {size}: the GEMM kernels take bf16 (2) or fp32 (4)"),
    };

    public static GemmDecision Route(in GemmProblem p)
    {
        if (p.M <= 0 || p.N <= 0 || p.K <= 0)
            throw new ArgumentException($"gemm routing needs positive dimensions ({p}); the backend handles empty products itself");
        long small = Math.Min(p.M, p.N);
        if (small == 1) return new(GemmRoute.Gemv, p.M == 1 && p.N == 1 ? "m = n = 1" : p.M == 1 ? "m = 1" : "n = 1");
        if (p.K <= SmallDim) return new(GemmRoute.RankK, $"k = {p.K} ≤ {SmallDim}");
        if (small <= SmallDim) return new(GemmRoute.Skinny, $"{(p.M <= p.N ? "m" : "n")} = {small} ≤ {SmallDim}");
        if (Misaligned(p) is { } why) return new(GemmRoute.Skinny, why);
        return new(GemmRoute.CublasLt, "every dimension > 16, 16-byte rows and pointers");
    }

    /// <summary>The first operand that breaks cuBLASLt's 16-byte rule, as a reason; null when all keep it.</summary>
    static string? Misaligned(in GemmProblem p)
    {
        int sa = p.AllF32 ? 4 : 2, sb = sa;   // what cuBLASLt would read: a mixed product's operands are converted to bf16
        if (p.Lda * sa % 16 != 0) return $"lda {p.Lda} × {sa} B is not a multiple of 16";
        if (p.Ldb * sb % 16 != 0) return $"ldb {p.Ldb} × {sb} B is not a multiple of 16";
        if (p.Ldc * p.SizeC % 16 != 0) return $"ldc {p.Ldc} × {p.SizeC} B is not a multiple of 16";
        if (p.AlignA < 16) return $"a is {p.AlignA}-byte aligned";
        if (p.AlignB < 16) return $"b is {p.AlignB}-byte aligned";
        if (p.AlignC < 16) return $"c is {p.AlignC}-byte aligned";
        return null;
    }

    /// <summary>
    /// The launch of one of our kernels for a problem routed to it. Pointers are device addresses (bias 0 when there is
    /// none; workspace: fp32 scratch of workspaceBytes for split-K partial sums). targetBlocks: how many blocks a
    /// cols launch should reach before K is split (a few per SM).
    /// </summary>
    public static GemmLaunch Plan(in GemmProblem p, GemmRoute route, ulong a, ulong b, ulong c, ulong bias, float alpha, float beta,
                                  ulong workspace, long workspaceBytes, int targetBlocks)
    {
        if (route == GemmRoute.CublasLt) throw new ArgumentException($"gemm ({p}) is routed to cuBLASLt: there is no kernel of ours to plan");
        // op(A)(i, p) = a[i*ai + p*ap];  op(B)(p, j) = b[p*bp + j*bj]
        var (ai, ap) = p.TransA ? (1L, p.Lda) : (p.Lda, 1L);
        var (bp, bj) = p.TransB ? (1L, p.Ldb) : (p.Ldb, 1L);
        string tc = TypeName(p.SizeC);
        var g = new GemmParams { C = c, Bias = bias, K = p.K, Alpha = alpha, Beta = beta, KChunk = p.K };

        if (route == GemmRoute.RankK)
        {
            g.L = a; g.LR = ai; g.LP = ap; g.R = p.M;
            g.S = b; g.SS = bj; g.SP = bp; g.Sn = p.N;
            g.CR = p.Ldc; g.CS = 1; g.BiasR = 0; g.BiasS = 1;
            long tiles = (p.M + RkRows - 1) / RkRows;
            return new($"rankk_{TypeName(p.SizeA)}_{TypeName(p.SizeB)}_{tc}", (CeilDiv(p.N, RkThreads), (uint)Math.Min(tiles, MaxGridYZ), 1),
                       (RkThreads, 1, 1), g, null, default);
        }

        // Gemv and Skinny: L is the operand of the larger free dimension.
        bool lIsA = p.M >= p.N;
        int sizeL, sizeS, alignL, alignS;
        if (lIsA)
        {
            (g.L, g.LR, g.LP, g.R, sizeL, alignL) = (a, ai, ap, p.M, p.SizeA, p.AlignA);
            (g.S, g.SS, g.SP, g.Sn, sizeS, alignS) = (b, bj, bp, p.N, p.SizeB, p.AlignB);
            (g.CR, g.CS, g.BiasR, g.BiasS) = (p.Ldc, 1, 0, 1);
        }
        else
        {
            (g.L, g.LR, g.LP, g.R, sizeL, alignL) = (b, bj, bp, p.N, p.SizeB, p.AlignB);
            (g.S, g.SS, g.SP, g.Sn, sizeS, alignS) = (a, ai, ap, p.M, p.SizeA, p.AlignA);
            (g.CR, g.CS, g.BiasR, g.BiasS) = (1, p.Ldc, 1, 0);
        }
        int ns = route == GemmRoute.Gemv ? 1 : NsSkinny;
        long sTiles = (g.Sn + ns - 1) / ns;
        if (sTiles > MaxGridYZ)
            throw new ArgumentException($"gemm ({p}): {g.Sn} columns of the smaller side need {sTiles} tiles of {ns}, over the grid's {MaxGridYZ}");
        string kind = route == GemmRoute.Gemv ? "gemv" : "skinny";
        string types = $"{TypeName(sizeL)}_{TypeName(sizeS)}_{tc}";

        // Dot layout when L is contiguous along the reduction (or neither way); cols when it is contiguous along r.
        if (g.LP == 1 || g.LR != 1)
        {
            g.VecL = Vec(g.LP, g.LR, g.R, sizeL, alignL);
            g.VecS = g.VecL == 1 ? Vec(g.SP, g.SS, g.Sn, sizeS, alignS) : 0;
            return new($"{kind}_dot_{types}", (CeilDiv(g.R, DotWarps), (uint)sTiles, 1), (32 * DotWarps, 1, 1), g, null, default);
        }

        long blocks = CeilDiv(g.R, ColsX) * sTiles;
        long ksplit = 1;
        if (blocks < targetBlocks)
            ksplit = Math.Min((targetBlocks + blocks - 1) / blocks, (p.K + MinChunk - 1) / MinChunk);
        ksplit = Math.Min(ksplit, Math.Min(MaxGridYZ, workspaceBytes / (4 * g.R * g.Sn)));
        if (ksplit > 1)
        {
            g.KChunk = (p.K + ksplit - 1) / ksplit;
            ksplit = (p.K + g.KChunk - 1) / g.KChunk;
        }
        if (ksplit <= 1)
        {
            g.KChunk = p.K;
            return new($"{kind}_cols_{types}", (CeilDiv(g.R, ColsX), (uint)sTiles, 1), (ColsX, ColsY, 1), g, null, default);
        }
        g.Partial = workspace;
        return new($"{kind}_cols_{types}", (CeilDiv(g.R, ColsX), (uint)sTiles, (uint)ksplit), (ColsX, ColsY, 1), g,
                   $"gemm_finish_{tc}", (CeilDiv(Math.Min(g.R * g.Sn, 256L * 65536), 256), 1, 1));
    }

    /// <summary>1 when rows of an operand can be read in 16-byte chunks of 8 elements: contiguous along p, aligned start, 16-byte row stride.</summary>
    static int Vec(long strideP, long strideRow, long rows, int size, int align) =>
        strideP == 1 && align >= 16 && (rows == 1 || strideRow * size % 16 == 0) ? 1 : 0;

    static uint CeilDiv(long n, long d) => CudaBackend.CeilDiv(n, d);
}
