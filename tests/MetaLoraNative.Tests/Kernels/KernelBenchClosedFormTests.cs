using MetaLoraNative.Engine;
using MetaLoraNative.Kernels.Verification;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Kernels;

/// <summary>
/// The playground benches' closed forms on the CPU (no GPU needed): each bench's code, the same that times the GPU
/// at FLUX.1-dev's sizes, run at a small shape on the fp64 oracle and on the bf16-emulating CPU engine, whose
/// outputs must then have the values the bench's check expects (a bench whose expected value is wrong would call a
/// correct kernel WRONG, or a wrong one right). The timer calls the op once and then the repetitions, as
/// CudaBackend.TimeMs does, so the checks that count calls (dM accumulates) see the same count.
/// </summary>
public class KernelBenchClosedFormTests(ITestOutputHelper output)
{
    static float Calls(Action call, int repetitions)
    {
        for (int i = 0; i <= repetitions; i++) call();
        return 1f;
    }

    static IBackend Backend(string kind) => kind == "fp64" ? CudaParity.Oracle() : new Bf16EmulationBackend();

    void Assert(BenchResult r)
    {
        output.WriteLine($"{r.Name}: {r.Check}");
        Xunit.Assert.True(r.Valid, r.Check);
        Xunit.Assert.All(r.Timings, t => Xunit.Assert.True(t.Ms > 0));
    }

    public static TheoryData<string, int> Cases() => new() { { "fp64", 1 }, { "fp64", 2 }, { "bf16", 1 }, { "bf16", 2 } };

    [Theory]
    [MemberData(nameof(Cases))]
    public void GroupedGemm(string kind, int version)
    {
        using var be = Backend(kind);
        // r2 2, modules of d_in 64 (3 targets), 96 (1), 40 (2): each its own dM closed form
        Assert(KernelBenches.GroupedGemm(be, new KernelBenches.GroupedBenchShape(4, 2, [(64, 3), (96, 1), (40, 2)]), version, Calls));
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void GeluEpilogue(string kind, int version)
    {
        using var be = Backend(kind);
        Assert(KernelBenches.GeluEpilogue(be, new KernelBenches.GeluBenchShape(5, 64, 48), version, Calls));
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void GeluStrided(string kind, int version)
    {
        using var be = Backend(kind);
        Assert(KernelBenches.GeluStrided(be, new KernelBenches.GeluBenchShape(7, 16, 40), version, Calls));
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void QkvNormRope(string kind, int version)
    {
        using var be = Backend(kind);
        Assert(KernelBenches.QkvNormRope(be, new KernelBenches.QkvBenchShape(9, 2, 16), version, Calls));
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Fp8Linear(string kind, int version)
    {
        using var be = Backend(kind);
        Assert(KernelBenches.Fp8Linear(be, new KernelBenches.Fp8BenchShape(6, 64, 32), version, Calls));
    }

    /// <summary>The FLUX.1-dev shapes the GPU benches run: 494 targets in 304 modules, the 1024² MLP, qkv and sequence.</summary>
    [Fact]
    public void TheBenchesRunAtFluxDevShapes()
    {
        var g = KernelBenches.GroupedFluxDev;
        Xunit.Assert.Equal((16, 1, 494, 304), (g.R1, g.R2, g.Targets, g.Modules.Count));
        Xunit.Assert.Equal([3072, 12288, 15360], g.Modules.Select(m => m.DIn).Distinct().Order());
        Xunit.Assert.Equal(new KernelBenches.GeluBenchShape(4608, 3072, 12288), KernelBenches.GeluFluxDev);
        Xunit.Assert.Equal(new KernelBenches.QkvBenchShape(4608, 24, 128), KernelBenches.QkvFluxDev);
        Xunit.Assert.Equal(new KernelBenches.Fp8BenchShape(4608, 3072, 9216), KernelBenches.Fp8FluxDev);
    }

    /// <summary>Every playground version that lacked a bench has one beside its version 1, and every Dev bench is findable.</summary>
    [Fact]
    public void EveryNewBenchIsListedBesideItsVersionOne()
    {
        var dev = KernelBenches.Dev.Select(b => b.Name).ToArray();
        string[][] pairs =
        [
            ["gemm group v1", "gemm group g2"], ["gelu-epilogue v1", "gelu-epilogue v2"], ["gelu strided v1", "gelu strided v2"],
            ["qkv_norm_rope v1", "qkv_norm_rope v2"], ["linear w8a16", "linear w8a8"],
        ];
        foreach (var pair in pairs)
        {
            int v1 = Array.IndexOf(dev, pair[0]), v2 = Array.IndexOf(dev, pair[1]);
            Xunit.Assert.True(v1 >= 0 && v2 == v1 + 1, $"{pair[0]} then {pair[1]} in KernelBenches.Dev");
        }
        Xunit.Assert.Equal(dev.Length, dev.Distinct().Count());
        Xunit.Assert.All(pairs.SelectMany(p => p), n => Xunit.Assert.True(n.Length <= 20, $"'{n}' is wider than the bench table's name column"));
        Xunit.Assert.All(dev, n => Xunit.Assert.Same(n, KernelBenches.Find(n).Name));
    }
}
