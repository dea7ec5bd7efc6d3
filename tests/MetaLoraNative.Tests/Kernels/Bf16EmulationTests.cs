using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Kernels.Verification;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Kernels;

/// <summary>
/// The CPU side of the whole-model CUDA checks (always runs): the bf16-emulating engine and the fp64 oracle run the
/// tiny model and Stage 2 as the checks do; the emulation's error is clearly nonzero (it rounds) yet small.
/// </summary>
public class Bf16EmulationTests(ITestOutputHelper output)
{
    static double RelMax(double[] a, double[] r) => a.Zip(r, (x, y) => Math.Abs(x - y)).Max() / r.Max(Math.Abs);

    [Fact]
    public void TinyModelUnderBf16EmulationStaysCloseToFp64()
    {
        using var f64 = CpuBackend.F64();
        using var emu = new Bf16EmulationBackend();
        var r = CudaParity.RunTinyModel(f64);
        var e = CudaParity.RunTinyModel(emu);
        double outErr = RelMax(e.Output, r.Output);
        output.WriteLine($"output: relative max error {outErr:E3}; loss {e.Loss} vs {r.Loss}");
        Assert.InRange(outErr, 1e-5, 5e-2);
        Assert.Equal(r.Grads.Length, e.Grads.Length);
        Assert.True(r.Grads.Length > 0);
        double worst = r.Grads.Zip(e.Grads, (a, b) => RelMax(b.Grad, a.Grad)).Max();
        output.WriteLine($"{r.Grads.Length} gradients, worst relative max error {worst:E3}");
        Assert.All(r.Grads, g => Assert.Contains(g.Grad, v => v != 0));
        Assert.InRange(worst, 1e-5, 0.5);
    }

    [Fact]
    public void Stage2CurveUnderBf16EmulationTracksFp64()
    {
        using var f64 = CpuBackend.F64();
        using var emu = new Bf16EmulationBackend();
        var (rl, ru) = CudaParity.RunStage2(f64);
        var (el, eu) = CudaParity.RunStage2(emu);
        Assert.Equal(CudaParity.Stage2Iterations, rl.Length);
        Assert.Equal(CudaParity.Stage2Iterations, el.Length);
        double curve = rl.Zip(el, (a, b) => Math.Abs(a - b)).Max();
        output.WriteLine($"loss curve: max |emu − fp64| {curve:E3}, losses {rl[0]:F4} … {rl[^1]:F4}; U max |diff| {ru.Zip(eu, (a, b) => Math.Abs(a - b)).Max():E3} of {ru.Max(Math.Abs):E3}");
        Assert.True(curve < 0.05 * rl.Max(), $"curve error {curve}");
        Assert.Contains(ru, v => v != 0);
    }
}
