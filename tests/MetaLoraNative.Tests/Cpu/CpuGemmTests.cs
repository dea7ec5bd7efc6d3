using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Tests.Testing;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cpu;

/// <summary>The Gemm group on the CPU (CpuBackend.Gemm.cs): Gemm and GemmSlice in every transpose, Linear, LinearBackward.</summary>
public sealed class CpuGemmTests(ITestOutputHelper output) : CpuOpTests(output)
{
    // ---------------------------------------------------------------- forward

    [Theory]
    [InlineData(false, false)]
    [InlineData(false, true)]
    [InlineData(true, false)]
    [InlineData(true, true)]
    public void GemmMatchesNaiveProductForEveryTransposeCombination(bool ta, bool tb)
    {
        // Sizes off the 16 × 64 tile and 4-wide kernel boundaries.
        const int M = 19, K = 37, N = 70;
        var a = _rand.Normal(M * K);
        var b = _rand.Normal(K * N);
        var c0 = _rand.Normal(M * N);
        double A(int i, int k) => ta ? a[k * M + i] : a[i * K + k];
        double Bm(int k, int j) => tb ? b[j * K + k] : b[k * N + j];
        using var at = Up(a, ta ? [K, M] : [M, K]);
        using var bt = Up(b, tb ? [N, K] : [K, N]);
        using var c = Up(c0, M, N);
        _be.Gemm(at, ta, bt, tb, c, alpha: 0.5f, beta: 2f);
        var expected = new double[M * N];
        for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++)
        {
            double s = 0;
            for (int k = 0; k < K; k++) s += A(i, k) * Bm(k, j);
            expected[i * N + j] = 0.5 * s + 2 * c0[i * N + j];
        }
        Close(expected, _be.DownloadDouble(c), Tight, "c");
    }

    /// <summary>
    /// GemmSlice on blocks cut from wider tensors (a column slice for c, as the fused LoRA's y += a·Uᵀ; row-and-column
    /// blocks for a and b, as dyₛ and a group's rows): c's block against the naive product, every other element of c
    /// bit-for-bit as it was.
    /// </summary>
    [Theory]
    [InlineData(false, false)]
    [InlineData(false, true)]
    [InlineData(true, false)]
    [InlineData(true, true)]
    public void GemmSliceMatchesNaiveProductOnBlocksAndLeavesTheRestOfC(bool ta, bool tb)
    {
        const int M = 19, K = 37, N = 21;
        // a's block of op(a) (M × K) stored at rows [3, ..) × cols [5, ..) of a wider tensor; b's at rows [2, ..) × cols [4, ..)
        int aR = ta ? K : M, aC = ta ? M : K, bR = tb ? N : K, bC = tb ? K : N;
        var a = _rand.Normal((aR + 4) * (aC + 9));
        var b = _rand.Normal((bR + 3) * (bC + 7));
        var c0 = _rand.Normal((M + 6) * (N + 30));
        using var at = Up(a, aR + 4, aC + 9);
        using var bt = Up(b, bR + 3, bC + 7);
        using var ct = Up(c0, M + 6, N + 30);
        double A(int i, int k) => ta ? a[(3 + k) * (aC + 9) + 5 + i] : a[(3 + i) * (aC + 9) + 5 + k];
        double Bm(int k, int j) => tb ? b[(2 + j) * (bC + 7) + 4 + k] : b[(2 + k) * (bC + 7) + 4 + j];
        _be.GemmSlice(new MatrixSlice(at, 3, aR, 5, aC), ta, new MatrixSlice(bt, 2, bR, 4, bC), tb, new MatrixSlice(ct, 4, M, 11, N), 0.5f, 2f);
        var expected = (double[])c0.Clone();
        for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++)
        {
            double s = 0;
            for (int k = 0; k < K; k++) s += A(i, k) * Bm(k, j);
            int e = (4 + i) * (N + 30) + 11 + j;
            expected[e] = 0.5 * s + 2 * c0[e];
        }
        var actual = Down(ct);
        Close(expected, actual, Tight, "c");
        for (int e = 0; e < c0.Length; e++)
        {
            int r = e / (N + 30), col = e % (N + 30);
            if (r < 4 || r >= 4 + M || col < 11 || col >= 11 + N) Assert.Equal(c0[e], actual[e]);
        }
    }

    [Fact]
    public void GemmSliceOfWholeTensorsIsGemmAndContiguousBlocksAreReadInPlace()
    {
        // whole rows of a (a group's rows) and of c: the in-place path; the result equals Gemm on copies
        var a = _rand.Normal(10 * 12);
        var b = _rand.Normal(12 * 7);
        using var at = Up(a, 10, 12);
        using var bt = Up(b, 12, 7);
        using var c = _be.Zeros(10, 7);
        _be.GemmSlice(((MatrixSlice)at).RowsOf(2, 5), false, bt, false, ((MatrixSlice)c).RowsOf(3, 5));
        using var a5 = Up(a[24..84], 5, 12);
        using var ref5 = _be.Zeros(5, 7);
        _be.Gemm(a5, false, bt, false, ref5);
        var got = Down(c);
        Close(Down(ref5), got[21..56], Tight, "rows [3, 8) of c");
        Assert.All(got[..21].Concat(got[56..]), v => Assert.Equal(0.0, v));
    }

    [Fact]
    public void GemmSliceRefusesBlocksOutsideTheirTensorAndMismatchedShapes()
    {
        using var t = _be.Zeros(4, 6);
        var ex = Assert.Throws<ArgumentException>(() => _be.GemmSlice(new MatrixSlice(t, 0, 4, 3, 4), false, t, true, t));
        Assert.Contains("GemmSlice", ex.Message);
        Assert.Contains("a block", ex.Message);
        Assert.Contains("columns [3, 7)", ex.Message);
        ex = Assert.Throws<ArgumentException>(() => _be.GemmSlice(t, false, t, true, new MatrixSlice(t, 1, 4, 0, 4)));
        Assert.Contains("c block rows [1, 5)", ex.Message);
        ex = Assert.Throws<ArgumentException>(() => _be.GemmSlice(MatrixSlice.ColumnsOf(t, 0, 2), false, t, false, t));
        Assert.Contains("op(a) is (4 × 2)", ex.Message);
        Assert.Contains("cols [0, 2) of (4, 6)", ex.Message);
    }

    [Fact]
    public void GemmWithZeroBetaIgnoresNaNsInTheOutput()
    {
        using var a = Up([1, 2], 1, 2);
        using var b = Up([3, 4], 2, 1);
        using var c = Up([double.NaN], 1, 1);
        _be.Gemm(a, false, b, false, c);
        Assert.Equal(11.0, _be.DownloadDouble(c)[0]);
    }

    [Fact]
    public void LinearAddsBiasToXTimesWTransposed()
    {
        using var x = Up([1, 2, 3, 4, 5, 6], 2, 3);
        using var w = Up([1, 0, -1, 2, 1, 0], 2, 3);
        using var bias = Up([10, 20], 2);
        using var y = _be.Linear(x, w, bias);
        Assert.Equal(new[] { 2, 2 }, y.Shape);
        Assert.Equal(new double[] { 1 - 3 + 10, 2 + 2 + 20, 4 - 6 + 10, 8 + 5 + 20 }, _be.DownloadDouble(y));
    }

    [Fact]
    public void ShapeMismatchesNameTheOpAndTheShapes()
    {
        var ex = Assert.Throws<ArgumentException>(() => _be.Linear(_be.Zeros(2, 3), _be.Zeros(4, 5), null));
        Assert.Contains("Linear", ex.Message);
        Assert.Contains("(2, 3)", ex.Message);
        Assert.Contains("(4, 5)", ex.Message);
        var ex2 = Assert.Throws<ArgumentException>(() => _be.Gemm(_be.Zeros(2, 3), false, _be.Zeros(2, 3), false, _be.Zeros(2, 3)));
        Assert.Contains("Gemm", ex2.Message);
    }

    // ---------------------------------------------------------------- backward (finite differences)

    [Fact]
    public void LinearBackwardIsTheInputGradientOfLinear()
    {
        int[] xs = [2, 3, 5];
        var x = _rand.Normal(30);
        using var w = Up(_rand.Normal(20), 4, 5);
        using var bias = Up(_rand.Normal(4), 4);
        var r = _rand.Normal(24);
        using var rt = Up(r, 2, 3, 4);
        using var dx = _be.LinearBackward(rt, w);
        Check("Linear dx", x, xs, t => _be.Linear(t, w, bias), r, Down(dx));
    }

    /// <summary>
    /// For c = op(a)·op(b) and L = Σ c ∘ R, the gradients the LoRA layers form with Gemm:
    /// da = R·op(b)ᵀ (or op(b)·Rᵀ when a is transposed), db = op(a)ᵀ·R (or Rᵀ·op(a) when b is transposed).
    /// </summary>
    [Theory]
    [InlineData(false, false)]
    [InlineData(false, true)]
    [InlineData(true, false)]
    [InlineData(true, true)]
    public void GemmGradientIdentitiesHoldForEveryTransposeCombination(bool ta, bool tb)
    {
        const int M = 3, K = 5, N = 4;
        int[] aShape = ta ? [K, M] : [M, K], bShape = tb ? [N, K] : [K, N];
        var a = _rand.Normal(M * K);
        var b = _rand.Normal(K * N);
        var r = _rand.Normal(M * N);
        using var at = Up(a, aShape);
        using var bt = Up(b, bShape);
        using var rt = Up(r, M, N);
        using var da = _be.Zeros(aShape);
        using var db = _be.Zeros(bShape);
        if (!ta) _be.Gemm(rt, false, bt, !tb, da); else _be.Gemm(bt, tb, rt, true, da);
        if (!tb) _be.Gemm(at, !ta, rt, false, db); else _be.Gemm(rt, true, at, ta, db);

        Tensor Product(Tensor x, Tensor y)
        {
            var c = _be.Zeros(M, N);
            _be.Gemm(x, ta, y, tb, c);
            return c;
        }
        string tag = $"Gemm({(ta ? "T" : "N")}{(tb ? "T" : "N")})";
        Check($"{tag} da", a, aShape, x => Product(x, bt), r, Down(da));
        Check($"{tag} db", b, bShape, y => Product(at, y), r, Down(db));
    }

    // ---------------------------------------------------------------- fp32 vs fp64

    [Fact]
    public void GemmFp32MatchesFp64() => Fp32MatchesFp64("Gemm", (be, r) => [.. new[] { (false, false), (false, true), (true, false), (true, true) }.Select(t =>
    {
        const int M = 70, K = 150, N = 90;
        var a = be.Upload(r.Normal(M * K), t.Item1 ? [K, M] : [M, K]);
        var b = be.Upload(r.Normal(K * N), t.Item2 ? [N, K] : [K, N]);
        var c = be.Upload(r.Normal(M * N), M, N);
        be.Gemm(a, t.Item1, b, t.Item2, c, 0.5f, 1f);
        return be.DownloadDouble(c);
    })]);

    [Fact]
    public void GemmSliceFp32MatchesFp64() => Fp32MatchesFp64("GemmSlice", (be, r) => [.. new[] { (false, false), (false, true), (true, false), (true, true) }.Select(t =>
    {
        const int M = 70, K = 150, N = 40;
        int[] sa = t.Item1 ? [K + 3, M + 2] : [M + 3, K + 2], sb = t.Item2 ? [N + 1, K + 5] : [K + 1, N + 5];
        var a = be.Upload(r.Normal(sa[0] * sa[1]), sa);
        var b = be.Upload(r.Normal(sb[0] * sb[1]), sb);
        var c = be.Upload(r.Normal(M * (N + 20)), M, N + 20);
        be.GemmSlice(new MatrixSlice(a, 1, t.Item1 ? K : M, 2, t.Item1 ? M : K), t.Item1, new MatrixSlice(b, 1, t.Item2 ? N : K, 3, t.Item2 ? K : N), t.Item2,
                     MatrixSlice.ColumnsOf(c, 9, N), 0.5f, 1f);
        return be.DownloadDouble(c);
    })]);

    [Fact]
    public void LinearFp32MatchesFp64() => Fp32MatchesFp64("Linear", (be, r) =>
    {
        var x = be.Upload(r.Normal(B * L * C), B, L, C);
        var w = be.Upload(r.Normal(2 * C * C, 0.1), 2 * C, C);
        var bias = be.Upload(r.Normal(2 * C), 2 * C);
        var dy = be.Upload(r.Normal(B * L * 2 * C), B, L, 2 * C);
        return [be.DownloadDouble(be.Linear(x, w, bias)), be.DownloadDouble(be.LinearBackward(dy, w))];
    });

    // ---------------------------------------------------------------- GemmGroup

    /// <summary>(M, N, K, transA, transB, alpha, beta): every transpose, beta 0 and 1, the fused Stage-2 LoRA's two uses.</summary>
    static readonly (int M, int N, int K, bool TA, bool TB, float Alpha, float Beta)[] GroupSpecs =
    [
        (1, 40, 6, false, false, 1f, 0f),     // A = M·D (r2 1)
        (2, 40, 6, false, false, 1f, 0f),     // A = M·D (r2 2)
        (1, 6, 40, false, true, 1f, 1f),      // dM += G·Dᵀ
        (5, 9, 13, true, false, 0.5f, 1f),
        (4, 7, 3, true, true, -2f, 0f),
        (3, 11, 17, false, true, 1f, 0f),
        (6, 5, 8, false, false, 1f, 1f),
        (3, 4, 0, false, false, 1f, 1f),      // an empty reduction: c = beta·c
    ];

    /// <summary>
    /// The specs' operands as blocks of wider tensors (a and b at row 1, column 2; every c a row block of one shared c
    /// at column 1, as the stacked A is) and the entries; c starts random, so beta 1 reads it and beta 0 must ignore it.
    /// </summary>
    static (Tensor[] Owned, Tensor C, GemmEntry[] Entries) GroupCase(IBackend be, TestData r)
    {
        int rows = GroupSpecs.Sum(s => s.M), width = GroupSpecs.Max(s => s.N) + 3;
        var c = be.Upload(r.Normal(rows * width), rows, width);
        var owned = new List<Tensor> { c };
        var entries = new List<GemmEntry>();
        int row = 0;
        foreach (var (m, n, k, ta, tb, alpha, beta) in GroupSpecs)
        {
            int ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n;
            var a = be.Upload(r.Normal((ar + 2) * (ac + 3)), ar + 2, ac + 3);
            var b = be.Upload(r.Normal((br + 2) * (bc + 3)), br + 2, bc + 3);
            owned.Add(a);
            owned.Add(b);
            entries.Add(new GemmEntry(new MatrixSlice(a, 1, ar, 2, ac), ta, new MatrixSlice(b, 1, br, 2, bc), tb, new MatrixSlice(c, row, m, 1, n), alpha, beta));
            row += m;
        }
        return ([.. owned], c, [.. entries]);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void GemmGroupEqualsEntryByEntryGemmSlice(bool fp64)
    {
        using var be = fp64 ? CpuBackend.F64() : CpuBackend.F32();
        var (grouped, gc, ge) = GroupCase(be, new TestData(5));
        var (single, sc, se) = GroupCase(be, new TestData(5));
        be.GemmGroup(ge);
        foreach (var e in se) be.GemmSlice(e.A, e.TransA, e.B, e.TransB, e.C, e.Alpha, e.Beta);
        var expected = be.DownloadDouble(sc);
        Assert.Equal(expected, be.DownloadDouble(gc));   // the same products in the same order: bit for bit
        var (_, fresh, _) = GroupCase(be, new TestData(5));
        Assert.NotEqual(be.DownloadDouble(fresh), expected);
        foreach (var t in grouped.Concat(single)) t.Dispose();
    }

    [Fact]
    public void GemmGroupMatchesTheNaiveProductAndLeavesTheRestOfCUntouched()
    {
        var (owned, c, entries) = GroupCase(_be, new TestData(8));
        var before = Down(c);
        var expected = (double[])before.Clone();
        int width = c.Shape[1];
        foreach (var e in entries)
        {
            var a = Down(e.A.Tensor);
            var b = Down(e.B.Tensor);
            var (m, n, k) = e.Dims;
            double A(long i, long p) => e.TransA ? a[(e.A.Row + p) * e.A.Tensor.Cols + e.A.Column + i] : a[(e.A.Row + i) * e.A.Tensor.Cols + e.A.Column + p];
            double Bm(long p, long j) => e.TransB ? b[(e.B.Row + j) * e.B.Tensor.Cols + e.B.Column + p] : b[(e.B.Row + p) * e.B.Tensor.Cols + e.B.Column + j];
            for (long i = 0; i < m; i++)
                for (long j = 0; j < n; j++)
                {
                    double dot = 0;
                    for (long p = 0; p < k; p++) dot += A(i, p) * Bm(p, j);
                    long ci = (e.C.Row + i) * width + e.C.Column + j;
                    expected[ci] = e.Alpha * dot + (e.Beta != 0 ? e.Beta * before[ci] : 0);
                }
        }
        _be.GemmGroup(entries);
        Close(expected, Down(c), Tight, "c of every entry, and the cells around them");
        Assert.Contains(entries, e => e.Beta == 0);
        Assert.Contains(entries, e => e.Beta == 1);
        foreach (var t in owned) t.Dispose();
    }

    [Fact]
    public void GemmGroupFp32MatchesFp64() => Fp32MatchesFp64("GemmGroup", (be, r) =>
    {
        var (_, c, entries) = GroupCase(be, r);
        be.GemmGroup(entries);
        return [be.DownloadDouble(c)];
    });

    [Fact]
    public void GemmGroupChecksEveryEntryBeforeComputingAndCountsOneGemm()
    {
        using var be = CpuBackend.F64();
        var (owned, c, entries) = GroupCase(be, new TestData(2));
        var before = be.DownloadDouble(c);
        var bad = entries[0] with { C = new MatrixSlice(c, c.Shape[0] - 1, 2, 0, entries[0].C.Columns) };   // one row past the end
        var e = Assert.Throws<ArgumentException>(() => be.GemmGroup([.. entries, bad]));
        Assert.Contains("GemmGroup", e.Message);
        Assert.Equal(before, be.DownloadDouble(c));   // nothing written
        var counters = be.Counters!;
        var snap = counters.Snapshot();
        be.GemmGroup(entries);
        var counted = Engine.Benchmarks.LaunchCounters.Sum(Engine.Benchmarks.LaunchCounters.Between(snap, counters.Snapshot()).Values);
        Assert.Equal(1, counted.GemmCount);   // one launch on a GPU, however many entries
        be.GemmGroup([]);
        foreach (var t in owned) t.Dispose();
    }
}
