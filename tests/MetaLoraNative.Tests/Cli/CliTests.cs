using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Tests.Testing;
using static MetaLoraNative.Tests.Cli.CliRunner;

namespace MetaLoraNative.Tests.Cli;

/// <summary>The metalora command line, driven through Program.Main with captured output.</summary>
[Collection("console")]
public sealed class CliTests() : TempFolderTest("cli")
{
    [Theory]
    [InlineData(new[] { "--help" }, new[] { "demo", "train", "lora", "debug", "doctor", "data" })]
    [InlineData(new[] { "train", "stage1", "--help" }, new[] { "--iterations", "--bucket-iterations", "--warmup-iterations", "--identities-per-bucket", "--rank1", "--rank2", "--include", "--exclude", "--state", "--state-every", "--recompute", "--timesteps", "--max-grad-norm" })]
    [InlineData(new[] { "train", "stage2", "--help" }, new[] { "--down", "--iterations", "--rank2", "--format", "--dtype", "--state", "--state-every", "--recompute" })]
    [InlineData(new[] { "lora", "--help" }, new[] { "convert", "info", "bake" })]
    [InlineData(new[] { "lora", "bake", "--help" }, new[] { "--model", "--lora", "--out", "--strength", "--dtype" })]
    [InlineData(new[] { "bench", "--help" }, new[] { "--recompute", "auto", "--resolution", "--fuse", "residual-norm" })]
    [InlineData(new[] { "debug", "step", "--help" }, new[] { "--model", "--inputs", "--lora", "--out", "--device", "--fp64" })]
    [InlineData(new[] { "demo", "--help" }, new[] { "--device", "--out", "--stage1-iterations", "--stage2-iterations" })]
    public void HelpExplainsEveryOption(string[] args, string[] mentions)
    {
        var (code, stdout, _) = Run(args);
        Assert.Equal(0, code);
        foreach (var m in mentions) Assert.Contains(m, stdout);
    }

    [Fact]
    public void BothStagesRunFromTheCommandLineAndTheirLorasLoad()
    {
        string data = Path.Combine(dir, "ids"), down = Path.Combine(dir, "down.safetensors"), me = Path.Combine(dir, "me.safetensors");
        Assert.Equal(0, Run("data", "synth", "--out", data, "--identities", "3", "--images", "2").Code);
        var s1 = Run("train", "stage1", "--model", "random:tiny:1", "--data", data, "--out", down, "--iterations", "6",
                     "--bucket-iterations", "3", "--identities-per-bucket", "2", "--rank1", "4", "--batch-size", "2", "--state-every", "2",
                     "--recompute", "on");
        Assert.True(s1.Code == 0, s1.Err);
        Assert.Contains("step      6/6", s1.Out);
        Assert.Contains("recomputation on (asked)", s1.Out);
        Assert.True(File.Exists(Path.ChangeExtension(down, ".state.safetensors")));
        var s2 = Run("train", "stage2", "--model", "random:tiny:1", "--down", down, "--data", Path.Combine(data, "person000"),
                     "--out", me, "--iterations", "4", "--format", "both");
        Assert.True(s2.Code == 0, s2.Err);
        using (var f = SafetensorsFile.Open(me)) Assert.True(f.Contains("transformer.transformer_blocks.0.attn.to_q.lora_A.weight"));
        var info = Run("lora", "info", "--in", Path.ChangeExtension(me, ".kohya.safetensors"), "--base", "tiny");
        Assert.True(info.Code == 0, info.Err);
        Assert.Contains("40 targets", info.Out);
        var conv = Run("lora", "convert", "--in", Path.ChangeExtension(me, ".metalora"), "--out", Path.Combine(dir, "c.safetensors"), "--base", "tiny", "--format", "kohya");
        Assert.True(conv.Code == 0, conv.Err);
    }

    [Fact]
    public void LoraBakeAddsBTimesAIntoTheBaseWeights()
    {
        var c = FluxConfig.Tiny;
        string lora = Path.Combine(dir, "me.safetensors"), baked = Path.Combine(dir, "baked.safetensors");
        using (var be = CpuBackend.F32())
        using (var a = LoraAdapter.Random(be, c, LoraMode.Meta, 4, 2, 1, 5))
            LoraFiles.Export(a, 0, lora, LoraFormat.Peft, SafetensorsDType.F32);
        var bake = Run("lora", "bake", "--model", "random:tiny:1", "--lora", lora, "--out", baked, "--strength", "0.5", "--dtype", "fp32");
        Assert.True(bake.Code == 0, bake.Err);
        Assert.Contains("baked", bake.Out);

        // to_q, to_k, to_v are rows [0, C), [C, 2C), [2C, 3C) of double_blocks.0.img_attn.qkv: there W = W0 + 0.5·B·A of each
        using var cpu = CpuBackend.F64();
        using var w0 = FluxWeights.Random(c, cpu, 1);
        using var w = FluxLoader.Load(baked, cpu);
        using var f = SafetensorsFile.Open(lora);
        var slices = new[] { "to_q", "to_k", "to_v" }.Select(s => (
            A: f.ReadFloats($"transformer.transformer_blocks.0.attn.{s}.lora_A.weight"),     // (2, C)
            B: f.ReadFloats($"transformer.transformer_blocks.0.attn.{s}.lora_B.weight"))).ToArray();   // (C, 2)
        var before = cpu.DownloadDouble(w0["double_blocks.0.img_attn.qkv.weight"]);
        var after = cpu.DownloadDouble(w["double_blocks.0.img_attn.qkv.weight"]);
        int C = c.HiddenSize;
        double largest = 0;
        for (int row = 0; row < 3 * C; row++)
            for (int col = 0; col < C; col++)
            {
                var (A, B) = slices[row / C];
                int i = row % C;
                double delta = 0.5 * (B[i * 2] * (double)A[col] + B[i * 2 + 1] * (double)A[C + col]);
                Assert.Equal(before[row * C + col] + delta, after[row * C + col], tolerance: 1e-6);   // fp32 sums
                largest = Math.Max(largest, Math.Abs(delta));
            }
        Assert.True(largest > 1e-3, $"the LoRA's B·A must be visible for this test to mean anything ({largest})");
        Assert.Equal(2, Run("lora", "merge", "--model", "random:tiny:1", "--lora", lora, "--out", baked).Code);   // merge means M·D: convert
    }

    [Fact]
    public void AClassFileNamingAnotherClassIsTheSameErrorForPrepareAndScore()
    {
        string models = Path.Combine(dir, "models"), ids = Path.Combine(dir, "ids");
        MetaLoraNative.Onnx.Models.ModelsFolder.WriteTiny(models);
        string person = Directory.CreateDirectory(Path.Combine(ids, "p0")).FullName;
        using (var img = new SixLabors.ImageSharp.Image<SixLabors.ImageSharp.PixelFormats.Rgb24>(64, 64))
            SixLabors.ImageSharp.ImageExtensions.SaveAsPng(img, Path.Combine(person, "ref.PNG"));
        string classFile = Path.Combine(person, "class.txt");
        File.WriteAllText(classFile, "dog\n");
        var prep = Run("prepare", ids, "--identities", "--models", models, "--prompt", "a photo of a {class}", "--out", Path.Combine(dir, "data"));
        var score = Run("score", "--identities", ids, "--generated", Path.Combine(dir, "gen"), "--models", models, "--no-clip", "--out", Path.Combine(dir, "scores"));
        foreach (var (code, _, err) in new[] { prep, score })
        {
            Assert.Equal(2, code);
            Assert.Contains(classFile, err);
            Assert.Contains("unknown class 'dog'", err);
        }
    }

    [Fact]
    public void AMissingInputFileIsOneClearErrorLine()
    {
        string missing = Path.Combine(dir, "nope.safetensors");
        var (code, _, err) = Run("debug", "step", "--model", "random:micro:1", "--inputs", missing, "--lora", missing, "--out", Path.Combine(dir, "o.safetensors"));
        Assert.Equal(2, code);
        Assert.StartsWith("error: ", err);
        Assert.Contains("nope.safetensors", err);
    }

    [Fact]
    public void ACorruptLoraFileIsReportedWithItsPath()
    {
        string bad = Path.Combine(dir, "bad.safetensors");
        File.WriteAllBytes(bad, [1, 2, 3]);
        var (code, _, err) = Run("lora", "info", "--in", bad, "--base", "tiny");
        Assert.Equal(2, code);
        Assert.Contains(bad, err);
    }

    [Fact]
    public void DoctorChecksAModelsFolder()
    {
        string models = Path.Combine(dir, "models");
        MetaLoraNative.Onnx.Models.ModelsFolder.WriteTiny(models);
        var ok = Run("doctor", "--models", models);
        Assert.True(ok.Code == 0, ok.Out);
        Assert.Contains("every component present and valid", ok.Out);
        File.Delete(Directory.GetFiles(models, "*.onnx").First());
        var broken = Run("doctor", "--models", models);
        Assert.Equal(1, broken.Code);
        Assert.Contains("problem", broken.Out);
    }

    [Fact]
    public void DoctorReportsDotnetAndOnnxRuntime()
    {
        var (code, stdout, _) = Run("doctor");
        Assert.Equal(0, code);
        Assert.Contains(".NET", stdout);
        Assert.Contains("ONNX Runtime", stdout);
    }
}

[Collection("console")]
public sealed class CliDataErrorTests() : TempFolderTest("cli-data")
{
    [Fact]
    public void DataOfAnotherModelWidthIsAClearErrorNamingTheFile()
    {
        string data = Path.Combine(dir, "ids");
        Assert.Equal(0, Run("data", "synth", "--out", data, "--identities", "1", "--images", "1", "--preset", "tiny").Code);
        var (code, _, err) = Run("train", "stage1", "--model", "random:tiny-t5:1", "--data", data, "--out", Path.Combine(dir, "d.safetensors"), "--iterations", "1",
                                 "--warmup-iterations", "0");
        Assert.Equal(2, code);
        Assert.Contains("0000.safetensors", err);
        Assert.Contains("4096", err);
    }
}
