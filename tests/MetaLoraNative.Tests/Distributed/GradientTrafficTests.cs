using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Distributed;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Distributed;

/// <summary>The gradient traffic behind the scaling estimate in docs/DISTRIBUTED.md.</summary>
public class GradientTrafficTests(ITestOutputHelper output)
{
    [Fact]
    public void CountsMatchTheAdaptersOwnTensors()
    {
        var c = FluxConfig.Tiny;
        var traffic = GradientTraffic.For(c, rank1: 4, rank2: 2);
        using var adapter = LoraAdapter.Create(CpuBackend.F32(), c, FluxNames.LoraTargets(c), LoraMode.Meta, 4, 2, seed: 1);
        var identity = adapter.AddIdentity("a", 2);
        Assert.Equal(adapter.Targets.Count, traffic.Targets);
        Assert.Equal(adapter.Down.Sum(d => d.Value.Length), traffic.DownParameters);
        Assert.Equal(identity.Mid.Sum(m => m!.Value.Length), traffic.MidParametersPerIdentity);
        Assert.Equal(identity.Up.Sum(u => u.Value.Length), traffic.UpParametersPerIdentity);
        Assert.Equal(4 * (traffic.DownParameters + 3 * (traffic.MidParametersPerIdentity + traffic.UpParametersPerIdentity)),
                     traffic.BytesPerStep(3));
    }

    [Fact]
    public void RingAllReduceSendsTwiceTheShareOfEachGpu()
    {
        Assert.Equal(0, GradientTraffic.RingAllReduceSeconds(1000, 1, 1e9));
        Assert.Equal(1000 / 1e9, GradientTraffic.RingAllReduceSeconds(1000, 2, 1e9), 15);
        Assert.Equal(1.75 * 1000 / 1e9, GradientTraffic.RingAllReduceSeconds(1000, 8, 1e9), 15);
        Assert.Equal(0.8, GradientTraffic.Efficiency(0.4, 0.1), 12);
    }

    /// <summary>The figures docs/DISTRIBUTED.md quotes: flux-dev, 494 targets, r1 16, r2 1, eight GPUs.</summary>
    [Fact]
    public void FluxDevOnEightGpus()
    {
        var traffic = GradientTraffic.For(FluxConfig.FluxDev, rank1: 16, rank2: 1);
        Assert.Equal(494, traffic.Targets);
        (string, double)[] links = [("NVLink 4 (H100 SXM)", 450e9), ("PCIe 5.0 x16", 50e9), ("PCIe 4.0 x16", 25e9)];
        foreach (int identities in new[] { 8, 32 })
            foreach (string line in traffic.Report(8, identities, links, [0.4, 0.8])) output.WriteLine(line);
        // Every D row is r1 · d_in and d_in is 3072 for all but the MLP-out linears (12288) and linear2 (15360).
        Assert.Equal(16L * (19 * (12 * 3072 + 2 * 12288) + 38 * (5 * 3072 + 15360)), traffic.DownParameters);
    }
}
