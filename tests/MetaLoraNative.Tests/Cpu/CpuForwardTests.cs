using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Tests.Testing;

namespace MetaLoraNative.Tests.Cpu;

/// <summary>Forward values of the trickier ops against naive, independently written formulas (fp64 engine).</summary>
public sealed class CpuForwardTests : IDisposable
{
    private const double Tight = 1e-12; // both sides are fp64 with O(1) values: only summation order differs

    private readonly IBackend _be = CpuBackend.F64();
    private readonly TestData _rand = new(7);

    public void Dispose() => _be.Dispose();

    private Tensor Up(double[] v, params int[] shape) => _be.Upload(v, shape);

    private static void Close(double[] expected, double[] actual, double tol, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(expected[i] - actual[i]) <= tol * Math.Max(1, Math.Abs(expected[i])),
                $"{what}[{i}]: expected {expected[i]:G17}, got {actual[i]:G17}");
    }

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
    public void AttentionMatchesNaiveSoftmaxAttention()
    {
        const int B = 2, H = 3, L = 5, D = 4;
        var q = _rand.Normal(B * H * L * D);
        var k = _rand.Normal(B * H * L * D);
        var v = _rand.Normal(B * H * L * D);
        using var o = _be.Attention(Up(q, B, H, L, D), Up(k, B, H, L, D), Up(v, B, H, L, D), out var lse);
        var expected = new double[B * L * H * D];
        var expectedLse = new double[B * H * L];
        for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
        for (int i = 0; i < L; i++)
        {
            int qi = ((b * H + h) * L + i) * D;
            var w = new double[L];
            double z = 0;
            for (int j = 0; j < L; j++)
            {
                int kj = ((b * H + h) * L + j) * D;
                double s = 0;
                for (int d = 0; d < D; d++) s += q[qi + d] * k[kj + d];
                w[j] = Math.Exp(s / Math.Sqrt(D)); // no max subtraction: the naive formula
                z += w[j];
            }
            expectedLse[(b * H + h) * L + i] = Math.Log(z);
            for (int d = 0; d < D; d++)
            {
                double acc = 0;
                for (int j = 0; j < L; j++) acc += w[j] / z * v[((b * H + h) * L + j) * D + d];
                expected[(b * L + i) * H * D + h * D + d] = acc; // "B H L D -> B L (H D)"
            }
        }
        Close(expected, _be.DownloadDouble(o), Tight, "out");
        Close(expectedLse, _be.DownloadDouble(lse), Tight, "lse");
    }

    [Fact]
    public void RopeTableMatchesTheDirectFormulaForFluxAxes()
    {
        int[] axes = [16, 56, 56];
        const int B = 1, L = 6;
        var ids = new double[B * L * 3];
        for (int l = 0; l < L; l++) { ids[l * 3 + 1] = l / 3; ids[l * 3 + 2] = l % 3 + 0.5 * l; }
        using var pe = _be.RopeTable(Up(ids, B, L, 3), axes, 10000f);
        Assert.Equal(new[] { B, L, 64, 2 }, pe.Shape);
        var got = _be.DownloadDouble(pe);
        for (int l = 0; l < L; l++)
        {
            int p = 0;
            for (int axis = 0; axis < 3; axis++)
            for (int k = 0; k < axes[axis] / 2; k++, p++)
            {
                double angle = ids[l * 3 + axis] / Math.Pow(10000, 2.0 * k / axes[axis]);
                Assert.Equal(Math.Cos(angle), got[(l * 64 + p) * 2], 12);
                Assert.Equal(Math.Sin(angle), got[(l * 64 + p) * 2 + 1], 12);
            }
        }
    }

    [Fact]
    public void ApplyRopeRotatesAdjacentPairs()
    {
        // One pair at angle π/2 (theta^0 = 1, id = π/2): (x0, x1) → (−x1, x0); the second pair has id 0.
        using var pe = _be.RopeTable(Up([Math.PI / 2, 0], 1, 1, 2), [2, 2], 10000f);
        using var y = _be.ApplyRope(Up([3, 5, 7, 11], 1, 1, 1, 4), pe);
        Close([-5, 3, 7, 11], _be.DownloadDouble(y), Tight, "y");
        using var back = _be.ApplyRopeBackward(y, pe);
        Close([3, 5, 7, 11], _be.DownloadDouble(back), Tight, "inverse");
    }

    [Fact]
    public void LayerNormModulateMatchesTheDefinition()
    {
        const int B = 2, L = 3, C = 6;
        var x = _rand.Normal(B * L * C, 3);
        var shift = _rand.Normal(B * C);
        var scale = _rand.Normal(B * C);
        using var y = _be.LayerNormModulate(Up(x, B, L, C), Up(shift, B, C), Up(scale, B, C), 1e-6f, out var stats);
        var expected = new double[B * L * C];
        for (int r = 0; r < B * L; r++)
        {
            var row = x.AsSpan(r * C, C).ToArray();
            double mean = row.Average(), var = row.Select(v => (v - mean) * (v - mean)).Sum() / C;
            for (int c = 0; c < C; c++)
                expected[r * C + c] = (1 + scale[r / L * C + c]) * (row[c] - mean) / Math.Sqrt(var + (double)1e-6f) +
                                      shift[r / L * C + c];
        }
        Close(expected, _be.DownloadDouble(y), Tight, "y");
        Assert.Equal(new[] { B * L, 2 }, stats.Shape);
    }

    [Fact]
    public void RmsNormMatchesTheDefinition()
    {
        using var y = _be.RmsNorm(Up([3, 4], 1, 2), Up([2, 0.5], 2), 0f, out var rstd);
        double r = 1 / Math.Sqrt(12.5); // mean(x²) = (9 + 16)/2
        Close([3 * r * 2, 4 * r * 0.5], _be.DownloadDouble(y), Tight, "y");
        Close([r], _be.DownloadDouble(rstd), Tight, "rstd");
    }

    [Fact]
    public void TimestepEmbeddingMatchesHandComputedValues()
    {
        // t = 0.5, dim = 4: half = 2, freqs = [1, exp(−ln(10⁴)/2) = 0.01], args = 1000·0.5·freqs = [500, 5];
        // emb = [cos 500, cos 5, sin 500, sin 5]. dim = 5 appends a zero column.
        using var t = Up([0.5], 1);
        using var e4 = _be.TimestepEmbedding(t, 4);
        Close([-0.883849273431478, 0.28366218546322625, -0.46777180532247614, -0.9589242746631385],
            _be.DownloadDouble(e4), 1e-12, "emb4");
        using var e5 = _be.TimestepEmbedding(t, 5);
        Close([-0.883849273431478, 0.28366218546322625, -0.46777180532247614, -0.9589242746631385, 0],
            _be.DownloadDouble(e5), 1e-12, "emb5");
    }

    [Fact]
    public void AdamWOneStepMatchesHandComputedNumbers()
    {
        // Hyper-parameters exact in fp32. Step 1: g = 0.5·2 = 1; m = 0.5; v = 0.25; m̂ = 1; v̂ = 1;
        // p = 1 − 0.125·(1/(1 + 0.0625) + 0.25·1) = 1 − 0.125·(16/17 + 1/4).
        var hp = new AdamWStep(1, LearningRate: 0.125f, Beta1: 0.5f, Beta2: 0.75f, Epsilon: 0.0625f,
            WeightDecay: 0.25f, GradScale: 2f);
        using var p = Up([1], 1);
        using var m = Up([0], 1);
        using var v = Up([0], 1);
        _be.AdamW(p, Up([0.5], 1), m, v, hp);
        Close([1 - 0.125 * (16.0 / 17 + 0.25)], _be.DownloadDouble(p), Tight, "p step 1");
        Close([0.5], _be.DownloadDouble(m), Tight, "m");
        Close([0.25], _be.DownloadDouble(v), Tight, "v");

        // Step 2 from m = 0.25, v = 0.0625, p = −2, grad −0.25 (g = −0.5): m = −0.125; v = 0.109375;
        // m̂ = −0.125/0.75 = −1/6; v̂ = 0.109375/0.4375 = 0.25; p = −2 − 0.125·((−1/6)/(0.5 + 0.0625) + 0.25·(−2)).
        using var p2 = Up([-2], 1);
        using var m2 = Up([0.25], 1);
        using var v2 = Up([0.0625], 1);
        _be.AdamW(p2, Up([-0.25], 1), m2, v2, hp with { Step = 2 });
        Close([-2 - 0.125 * (-1.0 / 6 / 0.5625 - 0.5)], _be.DownloadDouble(p2), Tight, "p step 2");
    }

    [Fact]
    public void SplitQkvFollowsBflLayout()
    {
        // qkv (1, 1, 3·2·1): channels are [q_h0, q_h1, k_h0, k_h1, v_h0, v_h1].
        var (q, k, v) = _be.SplitQkv(Up([1, 2, 3, 4, 5, 6], 1, 1, 6), 2);
        Assert.Equal(new[] { 1, 2, 1, 1 }, q.Shape);
        Assert.Equal(new double[] { 1, 2 }, _be.DownloadDouble(q));
        Assert.Equal(new double[] { 3, 4 }, _be.DownloadDouble(k));
        Assert.Equal(new double[] { 5, 6 }, _be.DownloadDouble(v));
        Assert.Equal(new double[] { 1, 2, 3, 4, 5, 6 }, _be.DownloadDouble(_be.MergeQkv(q, k, v)));
    }

    [Fact]
    public void ConcatAndNarrowAreInverse()
    {
        var a = Up([1, 2, 3, 4], 2, 2);
        var b = Up([5, 6], 2, 1);
        using var c = _be.Concat(-1, a, b);
        Assert.Equal(new double[] { 1, 2, 5, 3, 4, 6 }, _be.DownloadDouble(c));
        Assert.Equal(new double[] { 2, 5, 4, 6 }, _be.DownloadDouble(_be.Narrow(c, 1, 1, 2)));
    }

    [Fact]
    public void ReshapeSharesStorage()
    {
        using var t = _be.Zeros(2, 3);
        var r = t.Reshape(3, -1);
        Assert.Equal(new[] { 3, 2 }, r.Shape);
        _be.Fill(r, 4f);
        Assert.All(_be.DownloadDouble(t), v => Assert.Equal(4.0, v));
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
        var ex3 = Assert.Throws<ArgumentException>(() => _be.AddInPlace(CpuBackend.F32().Zeros(2), _be.Zeros(2)));
        Assert.Contains("cpu-f32", ex3.Message);
    }
}
