using MetaLoraNative.Engine;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cpu;

/// <summary>The Norm group on the CPU (CpuBackend.Norm.cs): LayerNorm with modulation (alone and after the gated residual), RMSNorm.</summary>
public sealed class CpuNormTests(ITestOutputHelper output) : CpuOpTests(output)
{
    // ---------------------------------------------------------------- forward

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
    public void ResidualLayerNormModulateMatchesGatedResidualThenLayerNormModulate()
    {
        const int B = 2, L = 5, C = 12;
        using var x = Up(_rand.Normal(B * L * C, 2), B, L, C);
        using var gate = Up(_rand.Normal(B * C), B, C);
        using var y = Up(_rand.Normal(B * L * C, 1.5), B, L, C);
        using var shift = Up(_rand.Normal(B * C), B, C);
        using var scale = Up(_rand.Normal(B * C, 0.5), B, C);
        using var dMod = Up(_rand.Normal(B * L * C), B, L, C);
        using var dOut = Up(_rand.Normal(B * L * C), B, L, C);

        // the unfused sequence (DoubleBlock without Fusions.ResidualNorm)
        using var x1 = _be.GatedResidual(x, gate, y);
        using var m = _be.LayerNormModulate(x1, shift, scale, 1e-6f, out var st);
        var (dxn, dsh, dsc) = _be.LayerNormModulateBackward(dMod, x1, scale, st);
        _be.AddInPlace(dxn, dOut);
        var (dy, dg) = _be.GatedResidualBackward(dxn, gate, y);

        var (fx1, fm) = _be.ResidualLayerNormModulate(x, gate, y, shift, scale, 1e-6f, out var fst);
        var (fdx1, fdy, fdg, fdsh, fdsc) = _be.ResidualLayerNormModulateBackward(dMod, dOut, fx1, scale, fst, gate, y);
        Close(Down(x1), Down(fx1), Tight, "x1");
        Close(Down(m), Down(fm), Tight, "modulated");
        Close(Down(st), Down(fst), Tight, "stats");
        Close(Down(dxn), Down(fdx1), Tight, "dx1");
        Close(Down(dy), Down(fdy), Tight, "dy");
        Close(Down(dg), Down(fdg), Tight, "dgate");
        Close(Down(dsh), Down(fdsh), Tight, "dshift");
        Close(Down(dsc), Down(fdsc), Tight, "dscale");
        Assert.Equal(new[] { B, L, C }, fdx1.Shape);
        Assert.Equal(new[] { B, C }, fdg.Shape);
        foreach (var t in new[] { st, dxn, dsh, dsc, dy, dg, fx1, fm, fst, fdx1, fdy, fdg, fdsh, fdsc }) t.Dispose();
    }

    [Fact]
    public void RmsNormMatchesTheDefinition()
    {
        using var y = _be.RmsNorm(Up([3, 4], 1, 2), Up([2, 0.5], 2), 0f, out var rstd);
        double r = 1 / Math.Sqrt(12.5); // mean(x²) = (9 + 16)/2
        Close([3 * r * 2, 4 * r * 0.5], _be.DownloadDouble(y), Tight, "y");
        Close([r], _be.DownloadDouble(rstd), Tight, "rstd");
    }

    // ---------------------------------------------------------------- backward (finite differences)

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

    /// <summary>
    /// Both outputs at once: F = (x1, modulated) joined along C, projected on R = (R1, R2) per row, so the backward is
    /// fed dOut = R1 (the residual's gradient into x1) and dModulated = R2.
    /// </summary>
    [Fact]
    public void ResidualLayerNormModulateBackwardMatchesFiniteDifferencesForEveryInput()
    {
        const int B = 2, L = 3, C = 8;
        var x = _rand.Normal(B * L * C, 1.5);
        var gate = _rand.Normal(B * C);
        var y = _rand.Normal(B * L * C);
        var shift = _rand.Normal(B * C);
        var scale = _rand.Normal(B * C, 0.5);
        var r1 = _rand.Normal(B * L * C);
        var r2 = _rand.Normal(B * L * C);
        var r = new double[2 * B * L * C];
        for (int row = 0; row < B * L; row++)
        {
            Array.Copy(r1, row * C, r, 2 * row * C, C);
            Array.Copy(r2, row * C, r, 2 * row * C + C, C);
        }
        using var xt = Up(x, B, L, C);
        using var gt = Up(gate, B, C);
        using var yt = Up(y, B, L, C);
        using var sht = Up(shift, B, C);
        using var sct = Up(scale, B, C);
        using var dOut = Up(r1, B, L, C);
        using var dMod = Up(r2, B, L, C);
        Tensor Both(Tensor x_, Tensor g_, Tensor y_, Tensor sh_, Tensor sc_)
        {
            var (x1, m) = _be.ResidualLayerNormModulate(x_, g_, y_, sh_, sc_, 1e-6f, out var st);
            using (x1) using (m) using (st) return _be.Concat(2, x1, m);
        }
        var (fx1, fm) = _be.ResidualLayerNormModulate(xt, gt, yt, sht, sct, 1e-6f, out var stats);
        var (dx1, dy, dg, dsh, dsc) = _be.ResidualLayerNormModulateBackward(dMod, dOut, fx1, sct, stats, gt, yt);
        Check("ResidualLayerNormModulate dx", x, [B, L, C], t => Both(t, gt, yt, sht, sct), r, Down(dx1));
        Check("ResidualLayerNormModulate dgate", gate, [B, C], t => Both(xt, t, yt, sht, sct), r, Down(dg));
        Check("ResidualLayerNormModulate dy", y, [B, L, C], t => Both(xt, gt, t, sht, sct), r, Down(dy));
        Check("ResidualLayerNormModulate dshift", shift, [B, C], t => Both(xt, gt, yt, t, sct), r, Down(dsh));
        Check("ResidualLayerNormModulate dscale", scale, [B, C], t => Both(xt, gt, yt, sht, t), r, Down(dsc));
        foreach (var t in new[] { fx1, fm, stats, dx1, dy, dg, dsh, dsc }) t.Dispose();
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

    // ---------------------------------------------------------------- fp32 vs fp64

    [Fact]
    public void LayerNormModulateFp32MatchesFp64() => Fp32MatchesFp64("LayerNormModulate", (be, r) =>
    {
        var x = be.Upload(r.Normal(B * L * C, 2), B, L, C);
        var shift = be.Upload(r.Normal(B * C), B, C);
        var scale = be.Upload(r.Normal(B * C, 0.5), B, C);
        var y = be.LayerNormModulate(x, shift, scale, 1e-6f, out var stats);
        var (dx, dsh, dsc) = be.LayerNormModulateBackward(be.Upload(r.Normal(B * L * C), B, L, C), x, scale, stats);
        return [be.DownloadDouble(y), be.DownloadDouble(dx), be.DownloadDouble(dsh), be.DownloadDouble(dsc)];
    });

    [Fact]
    public void ResidualLayerNormModulateFp32MatchesFp64() => Fp32MatchesFp64("ResidualLayerNormModulate", (be, r) =>
    {
        var x = be.Upload(r.Normal(B * L * C, 2), B, L, C);
        var gate = be.Upload(r.Normal(B * C), B, C);
        var y = be.Upload(r.Normal(B * L * C), B, L, C);
        var shift = be.Upload(r.Normal(B * C), B, C);
        var scale = be.Upload(r.Normal(B * C, 0.5), B, C);
        var (x1, m) = be.ResidualLayerNormModulate(x, gate, y, shift, scale, 1e-6f, out var stats);
        var (dx1, dy, dg, dsh, dsc) = be.ResidualLayerNormModulateBackward(be.Upload(r.Normal(B * L * C), B, L, C),
            be.Upload(r.Normal(B * L * C), B, L, C), x1, scale, stats, gate, y);
        return [be.DownloadDouble(x1), be.DownloadDouble(m), be.DownloadDouble(dx1), be.DownloadDouble(dy), be.DownloadDouble(dg),
                be.DownloadDouble(dsh), be.DownloadDouble(dsc)];
    });

    [Fact]
    public void RmsNormFp32MatchesFp64() => Fp32MatchesFp64("RmsNorm", (be, r) =>
    {
        var x = be.Upload(r.Normal(B * H * L * D), B, H, L, D);
        var w = be.Upload(r.Uniform(D, 0.5, 1.5), D);
        var y = be.RmsNorm(x, w, 1e-6f, out var rstd);
        var dx = be.RmsNormBackward(be.Upload(r.Normal(B * H * L * D), B, H, L, D), x, w, rstd);
        return [be.DownloadDouble(y), be.DownloadDouble(dx)];
    });
}
