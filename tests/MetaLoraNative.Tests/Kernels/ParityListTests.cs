using MetaLoraNative.Engine;
using MetaLoraNative.Kernels;
using MetaLoraNative.Kernels.Verification;

namespace MetaLoraNative.Tests.Kernels;

/// <summary>
/// The lists of CUDA parity checks and kernel benches (no GPU needed): names unique and findable, every op group
/// of IBackend checked, the attention cases all registered, the playground's checks kept apart from the engine's.
/// </summary>
public class ParityListTests
{
    static readonly string[] Groups = ["Memory", "Gemm", "Elementwise", "Layout", "Norm", "Attention", "Conditioning", "Objective", "Lora", "Quant", "Model"];

    [Fact]
    public void EveryCheckHasAUniqueNameAndAGroup()
    {
        var names = CudaParity.All.Concat(CudaParity.Dev).Select(c => c.Name).ToArray();
        Assert.Equal(names.Length, names.Distinct().Count());
        Assert.All(names, n => Assert.Same(n, CudaParity.Find(n).Name));
        Assert.Equal(Groups, CudaParity.All.Select(c => c.Group).Distinct());   // every group, in IBackend's order
        Assert.All(CudaParity.Dev, c => Assert.Contains(c.Group, Groups));
        Assert.Throws<InputException>(() => CudaParity.Find("no such check"));
    }

    [Fact]
    public void EveryAttentionCaseIsACheck()
    {
        Assert.Equal(CudaParity.AttentionCases.Length, CudaParity.All.Count(c => c.Name.StartsWith("attention ", StringComparison.Ordinal)));
        // the at-scale comparison runs for the three playground versions (2, 3, and 3 + 4)
        Assert.Equal(CudaParity.AttentionMmaCases.Length + 3 * CudaParity.AttentionAtScaleCases.Length,
                     CudaParity.Dev.Count(c => c.Name.StartsWith("attention ", StringComparison.Ordinal)));
    }

    /// <summary>
    /// Every playground check names the playground version it runs, and no engine check names one: the tags of
    /// kernels/dev/README.md's table (attention versions 2, 3 and 4; the GEMM group's 2; the GELU fusions; the
    /// fused residual-norm and qkv_norm_rope; the W8A8 product; the LoRA up backward).
    /// </summary>
    [Fact]
    public void EveryPlaygroundCheckNamesItsVersionAndNoEngineCheckDoes()
    {
        string[] playground = ["tc", "p3", "onepass", "g2", "gelu", "gelu-epilogue", "residual-norm", "qkv_norm_rope", "w8a8", "vec16", "upback"];
        static IEnumerable<string> Tokens(ParityCheck c) => c.Name.Split(' ', '/');
        Assert.All(CudaParity.All, c => Assert.Empty(Tokens(c).Intersect(playground)));
        Assert.All(CudaParity.Dev, c => Assert.NotEmpty(Tokens(c).Intersect(playground)));
        // and every tag has at least one check: a version no check exercises cannot be promoted
        Assert.All(playground, tag => Assert.Contains(CudaParity.Dev, c => Tokens(c).Contains(tag)));
        // the qkv_norm_rope cases are all registered
        Assert.Equal(CudaParity.QkvNormRopeCases.Length, CudaParity.Dev.Count(c => c.Name.StartsWith("qkv_norm_rope ", StringComparison.Ordinal)));
    }

    /// <summary>LoraUpBackward version 2: every case a check, FLUX.1-dev's rows (3,072 and 12,288 at n 4,608) at r2 1 and 4, its bench beside version 1's.</summary>
    [Fact]
    public void EveryLoraUpBackwardCaseIsACheckAndTheFluxShapesAreThere()
    {
        var checks = CudaParity.Dev.Where(c => c.Name.StartsWith("lora upback v2 ", StringComparison.Ordinal)).ToArray();
        Assert.Equal(CudaParity.LoraUpBackwardCases.Length, checks.Length);
        Assert.All(checks, c => Assert.Equal("Gemm", c.Group));
        foreach (int rows in new[] { 3072, 12288 })
            foreach (int r in new[] { 1, 4 })
            {
                Assert.Contains(CudaParity.LoraUpBackwardCases, c => (c.N, c.Rows, c.R, c.WithDu) == (4608, rows, r, true));
                Assert.True(CudaParity.Find($"lora upback v2 n4608 rows{rows} r{r}").Slow);
            }
        Assert.Contains(CudaParity.LoraUpBackwardCases, c => c.R > LoraUpBackwardPlan.MaxR);   // the fallback under the switch
        Assert.Contains(CudaParity.LoraUpBackwardCases, c => c.S % 8 != 0);                    // scalar loads
        Assert.Contains(CudaParity.LoraUpBackwardCases, c => !c.WithDu);
        Assert.Contains("lora upback v1", KernelBenches.Dev.Select(b => b.Name));
        Assert.Contains("lora upback v2", KernelBenches.Dev.Select(b => b.Name));
    }

    [Fact]
    public void EveryResidualNormCaseIsACheckAndTheFluxShapeIsOne()
    {
        var checks = CudaParity.Dev.Where(c => c.Name.StartsWith("residual-norm ", StringComparison.Ordinal)).ToArray();
        Assert.Equal(CudaParity.ResidualNormCases.Length, checks.Length);
        Assert.All(checks, c => Assert.Equal("Norm", c.Group));
        Assert.All(CudaParity.All, c => Assert.DoesNotContain("residual-norm", c.Name));
        // FLUX.1-dev at 1024² against fp64, slow; version 1 (the engine's ops) and a C off the 16-byte rule checked too
        Assert.Contains(CudaParity.ResidualNormCases, c => (c.B, c.L, c.C, c.Version) == (1, 4608, 3072, 2));
        Assert.True(CudaParity.Find("residual-norm v2 1x4608x3072").Slow);
        Assert.Contains(CudaParity.ResidualNormCases, c => c.Version == 1);
        Assert.Contains(CudaParity.ResidualNormCases, c => c.C % 8 != 0);
        Assert.Contains(CudaParity.Dev, c => c.Name == "model residual-norm v2" && c.Group == "Norm");
        Assert.Contains("residual-norm v2", KernelBenches.Dev.Select(b => b.Name));
    }

    /// <summary>
    /// The 16-byte elementwise and layout kernels (vec16): every case registered in its op's group, an aligned and an
    /// unaligned case of each kernel family (so both version 2 and its fallback run), FLUX's shapes among them, and a
    /// bench beside version 1's.
    /// </summary>
    [Fact]
    public void EveryVec16CaseIsACheckWithBothRoutesAndTheFluxShapes()
    {
        int Count(string prefix, string group) =>
            CudaParity.Dev.Count(c => c.Name.StartsWith(prefix, StringComparison.Ordinal) && c.Group == group);
        Assert.Equal(CudaParity.ElementwiseVecCases.Length, Count("vec16 elementwise ", "Elementwise"));
        Assert.Equal(CudaParity.LayoutVecCases.Length + 1, Count("vec16 layout ", "Layout"));
        Assert.Equal(CudaParity.QkvVecCases.Length, Count("vec16 qkv ", "Layout"));
        Assert.Equal(CudaParity.GatedResidualVecCases.Length, Count("vec16 gated-residual ", "Conditioning"));
        Assert.Contains(CudaParity.ElementwiseVecCases, c => (long)c.Rows * c.Cols % 8 == 0);
        Assert.Contains(CudaParity.ElementwiseVecCases, c => (long)c.Rows * c.Cols % 8 != 0);
        Assert.Contains(CudaParity.ElementwiseVecCases, c => (c.Rows, c.Cols) == (4608, 12288));
        Assert.Contains(CudaParity.LayoutVecCases, c => c.C % 8 == 0);
        Assert.Contains(CudaParity.LayoutVecCases, c => c.C % 8 != 0);
        Assert.Contains(CudaParity.QkvVecCases, c => c.D % 8 != 0);
        Assert.Contains(CudaParity.QkvVecCases, c => c == (1, 4608, 24, 128));
        Assert.Contains(CudaParity.GatedResidualVecCases, c => c.C % 8 != 0);
        Assert.Contains(CudaParity.GatedResidualVecCases, c => c == (1, 4608, 3072));
        Assert.True(CudaParity.Find("vec16 elementwise 4608x12288").Slow);
        Assert.True(CudaParity.Find("vec16 layout flux").Slow);
        foreach (string b in new[] { "elementwise v1", "elementwise vec16", "layout v1", "layout vec16" })
            Assert.Contains(b, KernelBenches.Dev.Select(x => x.Name));
    }

    /// <summary>The real shapes: every LoRA kind at flux-dev's widths, the flux-width model at 256² and 512², attention at 1,536 and 4,608.</summary>
    [Fact]
    public void TheRealShapesAreChecked()
    {
        var kinds = LoraKind.Of(MetaLoraNative.Engine.Flux.FluxConfig.FluxDev);
        // eight (d_in, d_out, slices) kinds cover all 494 targets
        Assert.Equal(8, kinds.Count);
        Assert.Equal(494, MetaLoraNative.Engine.Flux.FluxNames.LoraTargets(MetaLoraNative.Engine.Flux.FluxConfig.FluxDev).Count);
        Assert.Contains(kinds, k => k.Shape == "3072->3x3072");
        Assert.Contains(kinds, k => k.Shape == "3072->3072+3072+3072+12288");
        Assert.Contains(kinds, k => k.Shape == "15360->3072");
        foreach (var k in kinds) Assert.Contains(CudaParity.All, c => c.Group == "Lora" && c.Name == $"lora {k.Module} {k.Shape}");
        foreach (var k in kinds) Assert.Contains(CudaParity.All, c => c.Group == "Lora" && c.Name == $"lora fused {k.Module} {k.Shape}");
        // the D-gradient accumulation check on both stacked modules (qkv, linear1) and a single-target one
        Assert.Equal(3, CudaParity.All.Count(c => c.Name.StartsWith("lora dD fp32 ", StringComparison.Ordinal)));
        Assert.All(CudaParity.All.Where(c => c.Group == "Lora"), c => Assert.False(c.Slow));

        Assert.Equal([256, 1024], CudaParity.FluxWidthCases.Select(c => c.Case.ImageTokens));
        var width = CudaParity.FluxDevOneAndOne;
        Assert.Equal((3072, 24, 128, 12288, 1, 1), (width.HiddenSize, width.NumHeads, width.HeadDim, width.MlpHiddenDim, width.Depth, width.DepthSingleBlocks));
        Assert.Equal([16, 56, 56], width.AxesDim);
        Assert.All(CudaParity.FluxWidthCases, c => Assert.Contains(CudaParity.All, x => x.Name == $"model flux-dev width {c.Side}x{c.Side}" && x.Slow));

        Assert.Equal([1536, 4608], CudaParity.AttentionAtScaleCases.Select(c => c.L));
        Assert.All(CudaParity.AttentionAtScaleCases, c => Assert.Equal((24, 128), (c.H, c.D)));
        Assert.Equal(2, CudaParity.Dev.Count(c => c.Name.StartsWith("attention tc vs scalar ", StringComparison.Ordinal) && c.Slow));
        Assert.Equal(2, CudaParity.Dev.Count(c => c.Name.StartsWith("attention p3 vs scalar ", StringComparison.Ordinal) && c.Slow));
        Assert.Equal(2, CudaParity.Dev.Count(c => c.Name.StartsWith("attention onepass vs scalar ", StringComparison.Ordinal) && c.Slow));
        // version 4's backward under the oracle at the edges of its 64-key block and 16-query tile, and a D it leaves to version 1
        Assert.Equal([1, 17, 65, 77, 130, 300], CudaParity.AttentionMmaCases.Where(c => c.Backward == AttentionKernel.OnePass).Select(c => c.L).Distinct().Order());
        // version 3's forward under the oracle at every edge its tiles have (128 queries, 32 keys)
        Assert.Equal([1, 5, 33, 65, 77, 130, 300], CudaParity.AttentionMmaCases.Where(c => c.Forward == AttentionKernel.Pipelined).Select(c => c.L).Distinct().Order());
    }

    [Fact]
    public void BenchesHaveUniqueNamesAndThePlaygroundsAreApart()
    {
        var names = KernelBenches.All.Concat(KernelBenches.Dev).Select(b => b.Name).ToArray();
        Assert.Equal(names.Length, names.Distinct().Count());
        Assert.All(names, n => Assert.Same(n, KernelBenches.Find(n).Name));
        Assert.Contains("attention scalar", KernelBenches.All.Select(b => b.Name));
        Assert.Contains("attention tc", KernelBenches.Dev.Select(b => b.Name));
        Assert.Contains("attention p3", KernelBenches.Dev.Select(b => b.Name));
        Assert.Contains("attention onepass", KernelBenches.Dev.Select(b => b.Name));
    }
}
