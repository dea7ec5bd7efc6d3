using MetaLoraNative.Engine.Flux;

namespace MetaLoraNative.Tests.Model;

public class FluxConfigTests
{
    [Fact]
    public void FluxDevHasAboutTwelveBillionParameters()
    {
        long n = FluxConfig.FluxDev.ParameterCount();
        Assert.InRange(n, 11_800_000_000L, 12_000_000_000L);
    }

    [Fact]
    public void FluxDevHasAiToolkitsFourHundredNinetyFourTargets()
    {
        var targets = FluxNames.LoraTargets(FluxConfig.FluxDev);
        Assert.Equal(494, targets.Count);
        Assert.Equal(19 * 14, targets.Count(t => t.Name.StartsWith("transformer.transformer_blocks.")));
        Assert.Equal(38 * 6, targets.Count(t => t.Name.StartsWith("transformer.single_transformer_blocks.")));
        Assert.Equal(targets.Count, targets.Select(t => t.Name).Distinct().Count());
    }

    [Theory]
    [InlineData("transformer.transformer_blocks.0.attn.to_q", "double_blocks.0.img_attn.qkv", 0, 3072)]
    [InlineData("transformer.transformer_blocks.0.attn.to_v", "double_blocks.0.img_attn.qkv", 6144, 3072)]
    [InlineData("transformer.transformer_blocks.5.attn.add_k_proj", "double_blocks.5.txt_attn.qkv", 3072, 3072)]
    [InlineData("transformer.transformer_blocks.18.ff_context.net.2", "double_blocks.18.txt_mlp.2", 0, 3072)]
    [InlineData("transformer.transformer_blocks.3.norm1_context.linear", "double_blocks.3.txt_mod.lin", 0, 18432)]
    [InlineData("transformer.single_transformer_blocks.37.proj_mlp", "single_blocks.37.linear1", 9216, 12288)]
    [InlineData("transformer.single_transformer_blocks.2.proj_out", "single_blocks.2.linear2", 0, 3072)]
    [InlineData("transformer.single_transformer_blocks.0.norm.linear", "single_blocks.0.modulation.lin", 0, 9216)]
    public void TargetsLiveInTheRightRowsOfTheFusedBflLinears(string name, string module, int rowStart, int rows)
    {
        var t = FluxNames.LoraTargets(FluxConfig.FluxDev).Single(x => x.Name == name);
        Assert.Equal(module, t.BflModule);
        Assert.Equal(rowStart, t.RowStart);
        Assert.Equal(rows, t.Rows);
    }

    [Fact]
    public void IncludeAndExcludeFiltersSelectTargetKinds()
    {
        var qOnly = FluxNames.LoraTargets(FluxConfig.FluxDev, include: ["to_q"]);
        Assert.Equal(19 + 38, qOnly.Count);
        var noMod = FluxNames.LoraTargets(FluxConfig.FluxDev, exclude: ["norm1.linear", "norm1_context.linear", "norm.linear"]);
        Assert.Equal(494 - 19 * 2 - 38, noMod.Count);
    }

    [Theory]
    [InlineData("flux-dev")]
    [InlineData("flux-schnell")]
    [InlineData("tiny")]
    [InlineData("micro")]
    public void ConfigIsDetectedFromNamesAndShapes(string preset)
    {
        var c = FluxConfig.Preset(preset);
        var shapes = c.TensorShapes().ToDictionary(t => t.Name, t => t.Shape);
        var detected = FluxConfig.Detect(shapes, c.ToMetadata(), "test");
        Assert.Equal(c with { Name = detected.Name }, detected with { AxesDim = c.AxesDim });
        Assert.Equal(c.AxesDim, detected.AxesDim);
        Assert.Equal(c.Name, detected.Name);
    }

    /// <summary>A missing embedder fails naming it; a block that lost its probe tensor is reported, not silently dropped.</summary>
    [Theory]
    [InlineData("img_in.weight", "img_in.weight")]
    [InlineData("double_blocks.1.img_attn.qkv.weight", "double_blocks.1.")]
    [InlineData("single_blocks.0.linear1.weight", "single_blocks.0.")]
    public void ACheckpointMissingATensorFailsNamingIt(string removed, string named)
    {
        var shapes = FluxConfig.Tiny.TensorShapes().Where(t => t.Name != removed).ToDictionary(t => t.Name, t => t.Shape);
        var e = Assert.Throws<InvalidDataException>(() => FluxConfig.Detect(shapes, FluxConfig.Tiny.ToMetadata(), "broken.safetensors"));
        Assert.Contains("broken.safetensors", e.Message);
        Assert.Contains(named, e.Message);
    }

    [Fact]
    public void ANonFluxHeadDimWithoutAxesMetadataIsRefused()
    {
        var shapes = FluxConfig.Tiny.TensorShapes().ToDictionary(t => t.Name, t => t.Shape);
        var e = Assert.Throws<InvalidDataException>(() => FluxConfig.Detect(shapes, null, "tiny.safetensors"));
        Assert.Contains("flux.axes_dim", e.Message);
    }

    [Fact]
    public void EveryRuleCoversEveryBflTensorExactlyOnce()
    {
        foreach (var c in FluxConfig.Presets)
        {
            var covered = FluxNames.Rules(c).SelectMany(r => r.Suffixes.Select(suffix => r.Bfl + suffix)).ToList();
            Assert.Equal(covered.Count, covered.Distinct().Count());
            Assert.Equal(c.TensorShapes().Select(t => t.Name).Order(), covered.Order());
        }
    }

    [Fact]
    public void TheLayoutForDetectionIsTheTableWithoutRowSizes()
    {
        var c = FluxConfig.Tiny;
        var rules = FluxNames.Rules(c);
        var layout = FluxNames.Layout(c.GuidanceEmbed, c.Depth, c.DepthSingleBlocks);
        Assert.Equal(rules.Select(r => (r.Bfl, string.Join(",", r.Diffusers), r.Join)), layout.Select(r => (r.Bfl, string.Join(",", r.Diffusers), r.Join)));
        Assert.All(layout, r => Assert.Null(r.RowSizes));
        // the fused linears' parts add up to the BFL linear's rows
        var shapes = c.TensorShapes().ToDictionary(t => t.Name, t => t.Shape);
        foreach (var r in rules.Where(r => r.Join == NameJoin.RowConcat))
            Assert.Equal(shapes[r.Bfl + ".weight"][0], r.RowSizes!.Sum());
    }

    [Fact]
    public void FluxDevWithoutMetadataGetsBflsRopeAxesAndTheta()
    {
        var shapes = FluxConfig.FluxDev.TensorShapes().ToDictionary(t => t.Name, t => t.Shape);
        var detected = FluxConfig.Detect(shapes, null, "flux1-dev.safetensors");
        Assert.Equal("flux-dev", detected.Name);
        Assert.Equal([16, 56, 56], detected.AxesDim);
        Assert.Equal(10_000f, detected.Theta);
        Assert.Equal(detected.HeadDim, detected.AxesDim.Sum());
    }
}
