using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Onnx.Models;
using MetaLoraNative.Tests.Testing;
using static MetaLoraNative.Tests.Cli.CliRunner;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace MetaLoraNative.Tests.Cli;

/// <summary>
/// The user's path end to end on the tiny stand-in encoders: one photo → `prepare` (detect, augment, VAE, T5, CLIP,
/// cached) → `train stage2` → a merged LoRA; the second `prepare` encodes nothing.
/// </summary>
[Collection("console")]
public sealed class PipelineTests() : TempFolderTest("pipe")
{
    static void WritePhoto(string path, int w, int h, int seed)
    {
        using var img = new Image<Rgb24>(w, h);
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                img[x, y] = new Rgb24((byte)((x * 7 + seed * 40) % 256), (byte)((y * 3 + seed * 90) % 256), (byte)((x + y + seed) % 256));
        img.SaveAsPng(path);
    }

    [Fact]
    public void FoldersOfPhotosBecomeAStage1DatasetThatTrains()
    {
        string models = Path.Combine(dir, "models"), ids = Path.Combine(dir, "ids"), data = Path.Combine(dir, "data");
        ModelsFolder.WriteTiny(models);
        for (int p = 0; p < 2; p++)
        {
            Directory.CreateDirectory(Path.Combine(ids, $"p{p}"));
            WritePhoto(Path.Combine(ids, $"p{p}", "a.png"), 320, 240, p);
            WritePhoto(Path.Combine(ids, $"p{p}", "b.png"), 200, 300, p + 5);
        }
        File.WriteAllText(Path.Combine(ids, "p1", "class.txt"), "man");
        var prep = Run("prepare", ids, "--identities", "--models", models, "--prompt", "a photo of a {class}", "--out", data, "--resolution", "256");
        Assert.True(prep.Code == 0, prep.Err + prep.Out);
        Assert.Contains("wrote 2 identities", prep.Out);
        var p0 = Engine.Training.LatentDataset.LoadIdentity(Path.Combine(data, "p0"));
        Assert.Equal(2, p0.Examples.Count);
        Assert.True(p0.Examples[0].GridW > p0.Examples[0].GridH);   // landscape photo, landscape bucket
        Assert.True(p0.Examples[1].GridW < p0.Examples[1].GridH);
        var s1 = Run("train", "stage1", "--model", "random:tiny-t5:1", "--data", data, "--out", Path.Combine(dir, "down.safetensors"),
                     "--iterations", "2", "--bucket-iterations", "2", "--batch-size", "2", "--rank1", "4");
        Assert.True(s1.Code == 0, s1.Err);
    }

    [Fact]
    public void OnePhotoBecomesAMergedLora()
    {
        string models = Path.Combine(dir, "models"), photo = Path.Combine(dir, "me.png"), data = Path.Combine(dir, "me");
        ModelsFolder.WriteTiny(models);
        using (var img = new Image<Rgb24>(640, 480))
        {
            for (int y = 0; y < img.Height; y++)
                for (int x = 0; x < img.Width; x++)
                    img[x, y] = new Rgb24((byte)(x * 255 / 640), (byte)(y * 255 / 480), (byte)((x + y) % 256));
            img.SaveAsPng(photo);
        }
        var prep = Run("prepare", photo, "--models", models, "--prompt", "a photo of sks person", "--out", data, "--resolution", "256", "--max", "3");
        Assert.True(prep.Code == 0, prep.Err + prep.Out);
        Assert.Equal(3, Directory.GetFiles(data, "*.safetensors").Length);
        var again = Run("prepare", photo, "--models", models, "--prompt", "a photo of sks person", "--out", Path.Combine(dir, "me2"), "--resolution", "256", "--max", "3");
        Assert.True(again.Code == 0, again.Err);
        Assert.Contains("0 prompt(s) encoded", again.Out);
        Assert.Contains("0 image(s) encoded", again.Out);

        using (var be = CpuBackend.F32())
        {
            var c = FluxConfig.TinyT5;
            using var down = LoraAdapter.Create(be, c, FluxNames.LoraTargets(c), LoraMode.Meta, 4, 1, 3);
            LoraFiles.SaveMeta(down, null, Path.Combine(dir, "down.safetensors"));
        }
        var s2 = Run("train", "stage2", "--model", "random:tiny-t5:1", "--down", Path.Combine(dir, "down.safetensors"), "--data", data,
                     "--out", Path.Combine(dir, "me.lora.safetensors"), "--iterations", "2");
        Assert.True(s2.Code == 0, s2.Err);
        using var f = SafetensorsFile.Open(Path.Combine(dir, "me.lora.safetensors"));
        Assert.Equal([1, FluxConfig.TinyT5.HiddenSize], f["transformer.transformer_blocks.0.attn.add_q_proj.lora_A.weight"].Shape);
        Assert.Equal("tiny-t5", f.Metadata["metalora.base_model"]);

        string png = Path.Combine(dir, "me.png.out.png");
        var gen = Run("generate", "--model", "random:tiny-t5:1", "--lora", Path.Combine(dir, "me.lora.safetensors"), "--models", models,
                      "--prompt", "a photo of sks person", "--out", png, "--width", "96", "--height", "64", "--steps", "3");
        Assert.True(gen.Code == 0, gen.Err);
        Assert.Contains("sample step 3/3", gen.Out);
        using var image = Image.Load<Rgb24>(png);
        Assert.Equal((96, 64), (image.Width, image.Height));
    }
}
