using MetaLoraNative.Cli;
using MetaLoraNative.Cli.Config;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Benchmarks;
using MetaLoraNative.Engine.Flux;

namespace MetaLoraNative.Tests.Config;

/// <summary>--device auto: CUDA when usable, else the CPU, in one logged line; the CPU time warning for FLUX.1-dev sizes.</summary>
public sealed class DeviceAutoTests
{
    [Fact]
    public void AutoPicksCudaWhenUsableElseTheCpuAndSaysWhich()
    {
        bool gpu = MetaLoraNative.Kernels.CudaBackend.TryCreate(out var probe, out _);
        probe?.Dispose();
        var lines = new List<string>();
        using var be = Backends.Create(Backends.Auto, log: lines.Add);
        var line = Assert.Single(lines);
        Assert.StartsWith(gpu ? "device auto: cuda" : "device auto: cpu (no usable GPU", line);
        Assert.Equal(gpu, be is MetaLoraNative.Kernels.CudaBackend);
        Assert.Equal(!gpu, be is CpuBackend<float>);

        lines.Clear();
        using var f64 = Backends.Create(Backends.Auto, fp64: true, log: lines.Add);
        Assert.IsType<CpuBackend<double>>(f64);
        Assert.Contains("fp64", Assert.Single(lines));
    }

    [Theory]
    [InlineData("train", "stage1")]
    [InlineData("train", "stage2")]
    [InlineData("generate")]
    [InlineData("demo")]
    [InlineData("debug", "step")]
    public void AutoIsTheDefaultDevice(params string[] path)
    {
        var r = CommandConfig.Resolve(Program.CreateRoot(), path);
        Assert.Equal(Backends.Auto, r.Options.Single(o => o.Key == "device").Value);
    }

    [Fact]
    public void FluxDevOnTheCpuWarnsWithTheTimeFromTheFlopCount()
    {
        using var cpu = CpuBackend.F32();
        var dev = FluxConfig.FluxDev;
        double expected = StepBenchmark.Flop(dev, 1024, 512).Train / Backends.CpuFlopsPerSecond;
        Assert.Equal(expected, Backends.CpuSecondsPerStep(dev, 1024, 512), 6);
        Assert.Equal(4 * expected, Backends.CpuSecondsPerStep(dev, 1024, 512, batch: 4), 6);
        Assert.True(expected > 3600, $"{expected} s");   // hours per step: the reason for the warning
        string warning = Backends.SlowCpuWarning(cpu, dev, 1024, 512)!;
        Assert.Contains("flux-dev-sized model on the CPU", warning);
        Assert.Contains(expected < 172800 ? $"{expected / 3600:0.0} h per step" : $"{expected / 86400:0.0} days per step", warning);
        Assert.Null(Backends.SlowCpuWarning(cpu, FluxConfig.Tiny, 1024, 512));
    }
}
