using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Lora;

namespace MetaLoraNative.Tests.Model;

public sealed class LoraFilesTests : IDisposable
{
    readonly string dir = Directory.CreateTempSubdirectory("metalora-lora-").FullName;
    public void Dispose() => Directory.Delete(dir, recursive: true);

    static double MaxRelDiff(float[] a, float[] b)
    {
        double num = 0, den = 0;
        for (int i = 0; i < a.Length; i++) { num = Math.Max(num, Math.Abs(a[i] - b[i])); den = Math.Max(den, Math.Abs(b[i])); }
        return num / den;
    }

    float[] Run(IBackend be, FluxModel m, LoraAdapter? a, FluxInputs x)
    {
        var binding = a == null ? null : new LoraBinding(a, new int[x.Img.Dim(0)], false, false);
        using var y = m.Predict(x, binding);
        return be.Download(y);
    }

    [Fact]
    public void MergedLoraGivesTheThreeFactorOutput()
    {
        using var be = CpuBackend.F32();
        var c = FluxConfig.Tiny;
        using var w = FluxWeights.Random(c, be, 1);
        var m = new FluxModel(w);
        using var meta = ModelFixture.RandomAdapter(be, c, LoraMode.Meta, 8, 2, 1, 21);
        var (x, t) = ModelFixture.Batch(be, c, 1, 4, 4, 8, 3);
        using var _x = x; using var _t = t;
        var threeFactor = Run(be, m, meta, x);
        var plain = Run(be, m, null, x);

        // runtime: the PEFT export loaded back as a standard LoRA
        string peft = Path.Combine(dir, "a.safetensors");
        LoraFiles.Export(meta, 0, peft, LoraFormat.Peft, SafetensorsDType.F32);
        using (var std = LoraFiles.Load(peft, c, be))
        {
            Assert.Equal(LoraMode.Standard, std.Mode);
            Assert.Equal(2, std.Rank2);
            Assert.True(MaxRelDiff(Run(be, m, std, x), threeFactor) < 1e-5);
        }
        Assert.True(MaxRelDiff(plain, threeFactor) > 1e-3, "the LoRA must change the output for this test to mean anything");

        // merged into W0
        using var w2 = FluxWeights.Random(c, be, 1);
        LoraFiles.MergeInto(w2, meta, 0);
        Assert.True(MaxRelDiff(Run(be, new FluxModel(w2), null, x), threeFactor) < 1e-5);
    }

    [Theory]
    [InlineData(LoraFormat.Peft)]
    [InlineData(LoraFormat.Kohya)]
    public void ExportedFilesRoundTripThroughTheReader(LoraFormat format)
    {
        using var be = CpuBackend.F32();
        var c = FluxConfig.Tiny;
        using var w = FluxWeights.Random(c, be, 1);
        var m = new FluxModel(w);
        using var meta = ModelFixture.RandomAdapter(be, c, LoraMode.Meta, 8, 2, 1, 22);
        var (x, t) = ModelFixture.Batch(be, c, 1, 4, 4, 8, 4);
        using var _x = x; using var _t = t;
        string path = Path.Combine(dir, $"{format}.safetensors");
        LoraFiles.Export(meta, 0, path, format, SafetensorsDType.F32);
        using var back = LoraFiles.Load(path, c, be);
        Assert.Equal(FluxNames.LoraTargets(c).Count, back.Targets.Count);
        Assert.True(MaxRelDiff(Run(be, m, back, x), Run(be, m, meta, x)) < 1e-5);
    }

    [Fact]
    public void PeftKeysAreNamedAsAiToolkitNamesThem()
    {
        using var be = CpuBackend.F32();
        var c = FluxConfig.Tiny;
        using var meta = ModelFixture.RandomAdapter(be, c, LoraMode.Meta, 4, 1, 1, 23);
        string path = Path.Combine(dir, "keys.safetensors");
        LoraFiles.Export(meta, 0, path, LoraFormat.Peft);
        using var f = SafetensorsFile.Open(path);
        var a = f["transformer.transformer_blocks.0.attn.to_q.lora_A.weight"];
        Assert.Equal([1, c.HiddenSize], a.Shape);
        Assert.Equal(SafetensorsDType.BF16, a.DType);
        Assert.Equal([c.HiddenSize, 1], f["transformer.single_transformer_blocks.1.proj_out.lora_B.weight"].Shape);
        Assert.Equal([1, c.HiddenSize + c.MlpHiddenDim], f["transformer.single_transformer_blocks.1.proj_out.lora_A.weight"].Shape);
        Assert.True(f.Contains("transformer.transformer_blocks.1.norm1_context.linear.lora_B.weight"));
        Assert.Equal(2 * FluxNames.LoraTargets(c).Count, f.Entries.Count);
        Assert.Equal("tiny", f.Metadata["metalora.base_model"]);
    }

    [Fact]
    public void KohyaFusesQkvIntoOneStackedFactorPair()
    {
        using var be = CpuBackend.F32();
        var c = FluxConfig.Tiny;
        using var meta = ModelFixture.RandomAdapter(be, c, LoraMode.Meta, 4, 2, 1, 24);
        string path = Path.Combine(dir, "kohya.safetensors");
        LoraFiles.Export(meta, 0, path, LoraFormat.Kohya, SafetensorsDType.F32);
        using var f = SafetensorsFile.Open(path);
        Assert.Equal([6, c.HiddenSize], f["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"].Shape);
        Assert.Equal([3 * c.HiddenSize, 6], f["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"].Shape);
        Assert.Equal(6f, f.ReadFloats("lora_unet_double_blocks_0_img_attn_qkv.alpha")[0]);
        Assert.Equal([8, c.HiddenSize], f["lora_unet_single_blocks_0_linear1.lora_down.weight"].Shape);
    }

    [Fact]
    public void MetaCheckpointRoundTripsExactly()
    {
        using var be = CpuBackend.F32();
        var c = FluxConfig.Tiny;
        using var meta = ModelFixture.RandomAdapter(be, c, LoraMode.Meta, 4, 2, 1, 25);
        string path = Path.Combine(dir, "meta.safetensors");
        LoraFiles.SaveMeta(meta, 0, path);
        using var back = LoraFiles.Load(path, c, be);
        Assert.Equal(LoraMode.Meta, back.Mode);
        for (int t = 0; t < meta.Targets.Count; t++)
        {
            Assert.Equal(be.Download(meta.Down[t].Value), be.Download(back.Down[t].Value));
            Assert.Equal(be.Download(meta.Identities[0].Mid[t]!.Value), be.Download(back.Identities[0].Mid[t]!.Value));
            Assert.Equal(be.Download(meta.Identities[0].Up[t].Value), be.Download(back.Identities[0].Up[t].Value));
        }
    }

    [Fact]
    public void KeysForAnotherModelAreAnErrorNotSilentlyIgnored()
    {
        using var be = CpuBackend.F32();
        string path = Path.Combine(dir, "alien.safetensors");
        SafetensorsWriter.Write(path,
        [
            new("transformer.transformer_blocks.7.attn.to_q.lora_A.weight", [1, 64], new float[64]),
            new("transformer.transformer_blocks.7.attn.to_q.lora_B.weight", [64, 1], new float[64]),
        ]);
        var e = Assert.Throws<InvalidDataException>(() => LoraFiles.Load(path, FluxConfig.Tiny, be));
        Assert.Contains("transformer_blocks.7", e.Message);
        Assert.Contains(path, e.Message);
    }
}
