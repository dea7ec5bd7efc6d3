using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cpu;

/// <summary>The Elementwise group on the CPU (CpuBackend.Elementwise.cs): axpy, scale, SiLU, tanh-GELU.</summary>
public sealed class CpuElementwiseTests(ITestOutputHelper output) : CpuOpTests(output)
{
    [Fact]
    public void ATensorOfAnotherBackendIsRejectedNamingThatBackend()
    {
        var ex = Assert.Throws<ArgumentException>(() => _be.AddInPlace(CpuBackend.F32().Zeros(2), _be.Zeros(2)));
        Assert.Contains("cpu-f32", ex.Message);
    }

    // ---------------------------------------------------------------- backward (finite differences)

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

    // ---------------------------------------------------------------- fp32 vs fp64

    [Fact]
    public void SiluFp32MatchesFp64() => Fp32MatchesFp64("Silu", (be, r) => [be.DownloadDouble(be.Silu(be.Upload(r.Normal(B * L * C, 3), B, L, C)))]);

    [Fact]
    public void GeluTanhFp32MatchesFp64() => Fp32MatchesFp64("GeluTanh", (be, r) =>
    {
        var x = be.Upload(r.Normal(B * L * C, 3), B, L, C);
        return [be.DownloadDouble(be.GeluTanh(x)), be.DownloadDouble(be.GeluTanhBackward(x, be.Upload(r.Normal(B * L * C), B, L, C)))];
    });

    [Fact]
    public void AddInPlaceScaleInPlaceFp32MatchesFp64() => Fp32MatchesFp64("AddInPlace/ScaleInPlace", (be, r) =>
    {
        var a = be.Upload(r.Normal(B * L * C), B * L * C);
        be.AddInPlace(a, be.Upload(r.Normal(B * L * C), B * L * C), 0.3f);
        be.ScaleInPlace(a, 1.7f);
        return [be.DownloadDouble(a)];
    });
}
