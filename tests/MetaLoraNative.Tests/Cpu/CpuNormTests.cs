using MetaLoraNative.Engine;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cpu;

/// <summary>The Norm group on the CPU (CpuBackend.Norm.cs): LayerNorm with modulation, RMSNorm.</summary>
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
    public void RmsNormFp32MatchesFp64() => Fp32MatchesFp64("RmsNorm", (be, r) =>
    {
        var x = be.Upload(r.Normal(B * H * L * D), B, H, L, D);
        var w = be.Upload(r.Uniform(D, 0.5, 1.5), D);
        var y = be.RmsNorm(x, w, 1e-6f, out var rstd);
        var dx = be.RmsNormBackward(be.Upload(r.Normal(B * H * L * D), B, H, L, D), x, w, rstd);
        return [be.DownloadDouble(y), be.DownloadDouble(dx)];
    });
}
