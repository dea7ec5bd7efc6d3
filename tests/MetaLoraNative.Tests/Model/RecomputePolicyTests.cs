using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Training;

namespace MetaLoraNative.Tests.Model;

/// <summary>The recomputation policy: on/off as asked, auto from the activations' size against free device memory.</summary>
public class RecomputePolicyTests
{
    const long GiB = 1L << 30;

    [Fact]
    public void AutoPolicyKeepsActivationsOnHostMemoryBackends()
    {
        using var be = CpuBackend.F32();
        using var w = FluxWeights.Random(FluxConfig.Micro, be, 1);
        var m = new FluxModel(w);
        Assert.False(RecomputePolicy.Auto.Decide(m, 1, 1024, 512, out var why));
        Assert.Contains("host memory", why);
        Assert.True(RecomputePolicy.On.Decide(m, 1, 1024, 512, out _));
        // flux-dev at 1024² keeps tens of GiB of activations: what PyTorch measures without recomputation (~34 GiB)
        var dev = FluxConfig.FluxDev;
        long perToken = (24L * dev.Depth + 19L * dev.DepthSingleBlocks) * dev.HiddenSize * 2;
        Assert.InRange(perToken * (4096 + 512) / (double)(1L << 30), 25, 45);
    }

    [Fact]
    public void AutoRecomputesOnlyWhenActivationsAndTheirMarginExceedFreeDeviceMemory()
    {
        // 32 GiB of activations need 40 GiB with the 25% margin
        Assert.True(RecomputePolicy.Auto.Decide(32 * GiB, (39 * GiB, 80 * GiB), out var tight));
        Assert.StartsWith("recomputation on", tight);
        Assert.Contains("40.0 GiB", tight);
        Assert.False(RecomputePolicy.Auto.Decide(32 * GiB, (41 * GiB, 80 * GiB), out var roomy));
        Assert.StartsWith("recomputation off", roomy);
        // asked for explicitly, memory does not matter
        Assert.False(RecomputePolicy.Off.Decide(32 * GiB, (1 * GiB, 80 * GiB), out _));
        Assert.True(RecomputePolicy.On.Decide(1, (80 * GiB, 80 * GiB), out _));
    }

    [Fact]
    public void PolicyNamesParseAndAnUnknownOneIsAClearError()
    {
        Assert.Same(RecomputePolicy.Auto, RecomputePolicy.Parse("auto"));
        Assert.Same(RecomputePolicy.On, RecomputePolicy.Parse("on"));
        Assert.Same(RecomputePolicy.Off, RecomputePolicy.Parse("off"));
        var e = Assert.Throws<InputException>(() => RecomputePolicy.Parse("sometimes"));
        Assert.Contains("sometimes", e.Message);
        Assert.Contains("auto, on, off", e.Message);
    }
}
