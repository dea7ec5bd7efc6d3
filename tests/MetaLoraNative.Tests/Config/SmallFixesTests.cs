using MetaLoraNative.Cli.Commands;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Onnx.Augment;
using MetaLoraNative.Tests.Testing;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using static MetaLoraNative.Tests.Cli.CliRunner;

namespace MetaLoraNative.Tests.Config;

/// <summary>lora info/convert read the base model from the file's metadata and name the layout; augment's small-face warning.</summary>
[Collection("console")]
public sealed class SmallFixesTests() : TempFolderTest("fixes")
{
    [Theory]
    [InlineData(LoraFormat.Peft, "PEFT")]
    [InlineData(LoraFormat.Kohya, "kohya")]
    public void LoraInfoAndConvertTakeTheBaseFromMetadata(LoraFormat format, string layout)
    {
        string lora = Path.Combine(dir, "me.safetensors");
        using (var be = CpuBackend.F32())
        using (var a = LoraAdapter.Random(be, FluxConfig.Tiny, LoraMode.Meta, 4, 2, 1, 5))
            LoraFiles.Export(a, 0, lora, format, SafetensorsDType.F32);
        var info = Run("lora", "info", "--in", lora);
        Assert.True(info.Code == 0, info.Err);
        Assert.Contains($"{layout} layout, base tiny (the file's metadata)", info.Out);
        Assert.Contains($"{FluxNames.LoraTargets(FluxConfig.Tiny).Count} targets", info.Out);
        string converted = Path.Combine(dir, "c.safetensors");
        var conv = Run("lora", "convert", "--in", lora, "--out", converted, "--format", format == LoraFormat.Peft ? "kohya" : "peft");
        Assert.True(conv.Code == 0, conv.Err);
        Assert.Contains($"{(format == LoraFormat.Peft ? "kohya" : "PEFT")} layout, base tiny (the file's metadata)", Run("lora", "info", "--in", converted).Out);
        var explicitBase = Run("lora", "info", "--in", lora, "--base", "tiny");
        Assert.Contains("base tiny (--base)", explicitBase.Out);
    }

    [Fact]
    public void MetaFilesAreNamedAsSuch()
    {
        string meta = Path.Combine(dir, "m.meta.safetensors");
        using (var be = CpuBackend.F32())
        using (var a = LoraAdapter.Random(be, FluxConfig.Tiny, LoraMode.Meta, 4, 2, 1, 5))
            LoraFiles.SaveMeta(a, 0, meta);
        var info = Run("lora", "info", "--in", meta);
        Assert.True(info.Code == 0, info.Err);
        Assert.Contains("Meta (D/M/U) layout, base tiny (the file's metadata)", info.Out);
    }

    [Fact]
    public void KohyaImportSplitsBlockDiagonalFusedFactorsBackToRankR()
    {
        string kohya = Path.Combine(dir, "k.safetensors");
        var c = FluxConfig.Tiny;
        using var be = CpuBackend.F32();
        using var meta = LoraAdapter.Random(be, c, LoraMode.Meta, 4, 2, 1, 9);
        LoraFiles.Export(meta, 0, kohya, LoraFormat.Kohya, SafetensorsDType.F32);
        using var loaded = LoraFiles.Load(kohya, c, be);
        Assert.Equal(meta.Targets.Count, loaded.Targets.Count);
        Assert.Equal(2, loaded.Rank1);
        for (int t = 0; t < loaded.Targets.Count; t++)
        {
            int src = meta.Targets.ToList().FindIndex(x => x.Name == loaded.Targets[t].Name);
            var (A, aShape, B, bShape) = LoraFiles.Merged(meta, 0, src);
            Assert.Equal(aShape, loaded.Down[t].Shape);                                 // rank 2 per slice, not 3·2 or 4·2
            Assert.Equal(bShape, loaded.Identities[0].Up[t].Shape);
            Assert.Equal(A, be.Download(loaded.Down[t].Value));
            Assert.Equal(B, be.Download(loaded.Identities[0].Up[t].Value));
        }
    }

    [Fact]
    public void AFusedKohyaFactorThatIsNotBlockDiagonalKeepsItsFullRank()
    {
        var c = FluxConfig.Tiny;
        int C = c.HiddenSize, rank = 3;
        const string qkv = "double_blocks.0.img_attn.qkv";
        var down = RandomWeights.Normal("split.down", 1, rank * C);
        var up = RandomWeights.Normal("split.up", 1, 3 * C * rank);                     // dense: no block structure
        string path = Path.Combine(dir, "dense.safetensors");
        SafetensorsWriter.Write(path,
        [
            new(FluxNames.KohyaName(qkv) + ".lora_down.weight", [rank, C], down),
            new(FluxNames.KohyaName(qkv) + ".lora_up.weight", [3 * C, rank], up),
        ]);
        using var be = CpuBackend.F32();
        using var a = LoraFiles.Load(path, c, be);
        Assert.Equal(3, a.Targets.Count);
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal([rank, C], a.Down[i].Shape);
            Assert.Equal(down, be.Download(a.Down[i].Value));
            Assert.Equal(up[(i * C * rank)..((i + 1) * C * rank)], be.Download(a.Identities[0].Up[i].Value));
        }
    }

    [Fact]
    public void ASmallFaceWarnsAboutUpscaledCrops()
    {
        using var photo = new Image<Rgb24>(1024, 1024);
        var options = new AugmentOptions { Resolution = 512 };
        var small = FaceAugmenter.Augment(photo, new RectangleF(500, 500, 24, 24), options);
        var large = FaceAugmenter.Augment(photo, new RectangleF(400, 400, 200, 200), options);
        try
        {
            var tightest = small.MinBy(c => c.Crop.Width)!;
            Assert.True(AugmentCommand.Upscale(tightest) > AugmentCommand.MaxUpscale, $"{AugmentCommand.Upscale(tightest)}");
            string warning = AugmentCommand.SmallFaceWarning(small, 24)!;
            Assert.Contains($"{small.Count(c => AugmentCommand.Upscale(c) > 4)} of {small.Count} crops", warning);
            Assert.All(large, c => Assert.True(AugmentCommand.Upscale(c) <= AugmentCommand.MaxUpscale));
            Assert.Null(AugmentCommand.SmallFaceWarning(large, 200));
        }
        finally
        {
            small.ForEach(c => c.Dispose());
            large.ForEach(c => c.Dispose());
        }
    }
}
