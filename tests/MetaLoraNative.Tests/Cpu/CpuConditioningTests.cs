using MetaLoraNative.Engine;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cpu;

/// <summary>The Conditioning group on the CPU (CpuBackend.Conditioning.cs): the timestep embedding, the gated residual.</summary>
public sealed class CpuConditioningTests(ITestOutputHelper output) : CpuOpTests(output)
{
    // ---------------------------------------------------------------- forward

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

    // ---------------------------------------------------------------- backward (finite differences)

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

    // ---------------------------------------------------------------- fp32 vs fp64

    [Fact]
    public void TimestepEmbeddingFp32MatchesFp64() => Fp32MatchesFp64("TimestepEmbedding", (be, r) =>
    {
        // fp32 keeps t to 2^-24 ≈ 6e-8 and the largest argument is 1000·t, so exact fp32 inputs matter here.
        var t = be.Upload(r.Uniform(B * 4, 0, 1), B * 4);
        return [be.DownloadDouble(be.TimestepEmbedding(t, 256)), be.DownloadDouble(be.TimestepEmbedding(t, 255))];
    });

    [Fact]
    public void GatedResidualFp32MatchesFp64() => Fp32MatchesFp64("GatedResidual", (be, r) =>
    {
        var x = be.Upload(r.Normal(B * L * C), B, L, C);
        var g = be.Upload(r.Normal(B * C), B, C);
        var y = be.Upload(r.Normal(B * L * C), B, L, C);
        var (dy, dg) = be.GatedResidualBackward(be.Upload(r.Normal(B * L * C), B, L, C), g, y);
        return [be.DownloadDouble(be.GatedResidual(x, g, y)), be.DownloadDouble(dy), be.DownloadDouble(dg)];
    });
}
