using MetaLoraNative.Engine;
using MetaLoraNative.Tests.Testing;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cpu;

/// <summary>The Objective group on the CPU (CpuBackend.Objective.cs): the MSE loss, sums of squares, AdamW.</summary>
public sealed class CpuObjectiveTests(ITestOutputHelper output) : CpuOpTests(output)
{
    // ---------------------------------------------------------------- forward

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
    public void DeviceScalarsHoldTheHostFormulasLossNormScaleAndTheFiniteCheck()
    {
        using var pred = Up(_rand.Normal(12), 3, 4);
        using var target = Up(_rand.Normal(12), 3, 4);
        using var g1 = Up(_rand.Normal(7), 7);
        using var g2 = Up(_rand.Normal(5), 5);
        double loss = _be.MseLoss(pred, target, out var d0);
        d0.Dispose();
        double ss = _be.SumSquares([g1, g2]), norm = Math.Sqrt(ss);
        using var s = _be.NewStepScalars();
        foreach (float max in new[] { 0f, (float)(norm / 2), (float)(norm * 2) })
        {
            _be.MseLoss(pred, target, out var d, s);
            d.Dispose();
            _be.ClipScale([g1, g2], max, s);
            _be.ReadBack(s);
            var v = s.Read();
            Assert.Equal((loss, ss, true), (v.Loss, v.SumSquares, v.Applied));
            Assert.Equal(max > 0 && norm > max ? (float)(max / norm) : 1f, v.Scale);
        }
        Assert.True(s.Read().Scale == 1f);   // the last max norm is above the norm

        // a non-finite loss or gradient: the update does not apply
        using var nan = Up([double.NaN, 1], 2);
        _be.ClipScale([g1, nan], 1f, s);
        _be.ReadBack(s);
        Assert.False(s.Read().Applied);
        using var bad = Up([.. Enumerable.Repeat(double.PositiveInfinity, 12)], 3, 4);
        _be.MseLoss(bad, target, out var db, s);
        db.Dispose();
        _be.ClipScale([g1, g2], 1f, s);
        _be.ReadBack(s);
        Assert.False(s.Read().Applied);
    }

    [Fact]
    public void MultiTensorAdamWIsThePerTensorAdamWBitForBitAndANoOpWhenNotApplied()
    {
        // Views of flat buffers with their own step counts, against separate tensors and the single-tensor op.
        int[] sizes = [5, 64, 3];
        long[] offsets = [0, 64, 128];
        var flat = Enumerable.Range(0, 4).Select(_ => _be.Zeros([192], Precision.Master)).ToArray();
        var views = sizes.Select((n, k) => flat.Select(f => f.Slice(offsets[k], n)).ToArray()).ToArray();
        var separate = sizes.Select(n => Enumerable.Range(0, 4).Select(_ => _be.Zeros([n], Precision.Master)).ToArray()).ToArray();
        for (int k = 0; k < sizes.Length; k++)
            for (int b = 0; b < 2; b++)   // param and grad; the moments start at zero
            {
                var values = _rand.Normal(sizes[k]);
                using var t = Up(values, sizes[k]);
                _be.Copy(t, views[k][b]);
                _be.Copy(t, separate[k][b]);
            }
        using var s = _be.NewStepScalars();
        using var pred = Up(_rand.Normal(4), 4);
        using var target = Up(_rand.Normal(4), 4);
        var hyper = new AdamWStep(1, 1e-2f, WeightDecay: 0.1f);
        for (int step = 1; step <= 3; step++)
        {
            _be.MseLoss(pred, target, out var d, s);
            d.Dispose();
            _be.ClipScale([.. views.Select(v => v[1])], 0.5f, s);
            _be.AdamW([.. views.Select((v, k) => new AdamWTensors(v[0], v[1], v[2], v[3], step + k))], hyper, s);
            _be.ReadBack(s);
            float scale = s.Read().Scale;
            Assert.True(scale < 1f, $"clip scale {scale}");
            for (int k = 0; k < sizes.Length; k++)
                _be.AdamW(separate[k][0], separate[k][1], separate[k][2], separate[k][3], hyper with { Step = step + k, GradScale = scale });
        }
        for (int k = 0; k < sizes.Length; k++)
            for (int b = 0; b < 4; b++)
                Assert.Equal(_be.DownloadDouble(separate[k][b]), _be.DownloadDouble(views[k][b]));
        var padding = _be.DownloadDouble(flat[0]).Where((_, i) => i is >= 5 and < 64 or >= 131).ToArray();
        Assert.All(padding, v => Assert.Equal(0, v));

        var before = flat.Select(_be.DownloadDouble).ToArray();
        using var nan = Up([double.NaN, 0, 0, 0], 4);
        _be.MseLoss(nan, target, out var dn, s);
        dn.Dispose();
        _be.ClipScale([.. views.Select(v => v[1])], 0.5f, s);
        _be.AdamW([.. views.Select((v, k) => new AdamWTensors(v[0], v[1], v[2], v[3], 9))], hyper, s);
        for (int b = 0; b < 4; b++) Assert.Equal(before[b], _be.DownloadDouble(flat[b]));
        foreach (var t in views.SelectMany(v => v).Concat(separate.SelectMany(v => v)).Concat(flat)) t.Dispose();
    }

    // ---------------------------------------------------------------- backward (finite differences)

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
        GradCheck.Check("MseLoss dpred", Loss, pred, Down(dPred), Output);
        dPred.Dispose();
    }

    // ---------------------------------------------------------------- fp32 vs fp64

    [Fact]
    public void MseLossSumSquaresFp32MatchesFp64() => Fp32MatchesFp64("MseLoss/SumSquares", (be, r) =>
    {
        var p = be.Upload(r.Normal(B * L * C), B, L, C);
        double loss = be.MseLoss(p, be.Upload(r.Normal(B * L * C), B, L, C), out var dp);
        return [[loss, be.SumSquares(p)], be.DownloadDouble(dp)];
    });

    [Fact]
    public void AdamWFp32MatchesFp64() => Fp32MatchesFp64("AdamW", (be, r) =>
    {
        var p = be.Upload(r.Normal(4096), 4096);
        var m = be.Upload(r.Normal(4096, 0.01), 4096);
        var v = be.Upload(r.Uniform(4096, 0, 1e-4), 4096);
        var g = be.Upload(r.Normal(4096, 0.01), 4096);
        for (int s = 1; s <= 3; s++) be.AdamW(p, g, m, v, new AdamWStep(s, 1e-3f, GradScale: 0.5f));
        return [be.DownloadDouble(p), be.DownloadDouble(m), be.DownloadDouble(v)];
    });
}
