using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Tests.Testing;
using MetaLoraNative.Tests.Training;

namespace MetaLoraNative.Tests.Model;

/// <summary>
/// A diffusers transformer folder takes its RoPE axes ("axes_dims_rope") and base ("theta") from its config.json,
/// checked strictly, each fault naming the file and the key.
/// </summary>
public sealed class DiffusersConfigTests() : TempFolderTest("dconfig")
{
    /// <summary>The tiny model as a diffusers folder whose shards carry no flux.* metadata: only config.json can say the axes.</summary>
    string Folder(string? config)
    {
        string folder = CheckpointLayoutTests.WriteDiffusers(dir, FluxConfig.Tiny, 8);
        foreach (var shard in Directory.GetFiles(folder, "*.safetensors"))
            SafetensorsEdit.Rewrite(shard, (_, meta) => meta.Clear());
        if (config != null) File.WriteAllText(Path.Combine(folder, "config.json"), config);
        return folder;
    }

    [Fact]
    public void AxesAndThetaComeFromConfigJson()
    {
        using var be = CpuBackend.F32();
        string folder = Folder("""{"_class_name": "FluxTransformer2DModel", "attention_head_dim": 16, "axes_dims_rope": [2, 6, 8], "theta": 500}""");
        using var w = FluxLoader.Load(folder, be);
        Assert.Equal([2, 6, 8], w.Config.AxesDim);
        Assert.Equal(500f, w.Config.Theta);
        Assert.Equal("tiny", w.Config.Name);
        // without theta (FluxTransformer2DModel registers none): FLUX's 10,000; the index file and the folder read alike
        File.WriteAllText(Path.Combine(folder, "config.json"), """{"axes_dims_rope": [4, 6, 6]}""");
        var c = FluxLoader.Inspect(Path.Combine(folder, "diffusion_pytorch_model.safetensors.index.json"));
        Assert.Equal([4, 6, 6], c.AxesDim);
        Assert.Equal(FluxConfig.FluxTheta, c.Theta);
    }

    [Fact]
    public void WithoutConfigJsonAHeadDimOtherThanFluxsIsAnError()
    {
        var e = Assert.Throws<InvalidDataException>(() => FluxLoader.Inspect(Folder(null)));
        Assert.Contains("flux.axes_dim", e.Message);
    }

    [Theory]
    [InlineData("""{"axes_dims_rope": [4, 6, 7]}""", "'axes_dims_rope' is [4, 6, 7]: expected a list of positive even integers")]
    [InlineData("""{"axes_dims_rope": [4, -6, 18]}""", "'axes_dims_rope' is [4, -6, 18]")]
    [InlineData("""{"axes_dims_rope": "16,56,56"}""", "'axes_dims_rope' is \"16,56,56\"")]
    [InlineData("""{"axes_dims_rope": []}""", "'axes_dims_rope' is []")]
    [InlineData("""{"axes_dims_rope": [4, 6, 8]}""", "'axes_dims_rope' [4, 6, 8] sums to 18, but the checkpoint's head dim is 16")]
    [InlineData("""{"axes_dims_rope": [4, 6, 6], "theta": 1}""", "'theta' is 1: expected a finite number > 1")]
    [InlineData("""{"axes_dims_rope": [4, 6, 6], "theta": "10000"}""", "'theta' is \"10000\"")]
    [InlineData("""{"axes_dims_rope": [4, 6, 6], "theta": 1e300}""", "'theta' is 1e300")]
    [InlineData("""{"axes_dims_rope": [4, 6""", "is not valid JSON")]
    [InlineData("""[16, 56, 56]""", "expected the transformer's config object")]
    public void ABadConfigJsonIsRefusedNamingTheFileAndTheKey(string json, string fault)
    {
        string folder = Folder(json);
        using var be = CpuBackend.F32();
        var e = Assert.Throws<InputFileException>(() => FluxLoader.Load(folder, be));
        Assert.StartsWith(Path.GetFullPath(Path.Combine(folder, "config.json")) + ": ", e.Message);
        Assert.Contains(fault, e.Message);
    }

    [Fact]
    public void ConfigJsonAndTheShardsMetadataMustAgree()
    {
        string folder = CheckpointLayoutTests.WriteDiffusers(dir, FluxConfig.Tiny, 8);   // shard 0 says flux.axes_dim 4,6,6
        File.WriteAllText(Path.Combine(folder, "config.json"), """{"axes_dims_rope": [2, 6, 8]}""");
        var e = Assert.Throws<InputFileException>(() => FluxLoader.Inspect(folder));
        Assert.Contains("says flux.axes_dim = 2,6,8", e.Message);
        Assert.Contains("'4,6,6'", e.Message);
        File.WriteAllText(Path.Combine(folder, "config.json"), """{"axes_dims_rope": [4, 6, 6]}""");
        Assert.Equal([4, 6, 6], FluxLoader.Inspect(folder).AxesDim);
    }
}
