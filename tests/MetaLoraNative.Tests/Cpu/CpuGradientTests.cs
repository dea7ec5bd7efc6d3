using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Tests.Testing;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cpu;

/// <summary>
/// Finite-difference checks of every backward op on the fp64 CPU engine. Each check projects the op's output on a
/// fixed random R (L = Σ op(x) ∘ R) and compares backward(R) with the numeric gradient of L; see <see cref="GradCheck"/>.
/// </summary>
public sealed class CpuGradientTests(ITestOutputHelper output) : IDisposable
{
    private readonly IBackend _be = CpuBackend.F64();
    private readonly TestData _rand = new(20240611);

    public void Dispose() => _be.Dispose();

    private Tensor Up(double[] v, params int[] shape) => _be.Upload(v, shape);
    private double[] Down(Tensor t) => _be.DownloadDouble(t);

    /// <summary>Checks ∂(Σ forward(x) ∘ r)/∂x against <paramref name="analytic"/>.</summary>
    private void Check(string name, double[] x, int[] shape, Func<Tensor, Tensor> forward, double[] r, double[] analytic,
        double h = GradCheck.DefaultStep) =>
        GradCheck.Check(name, GradCheck.Projected(_be, shape, forward, r), x, analytic, output, h);

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

    [Fact]
    public void SiluBackwardMatchesFiniteDifferences()
    {
        var x = _rand.Normal(21, 2);
        var r = _rand.Normal(21);
        using var xt = Up(x, 3, 7);
        using var rt = Up(r, 3, 7);
        using var dx = _be.SiluBackward(xt, rt);
        Check("Silu dx", x, [3, 7], _be.Silu, r, Down(dx));
    }

    [Fact]
    public void GeluTanhBackwardMatchesFiniteDifferences()
    {
        var x = _rand.Normal(21, 2);
        var r = _rand.Normal(21);
        using var xt = Up(x, 3, 7);
        using var rt = Up(r, 3, 7);
        using var dx = _be.GeluTanhBackward(xt, rt);
        Check("GeluTanh dx", x, [3, 7], _be.GeluTanh, r, Down(dx));
    }

    [Theory]
    [InlineData(0, 1, 1)]
    [InlineData(1, 1, 3)]
    [InlineData(-1, 2, 2)]
    public void AddNarrowIsTheBackwardOfNarrow(int axis, int start, int length)
    {
        int[] xs = [2, 5, 4];
        var x = _rand.Normal(40);
        int[] ys = (int[])xs.Clone();
        ys[axis < 0 ? axis + 3 : axis] = length;
        var r = _rand.Normal(TestData.Numel(ys));
        using var rt = Up(r, ys);
        using var dx = _be.Zeros(xs);
        _be.AddNarrow(dx, rt, axis, start);
        Check($"Narrow(axis {axis}) dx", x, xs, t => _be.Narrow(t, axis, start, length), r, Down(dx));
    }

    [Fact]
    public void NarrowIsTheBackwardOfConcat()
    {
        var p0 = _rand.Normal(12);
        var p1 = _rand.Normal(24);
        var r = _rand.Normal(36);
        using var t0 = Up(p0, 2, 2, 3);
        using var t1 = Up(p1, 2, 4, 3);
        using var rt = Up(r, 2, 6, 3);
        using var d0 = _be.Narrow(rt, 1, 0, 2);
        using var d1 = _be.Narrow(rt, 1, 2, 4);
        Check("Concat d(part 0)", p0, [2, 2, 3], t => _be.Concat(1, t, t1), r, Down(d0));
        Check("Concat d(part 1)", p1, [2, 4, 3], t => _be.Concat(1, t0, t), r, Down(d1));
    }

    [Fact]
    public void MergeQkvIsTheBackwardOfSplitQkvAndViceVersa()
    {
        const int B = 2, L = 3, H = 2, D = 4;
        int[] qkvShape = [B, L, 3 * H * D], headShape = [B, H, L, D];
        var x = _rand.Normal(B * L * 3 * H * D);
        var rq = _rand.Normal(B * H * L * D);
        var rk = _rand.Normal(B * H * L * D);
        var rv = _rand.Normal(B * H * L * D);
        using var rqt = Up(rq, headShape);
        using var rkt = Up(rk, headShape);
        using var rvt = Up(rv, headShape);
        using var merged = _be.MergeQkv(rqt, rkt, rvt);
        double Split(double[] v)
        {
            using var t = Up(v, qkvShape);
            var (q, k, vv) = _be.SplitQkv(t, H);
            using (q) using (k) using (vv)
                return Dot(Down(q), rq) + Dot(Down(k), rk) + Dot(Down(vv), rv);
        }
        GradCheck.Check("SplitQkv dqkv", Split, x, Down(merged), output);

        // MergeQkv's own gradient with respect to dq is the Q part of SplitQkv(R).
        var dq = _rand.Normal(B * H * L * D);
        var r = _rand.Normal(B * L * 3 * H * D);
        using var rt = Up(r, qkvShape);
        var (sq, sk, sv) = _be.SplitQkv(rt, H);
        sk.Dispose();
        sv.Dispose();
        using var dkt = Up(rk, headShape);
        using var dvt = Up(rv, headShape);
        Check("MergeQkv d(dq)", dq, headShape, t => _be.MergeQkv(t, dkt, dvt), r, Down(sq));
        sq.Dispose();
    }

    [Fact]
    public void LayerNormModulateBackwardGivesDxDShiftAndDScale()
    {
        const int B = 2, L = 3, C = 8;
        var x = _rand.Normal(B * L * C, 1.5);
        var shift = _rand.Normal(B * C);
        var scale = _rand.Normal(B * C, 0.5);
        var r = _rand.Normal(B * L * C);
        using var xt = Up(x, B, L, C);
        using var sht = Up(shift, B, C);
        using var sct = Up(scale, B, C);
        using var rt = Up(r, B, L, C);
        using var y = _be.LayerNormModulate(xt, sht, sct, 1e-6f, out var stats);
        var (dx, dsh, dsc) = _be.LayerNormModulateBackward(rt, xt, sct, stats);
        Check("LayerNormModulate dx", x, [B, L, C], t => _be.LayerNormModulate(t, sht, sct, 1e-6f, out _), r, Down(dx));
        Check("LayerNormModulate dshift", shift, [B, C], t => _be.LayerNormModulate(xt, t, sct, 1e-6f, out _), r, Down(dsh));
        Check("LayerNormModulate dscale", scale, [B, C], t => _be.LayerNormModulate(xt, sht, t, 1e-6f, out _), r, Down(dsc));
        stats.Dispose(); dx.Dispose(); dsh.Dispose(); dsc.Dispose();
    }

    [Fact]
    public void RmsNormBackwardMatchesFiniteDifferences()
    {
        const int C = 8;
        var x = _rand.Normal(2 * 3 * C);
        var r = _rand.Normal(2 * 3 * C);
        using var w = Up(_rand.Uniform(C, 0.5, 1.5), C);
        using var xt = Up(x, 2, 3, C);
        using var rt = Up(r, 2, 3, C);
        using var y = _be.RmsNorm(xt, w, 1e-6f, out var rstd);
        using var dx = _be.RmsNormBackward(rt, xt, w, rstd);
        rstd.Dispose();
        Check("RmsNorm dx", x, [2, 3, C], t => _be.RmsNorm(t, w, 1e-6f, out _), r, Down(dx));
    }

    [Fact]
    public void ApplyRopeBackwardIsTheTransposeRotation()
    {
        const int B = 2, H = 2, L = 3, D = 8;
        using var ids = Up(_rand.Uniform(B * L * 2, 0, 6), B, L, 2);
        using var pe = _be.RopeTable(ids, [4, 4], 10000f);
        var x = _rand.Normal(B * H * L * D);
        var r = _rand.Normal(B * H * L * D);
        using var rt = Up(r, B, H, L, D);
        using var dx = _be.ApplyRopeBackward(rt, pe);
        Check("ApplyRope dx", x, [B, H, L, D], t => _be.ApplyRope(t, pe), r, Down(dx));
    }

    [Fact]
    public void AttentionBackwardGivesDqDkAndDv()
    {
        const int B = 2, H = 2, L = 4, D = 8;
        int[] s = [B, H, L, D];
        var q = _rand.Normal(B * H * L * D);
        var k = _rand.Normal(B * H * L * D);
        var v = _rand.Normal(B * H * L * D);
        var r = _rand.Normal(B * L * H * D);
        using var qt = Up(q, s);
        using var kt = Up(k, s);
        using var vt = Up(v, s);
        using var rt = Up(r, B, L, H * D);
        using var o = _be.Attention(qt, kt, vt, out var lse);
        var (dq, dk, dv) = _be.AttentionBackward(rt, qt, kt, vt, o, lse);
        Check("Attention dq", q, s, t => _be.Attention(t, kt, vt, out _), r, Down(dq));
        Check("Attention dk", k, s, t => _be.Attention(qt, t, vt, out _), r, Down(dk));
        Check("Attention dv", v, s, t => _be.Attention(qt, kt, t, out _), r, Down(dv));
        lse.Dispose(); dq.Dispose(); dk.Dispose(); dv.Dispose();
    }

    [Fact]
    public void TimestepEmbeddingBackwardMatchesFiniteDifferences()
    {
        // t is multiplied by 1000 inside, so the step shrinks by the same factor (h·1000 = 1e-4).
        const int dim = 9; // odd: exercises the zero column
        var t = _rand.Uniform(3, 0, 1);
        var r = _rand.Normal(3 * dim);
        using var tt = Up(t, 3);
        using var rt = Up(r, 3, dim);
        using var dt = _be.TimestepEmbeddingBackward(tt, rt);
        Check("TimestepEmbedding dt", t, [3], x => _be.TimestepEmbedding(x, dim), r, Down(dt), h: 1e-7);
    }

    [Fact]
    public void GatedResidualBackwardGivesDxDyAndDGate()
    {
        const int B = 2, L = 3, C = 5;
        var x = _rand.Normal(B * L * C);
        var y = _rand.Normal(B * L * C);
        var gate = _rand.Normal(B * C);
        var r = _rand.Normal(B * L * C);
        using var xt = Up(x, B, L, C);
        using var yt = Up(y, B, L, C);
        using var gt = Up(gate, B, C);
        using var rt = Up(r, B, L, C);
        var (dy, dg) = _be.GatedResidualBackward(rt, gt, yt);
        Check("GatedResidual dx", x, [B, L, C], t => _be.GatedResidual(t, gt, yt), r, r); // dx is dOut itself
        Check("GatedResidual dy", y, [B, L, C], t => _be.GatedResidual(xt, gt, t), r, Down(dy));
        Check("GatedResidual dgate", gate, [B, C], t => _be.GatedResidual(xt, t, yt), r, Down(dg));
        dy.Dispose(); dg.Dispose();
    }

    [Fact]
    public void MseLossGradientMatchesFiniteDifferences()
    {
        var pred = _rand.Normal(12);
        using var target = Up(_rand.Normal(12), 3, 4);
        using var pt = Up(pred, 3, 4);
        _be.MseLoss(pt, target, out var dPred);
        double Loss(double[] p)
        {
            using var t = Up(p, 3, 4);
            double l = _be.MseLoss(t, target, out var g);
            g.Dispose();
            return l;
        }
        GradCheck.Check("MseLoss dpred", Loss, pred, Down(dPred), output);
        dPred.Dispose();
    }

    private static double Dot(double[] a, double[] b)
    {
        double s = 0;
        for (int i = 0; i < a.Length; i++) s += a[i] * b[i];
        return s;
    }
}
