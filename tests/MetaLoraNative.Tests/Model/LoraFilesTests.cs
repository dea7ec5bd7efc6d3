using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Lora;

namespace MetaLoraNative.Tests.Model;

/// <summary>LoRA files on the tiny model (weights seed 1): merged exports, kohya and Meta layouts, baking into W0.</summary>
public sealed class LoraFilesTests() : TinyModelTest("lora", 1)
{
    static double MaxRelDiff(float[] a, float[] b)
    {
        double num = 0, den = 0;
        for (int i = 0; i < a.Length; i++) { num = Math.Max(num, Math.Abs(a[i] - b[i])); den = Math.Max(den, Math.Abs(b[i])); }
        return num / den;
    }

    float[] Run(FluxModel model, LoraAdapter? a, FluxInputs x)
    {
        var binding = a == null ? null : new LoraBinding(a, new int[x.Img.Dim(0)], false, false);
        using var y = model.Predict(x, binding);
        return be.Download(y);
    }

    [Fact]
    public void MergedAndBakedLorasGiveTheThreeFactorOutput()
    {
        using var meta = ModelFixture.RandomAdapter(be, c, LoraMode.Meta, 8, 2, 1, 21);
        var (x, t) = ModelFixture.Batch(be, c, 1, 4, 4, 8, 3);
        using var _x = x; using var _t = t;
        var threeFactor = Run(m, meta, x);
        var plain = Run(m, null, x);

        // runtime: the PEFT export loaded back as a standard LoRA
        string peft = Path.Combine(dir, "a.safetensors");
        LoraFiles.Export(meta, 0, peft, LoraFormat.Peft, SafetensorsDType.F32);
        using (var std = LoraFiles.Load(peft, c, be))
        {
            Assert.Equal(LoraMode.Standard, std.Mode);
            Assert.Equal(2, std.Rank2);
            Assert.True(MaxRelDiff(Run(m, std, x), threeFactor) < 1e-5);
        }
        Assert.True(MaxRelDiff(plain, threeFactor) > 1e-3, "the LoRA must change the output for this test to mean anything");

        // baked into W0
        using var w2 = FluxWeights.Random(c, be, 1);
        LoraFiles.Bake(w2, meta, 0);
        Assert.True(MaxRelDiff(Run(new FluxModel(w2), null, x), threeFactor) < 1e-5);
    }

    [Theory]
    [InlineData(LoraFormat.Peft)]
    [InlineData(LoraFormat.Kohya)]
    public void ExportedFilesRoundTripThroughTheReader(LoraFormat format)
    {
        using var meta = ModelFixture.RandomAdapter(be, c, LoraMode.Meta, 8, 2, 1, 22);
        var (x, t) = ModelFixture.Batch(be, c, 1, 4, 4, 8, 4);
        using var _x = x; using var _t = t;
        string path = Path.Combine(dir, $"{format}.safetensors");
        LoraFiles.Export(meta, 0, path, format, SafetensorsDType.F32);
        using var back = LoraFiles.Load(path, c, be);
        Assert.Equal(FluxNames.LoraTargets(c).Count, back.Targets.Count);
        Assert.True(MaxRelDiff(Run(m, back, x), Run(m, meta, x)) < 1e-5);
    }

    [Fact]
    public void PeftKeysAreNamedAsAiToolkitNamesThem()
    {
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
        int C = c.HiddenSize;
        using var meta = ModelFixture.RandomAdapter(be, c, LoraMode.Meta, 4, 2, 1, 24);
        string path = Path.Combine(dir, "kohya.safetensors");
        LoraFiles.Export(meta, 0, path, LoraFormat.Kohya, SafetensorsDType.F32);
        using var f = SafetensorsFile.Open(path);
        Assert.Equal([6, C], f["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"].Shape);
        Assert.Equal([3 * C, 6], f["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"].Shape);
        Assert.Equal(6f, f.ReadFloats("lora_unet_double_blocks_0_img_attn_qkv.alpha")[0]);
        Assert.Equal([8, C], f["lora_unet_single_blocks_0_linear1.lora_down.weight"].Shape);

        // values: down stacks A = M·D of q, k, v (2 rows each); up puts each slice's B = U in its rows and columns, zero elsewhere
        var down = f.ReadFloats("lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight");
        var up = f.ReadFloats("lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight");
        var slices = Enumerable.Range(0, meta.Targets.Count).Where(t => meta.Targets[t].BflModule == "double_blocks.0.img_attn.qkv").ToArray();
        Assert.Equal(3, slices.Length);
        var merged = slices.Select(t => LoraFiles.Merged(meta, 0, t)).ToArray();
        for (int k = 0; k < 3; k++) Assert.Equal(merged[k].A, down[(2 * k * C)..(2 * (k + 1) * C)]);
        for (int row = 0; row < 3 * C; row++)
            for (int j = 0; j < 6; j++)
            {
                int k = row / C;                                    // the slice this row of qkv belongs to
                float expected = j / 2 == k ? merged[k].B[(row - k * C) * 2 + j % 2] : 0f;
                Assert.Equal(expected, up[row * 6 + j]);
            }
    }

    /// <summary>A kohya file written by hand (not by our exporter): each q/k/v slice gets the whole stacked down as A and
    /// its rows of up, times alpha/rank, as B; a module without alpha has scale 1.</summary>
    [Fact]
    public void KohyaFileLoadsEverySliceWithItsRowsOfUpScaledByAlphaOverRank()
    {
        int C = c.HiddenSize, rank = 2, projIn = C + c.MlpHiddenDim;
        const string qkv = "double_blocks.0.img_attn.qkv", proj = "single_blocks.1.linear2";
        var qkvDown = RandomWeights.Normal("kohya.qkv.down", 1, rank * C);
        var qkvUp = RandomWeights.Normal("kohya.qkv.up", 1, 3 * C * rank);
        var projDown = RandomWeights.Normal("kohya.proj.down", 1, rank * projIn);
        var projUp = RandomWeights.Normal("kohya.proj.up", 1, C * rank);
        string path = Path.Combine(dir, "by-hand.kohya.safetensors");
        SafetensorsWriter.Write(path,
        [
            new(FluxNames.KohyaName(qkv) + ".lora_down.weight", [rank, C], qkvDown),
            new(FluxNames.KohyaName(qkv) + ".lora_up.weight", [3 * C, rank], qkvUp),
            new(FluxNames.KohyaName(qkv) + ".alpha", [], [1f]),                        // scale 1/2
            new(FluxNames.KohyaName(proj) + ".lora_down.weight", [rank, projIn], projDown),
            new(FluxNames.KohyaName(proj) + ".lora_up.weight", [C, rank], projUp),     // no alpha: scale 1
        ]);
        using var a = LoraFiles.Load(path, c, be);
        Assert.Equal(LoraMode.Standard, a.Mode);
        Assert.Equal(rank, a.Rank2);
        Assert.Equal(["transformer.transformer_blocks.0.attn.to_q", "transformer.transformer_blocks.0.attn.to_k",
                      "transformer.transformer_blocks.0.attn.to_v", "transformer.single_transformer_blocks.1.proj_out"],
                     a.Targets.Select(t => t.Name));
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(qkvDown, be.Download(a.Down[i].Value));
            var b = be.Download(a.Identities[0].Up[i].Value);                          // (C, rank): rows [i·C, (i+1)·C) of up
            Assert.Equal(C * rank, b.Length);
            for (int row = 0; row < C; row++)
                for (int j = 0; j < rank; j++)
                    Assert.Equal(0.5f * qkvUp[(i * C + row) * rank + j], b[row * rank + j]);
        }
        Assert.Equal(projDown, be.Download(a.Down[3].Value));
        Assert.Equal(projUp, be.Download(a.Identities[0].Up[3].Value));
    }

    [Fact]
    public void MetaLoraFileRoundTripsExactly()
    {
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
        string path = Path.Combine(dir, "alien.safetensors");
        SafetensorsWriter.Write(path,
        [
            new("transformer.transformer_blocks.7.attn.to_q.lora_A.weight", [1, 64], new float[64]),
            new("transformer.transformer_blocks.7.attn.to_q.lora_B.weight", [64, 1], new float[64]),
        ]);
        var e = Assert.Throws<InputFileException>(() => LoraFiles.Load(path, FluxConfig.Tiny, be));
        Assert.Contains("transformer_blocks.7", e.Message);
        Assert.Contains(path, e.Message);
    }
}
