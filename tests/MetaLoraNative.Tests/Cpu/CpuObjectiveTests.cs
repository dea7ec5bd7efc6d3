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
