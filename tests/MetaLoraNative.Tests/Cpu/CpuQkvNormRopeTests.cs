using MetaLoraNative.Engine;
using MetaLoraNative.Tests.Testing;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cpu;

/// <summary>
/// The Attention group's fused split-qkv + QK RMSNorm + RoPE (IBackend.QkvNormRope and its backward) on the CPU:
/// against the unfused op sequence it replaces (SplitQkv, RmsNorm, Concat, ApplyRope; ApplyRopeBackward, Narrow,
/// RmsNormBackward, MergeQkv), finite differences of the backward, and fp32 against fp64.
/// </summary>
public sealed class CpuQkvNormRopeTests(ITestOutputHelper output) : CpuOpTests(output)
{
    // A joint sequence of two streams, text first: lengths, heads and head dim off every multiple; the image's qkv
    // sits in rows wider than 3C (as the single block's linear1 rows), so its MatrixSlice has a row stride > 3C.
    const int Bt = 2, Ht = 3, Dt = 6, Ct = Ht * Dt, Lt = 5, Li = 7, LJ = Lt + Li, Extra = 4;
    const float Eps = 1e-6f;

    /// <summary>A RoPE table of two axes (first, dim − first) from random positions.</summary>
    static Tensor PeTable(IBackend be, int batch, int length, int first, int seed, int dim = Dt)
    {
        var ids = new TestData(seed).Uniform(batch * length * 2, 0, 9);
        using var t = be.Upload(ids, batch, length, 2);
        return be.RopeTable(t, [first, dim - first], 10000f);
    }

    static Tensor Sentinel(IBackend be, params int[] shape) => be.Upload(Enumerable.Repeat(7.0, (int)Shapes.Numel(shape)).ToArray(), shape);

    [Theory]
    [InlineData(2)]   // one RoPE table per sample
    [InlineData(1)]   // one table for the whole batch
    public void ForwardMatchesTheUnfusedSequence(int peBatch)
    {
        var txt = _rand.Normal(Bt * Lt * 3 * Ct);
        var img = _rand.Normal(Bt * Li * (3 * Ct + Extra));
        using var txtQkv = Up(txt, Bt, Lt, 3 * Ct);
        using var imgLin = Up(img, Bt, Li, 3 * Ct + Extra);
        using var wq = Up(_rand.Uniform(Dt, 0.5, 1.5), Dt);
        using var wk = Up(_rand.Uniform(Dt, 0.5, 1.5), Dt);
        using var pe = PeTable(_be, peBatch, LJ, 2, 3);
        var norm = new QkNorm(wq, wk, Eps);

        using var joint = new QkvJoint(Sentinel(_be, Bt, Ht, LJ, Dt), Sentinel(_be, Bt, Ht, LJ, Dt), Sentinel(_be, Bt, Ht, LJ, Dt));
        var (tq, tk) = _be.QkvNormRope(txtQkv, norm, pe, joint, 0);
        var imgSlice = MatrixSlice.ColumnsOf(imgLin, 0, 3 * Ct);
        var (iq, ik) = _be.QkvNormRope(imgSlice, norm, pe, joint, Lt);

        // the unfused sequence, the model's path without the fusion
        using var imgQkv = _be.Narrow(imgLin, -1, 0, 3 * Ct);
        var (q1, k1, v1) = _be.SplitQkv(txtQkv, Ht);
        var (q2, k2, v2) = _be.SplitQkv(imgQkv, Ht);
        using var qn1 = _be.RmsNorm(q1, wq, Eps, out var rq1);
        using var kn1 = _be.RmsNorm(k1, wk, Eps, out var rk1);
        using var qn2 = _be.RmsNorm(q2, wq, Eps, out var rq2);
        using var kn2 = _be.RmsNorm(k2, wk, Eps, out var rk2);
        using var q = _be.Concat(2, qn1, qn2);
        using var k = _be.Concat(2, kn1, kn2);
        using var v = _be.Concat(2, v1, v2);
        using var qr = _be.ApplyRope(q, pe);
        using var kr = _be.ApplyRope(k, pe);

        Close(Down(qr), Down(joint.Q), Tight, "q");
        Close(Down(kr), Down(joint.K), Tight, "k");
        Close(Down(v), Down(joint.V), Tight, "v");
        Close(Down(rq1), Down(tq), Tight, "txt q rstd");
        Close(Down(rk1), Down(tk), Tight, "txt k rstd");
        Close(Down(rq2), Down(iq), Tight, "img q rstd");
        Close(Down(rk2), Down(ik), Tight, "img k rstd");
        foreach (var t in new[] { tq, tk, iq, ik, q1, k1, v1, q2, k2, v2, rq1, rk1, rq2, rk2 }) t.Dispose();
    }

    [Fact]
    public void ForwardWritesOnlyItsStreamsTokens()
    {
        using var lin = Up(_rand.Normal(Bt * Li * (3 * Ct + Extra)), Bt, Li, 3 * Ct + Extra);
        using var wq = Up(_rand.Uniform(Dt, 0.5, 1.5), Dt);
        using var wk = Up(_rand.Uniform(Dt, 0.5, 1.5), Dt);
        using var pe = PeTable(_be, Bt, LJ, 2, 4);
        using var joint = new QkvJoint(Sentinel(_be, Bt, Ht, LJ, Dt), Sentinel(_be, Bt, Ht, LJ, Dt), Sentinel(_be, Bt, Ht, LJ, Dt));
        var (a, b) = _be.QkvNormRope(MatrixSlice.ColumnsOf(lin, 0, 3 * Ct), new QkNorm(wq, wk, Eps), pe, joint, Lt);
        a.Dispose();
        b.Dispose();
        foreach (var t in new[] { joint.Q, joint.K, joint.V })
        {
            var x = Down(t);
            for (int bh = 0; bh < Bt * Ht; bh++)
                for (int l = 0; l < LJ; l++)
                    for (int d = 0; d < Dt; d++)
                    {
                        double e = x[(bh * LJ + l) * Dt + d];
                        if (l < Lt) Assert.Equal(7.0, e);
                        else Assert.NotEqual(7.0, e);
                    }
        }
    }

    [Fact]
    public void BackwardMatchesTheUnfusedSequence()
    {
        var img = _rand.Normal(Bt * Li * (3 * Ct + Extra));
        using var imgLin = Up(img, Bt, Li, 3 * Ct + Extra);
        using var wq = Up(_rand.Uniform(Dt, 0.5, 1.5), Dt);
        using var wk = Up(_rand.Uniform(Dt, 0.5, 1.5), Dt);
        using var pe = PeTable(_be, Bt, LJ, 4, 5);
        var norm = new QkNorm(wq, wk, Eps);
        var slice = MatrixSlice.ColumnsOf(imgLin, 0, 3 * Ct);
        using var joint = new QkvJoint(_be.Zeros(Bt, Ht, LJ, Dt), _be.Zeros(Bt, Ht, LJ, Dt), _be.Zeros(Bt, Ht, LJ, Dt));
        var (qRstd, kRstd) = _be.QkvNormRope(slice, norm, pe, joint, Lt);
        using var _q = qRstd;
        using var _k = kRstd;
        using var grads = new QkvJoint(Up(_rand.Normal(Bt * Ht * LJ * Dt), Bt, Ht, LJ, Dt), Up(_rand.Normal(Bt * Ht * LJ * Dt), Bt, Ht, LJ, Dt),
                                       Up(_rand.Normal(Bt * Ht * LJ * Dt), Bt, Ht, LJ, Dt));
        using var dLin = Sentinel(_be, Bt, Li, 3 * Ct + Extra);
        _be.QkvNormRopeBackward(grads, Lt, slice, norm, pe, qRstd, kRstd, MatrixSlice.ColumnsOf(dLin, 0, 3 * Ct));

        // unfused: rotate back on the joint sequence, narrow to the stream, RMSNorm backward, merge
        using var dq = _be.ApplyRopeBackward(grads.Q, pe);
        using var dk = _be.ApplyRopeBackward(grads.K, pe);
        using var dqs = _be.Narrow(dq, 2, Lt, Li);
        using var dks = _be.Narrow(dk, 2, Lt, Li);
        using var dvs = _be.Narrow(grads.V, 2, Lt, Li);
        using var qkv = _be.Narrow(imgLin, -1, 0, 3 * Ct);
        var (q, k, v) = _be.SplitQkv(qkv, Ht);
        using var qn = _be.RmsNorm(q, wq, Eps, out var rq);
        using var kn = _be.RmsNorm(k, wk, Eps, out var rk);
        using var dqn = _be.RmsNormBackward(dqs, q, wq, rq);
        using var dkn = _be.RmsNormBackward(dks, k, wk, rk);
        using var merged = _be.MergeQkv(dqn, dkn, dvs);
        using var ours = _be.Narrow(dLin, -1, 0, 3 * Ct);
        Close(Down(merged), Down(ours), Tight, "d qkv");
        using var rest = _be.Narrow(dLin, -1, 3 * Ct, Extra);
        Assert.All(Down(rest), e => Assert.Equal(7.0, e));   // the columns past 3C (the MLP half's) are untouched
        foreach (var t in new[] { q, k, v, rq, rk }) t.Dispose();
    }

    /// <summary>
    /// L = Σ (q ∘ Rq + k ∘ Rk + v ∘ Rv) over the joint tensors, as a function of the whole wide qkv matrix (its
    /// columns past 3C get no gradient): the backward fed (Rq, Rk, Rv) must be ∂L/∂qkv.
    /// </summary>
    [Theory]
    [InlineData(0, 2)]
    [InlineData(Lt, 1)]
    public void BackwardMatchesFiniteDifferences(int start, int peBatch)
    {
        int len = start == 0 ? Lt : Li, cols = 3 * Ct + Extra;
        var x = _rand.Normal(Bt * len * cols);
        using var wq = Up(_rand.Uniform(Dt, 0.5, 1.5), Dt);
        using var wk = Up(_rand.Uniform(Dt, 0.5, 1.5), Dt);
        using var pe = PeTable(_be, peBatch, LJ, 2, 6);
        var norm = new QkNorm(wq, wk, Eps);
        int n = Bt * Ht * LJ * Dt;
        var r = _rand.Normal(3 * n);
        Tensor Forward(Tensor t)
        {
            using var j = new QkvJoint(_be.Zeros(Bt, Ht, LJ, Dt), _be.Zeros(Bt, Ht, LJ, Dt), _be.Zeros(Bt, Ht, LJ, Dt));
            var (a, b) = _be.QkvNormRope(MatrixSlice.ColumnsOf(t, 0, 3 * Ct), norm, pe, j, start);
            a.Dispose();
            b.Dispose();
            return _be.Concat(0, j.Q, j.K, j.V);   // (3B, H, LJ, D), projected on r
        }

        using var xt = Up(x, Bt, len, cols);
        using var joint = new QkvJoint(_be.Zeros(Bt, Ht, LJ, Dt), _be.Zeros(Bt, Ht, LJ, Dt), _be.Zeros(Bt, Ht, LJ, Dt));
        var (qRstd, kRstd) = _be.QkvNormRope(MatrixSlice.ColumnsOf(xt, 0, 3 * Ct), norm, pe, joint, start);
        using var _q = qRstd;
        using var _k = kRstd;
        using var grads = new QkvJoint(Up(r[..n], Bt, Ht, LJ, Dt), Up(r[n..(2 * n)], Bt, Ht, LJ, Dt), Up(r[(2 * n)..], Bt, Ht, LJ, Dt));
        using var dx = _be.Zeros(Bt, len, cols);
        _be.QkvNormRopeBackward(grads, start, MatrixSlice.ColumnsOf(xt, 0, 3 * Ct), norm, pe, qRstd, kRstd, MatrixSlice.ColumnsOf(dx, 0, 3 * Ct));
        Check($"QkvNormRope d qkv (tokens from {start}, pe batch {peBatch})", x, [Bt, len, cols], Forward, r, Down(dx));
    }

    [Fact]
    public void QkvNormRopeFp32MatchesFp64() => Fp32MatchesFp64("QkvNormRope", (be, rand) =>
    {
        const int cols = 3 * C + 40;   // C = H·D of the medium sizes; rows wider than 3C
        var pe = PeTable(be, B, 2 * L, 8, 7, D);
        var x = be.Upload(rand.Normal(B * L * cols), B, L, cols);
        var wq = be.Upload(rand.Uniform(D, 0.5, 1.5), D);
        var wk = be.Upload(rand.Uniform(D, 0.5, 1.5), D);
        var norm = new QkNorm(wq, wk, Eps);
        var joint = new QkvJoint(be.Zeros(B, H, 2 * L, D), be.Zeros(B, H, 2 * L, D), be.Zeros(B, H, 2 * L, D));
        var slice = MatrixSlice.ColumnsOf(x, 0, 3 * C);
        var (qr, kr) = be.QkvNormRope(slice, norm, pe, joint, L);
        var grads = new QkvJoint(be.Upload(rand.Normal(B * H * 2 * L * D), B, H, 2 * L, D), be.Upload(rand.Normal(B * H * 2 * L * D), B, H, 2 * L, D),
                                 be.Upload(rand.Normal(B * H * 2 * L * D), B, H, 2 * L, D));
        var dx = be.Zeros(B, L, cols);
        be.QkvNormRopeBackward(grads, L, slice, norm, pe, qr, kr, MatrixSlice.ColumnsOf(dx, 0, 3 * C));
        return [be.DownloadDouble(joint.Q), be.DownloadDouble(joint.K), be.DownloadDouble(joint.V), be.DownloadDouble(qr), be.DownloadDouble(kr), be.DownloadDouble(dx)];
    });
}
