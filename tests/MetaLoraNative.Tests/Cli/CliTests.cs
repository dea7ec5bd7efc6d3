using MetaLoraNative.Engine.IO;

namespace MetaLoraNative.Tests.Cli;

/// <summary>The metalora command line, driven through Program.Main with captured output.</summary>
[Collection("console")]
public sealed class CliTests : IDisposable
{
    readonly string dir = Directory.CreateTempSubdirectory("metalora-cli-").FullName;
    public void Dispose() => Directory.Delete(dir, recursive: true);

    static (int Code, string Out, string Err) Run(params string[] args) => CliRunner.Run(args);

    [Theory]
    [InlineData(new[] { "--help" }, new[] { "demo", "train", "lora", "debug", "doctor", "data" })]
    [InlineData(new[] { "train", "stage1", "--help" }, new[] { "--iterations", "--bucket-iterations", "--warmup-iterations", "--identities-per-bucket", "--rank1", "--rank2", "--include", "--exclude", "--state", "--timesteps", "--max-grad-norm" })]
    [InlineData(new[] { "train", "stage2", "--help" }, new[] { "--down", "--iterations", "--rank2", "--format", "--dtype", "--state" })]
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
                     "--bucket-iterations", "3", "--identities-per-bucket", "2", "--rank1", "4", "--batch-size", "2", "--checkpoint-every", "2");
        Assert.True(s1.Code == 0, s1.Err);
        Assert.Contains("step      6/6", s1.Out);
        Assert.True(File.Exists(Path.ChangeExtension(down, ".state.safetensors")));
        var s2 = Run("train", "stage2", "--model", "random:tiny:1", "--down", down, "--data", Path.Combine(data, "person000"),
                     "--out", me, "--iterations", "4", "--format", "both");
        Assert.True(s2.Code == 0, s2.Err);
        using (var f = SafetensorsFile.Open(me)) Assert.True(f.Contains("transformer.transformer_blocks.0.attn.to_q.lora_A.weight"));
        var info = Run("lora", "info", "--in", Path.ChangeExtension(me, ".kohya.safetensors"), "--base", "tiny");
        Assert.True(info.Code == 0, info.Err);
        Assert.Contains("40 targets", info.Out);
        var conv = Run("lora", "convert", "--in", Path.ChangeExtension(me, ".meta.safetensors"), "--out", Path.Combine(dir, "c.safetensors"), "--base", "tiny", "--format", "kohya");
        Assert.True(conv.Code == 0, conv.Err);
    }

    [Fact]
    public void AMissingInputFileIsOneClearErrorLine()
    {
        string missing = Path.Combine(dir, "nope.safetensors");
        var (code, _, err) = Run("debug", "step", "--model", "random:micro:1", "--inputs", missing, "--lora", missing, "--out", Path.Combine(dir, "o.safetensors"));
        Assert.Equal(1, code);
        Assert.StartsWith("error: ", err);
        Assert.Contains("nope.safetensors", err);
    }

    [Fact]
    public void ACorruptLoraFileIsReportedWithItsPath()
    {
        string bad = Path.Combine(dir, "bad.safetensors");
        File.WriteAllBytes(bad, [1, 2, 3]);
        var (code, _, err) = Run("lora", "info", "--in", bad, "--base", "tiny");
        Assert.Equal(1, code);
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
public sealed class CliDataErrorTests : IDisposable
{
    readonly string dir = Directory.CreateTempSubdirectory("metalora-cli-data-").FullName;
    public void Dispose() => Directory.Delete(dir, recursive: true);

    [Fact]
    public void DataOfAnotherModelWidthIsAClearErrorNamingTheFile()
    {
        string data = Path.Combine(dir, "ids");
        Assert.Equal(0, CliRunner.Run("data", "synth", "--out", data, "--identities", "1", "--images", "1", "--preset", "tiny").Code);
        var (code, _, err) = CliRunner.Run("train", "stage1", "--model", "random:tiny-t5:1", "--data", data, "--out", Path.Combine(dir, "d.safetensors"), "--iterations", "1");
        Assert.Equal(1, code);
        Assert.Contains("0000.safetensors", err);
        Assert.Contains("4096", err);
    }
}
