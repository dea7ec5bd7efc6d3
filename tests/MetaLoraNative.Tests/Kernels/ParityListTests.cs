using MetaLoraNative.Kernels.Verification;

namespace MetaLoraNative.Tests.Kernels;

/// <summary>
/// The lists of CUDA parity checks and kernel benches (no GPU needed): names unique and findable, every op group
/// of IBackend checked, the attention cases all registered, the playground's checks kept apart from the engine's.
/// </summary>
public class ParityListTests
{
    static readonly string[] Groups = ["Memory", "Gemm", "Elementwise", "Layout", "Norm", "Attention", "Conditioning", "Objective", "Quant", "Model"];

    [Fact]
    public void EveryCheckHasAUniqueNameAndAGroup()
    {
        var names = CudaParity.All.Concat(CudaParity.Dev).Select(c => c.Name).ToArray();
        Assert.Equal(names.Length, names.Distinct().Count());
        Assert.All(names, n => Assert.Same(n, CudaParity.Find(n).Name));
        Assert.Equal(Groups, CudaParity.All.Select(c => c.Group).Distinct());   // every group, in IBackend's order
        Assert.All(CudaParity.Dev, c => Assert.Contains(c.Group, Groups));
        Assert.Throws<ArgumentException>(() => CudaParity.Find("no such check"));
    }

    [Fact]
    public void EveryAttentionCaseIsACheck()
    {
        Assert.Equal(CudaParity.AttentionCases.Length, CudaParity.All.Count(c => c.Name.StartsWith("attention ", StringComparison.Ordinal)));
        Assert.Equal(CudaParity.AttentionMmaCases.Length, CudaParity.Dev.Count(c => c.Name.StartsWith("attention ", StringComparison.Ordinal)));
        // The engine's list runs version 1 only; every playground check runs version 2 in at least one direction.
        Assert.All(CudaParity.All, c => Assert.DoesNotContain("tc", c.Name.Split(' ', '/')));
        Assert.All(CudaParity.Dev, c => Assert.Contains("tc", c.Name.Split(' ', '/')));
    }

    [Fact]
    public void BenchesHaveUniqueNamesAndThePlaygroundsAreApart()
    {
        var names = KernelBenches.All.Concat(KernelBenches.Dev).Select(b => b.Name).ToArray();
        Assert.Equal(names.Length, names.Distinct().Count());
        Assert.All(names, n => Assert.Same(n, KernelBenches.Find(n).Name));
        Assert.Contains("attention scalar", KernelBenches.All.Select(b => b.Name));
        Assert.Contains("attention tc", KernelBenches.Dev.Select(b => b.Name));
    }
}
