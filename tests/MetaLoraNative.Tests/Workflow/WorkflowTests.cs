using System.Security.Cryptography;
using System.Text.Json;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Demo;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Training;
using MetaLoraNative.Onnx.Models;
using MetaLoraNative.Tests.Testing;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using static MetaLoraNative.Tests.Cli.CliRunner;

namespace MetaLoraNative.Tests.Workflow;

/// <summary>
/// The workflow a LoRA user expects, on the stand-in models: `personalize` in one command, the `train lora` baseline,
/// and what every trainer writes while it runs (metrics.jsonl, loss.png, samples, snapshots, metadata).
/// </summary>
[Collection("console")]
public sealed class WorkflowTests() : TempFolderTest("workflow")
{
    string WritePhoto() => StandInFiles.WritePhoto(Path.Combine(dir, "me.png"));

    string WriteDown() => StandInFiles.WriteMetaDown(Path.Combine(dir, "down.safetensors"));

    /// <summary>A cached one-person dataset for the tiny model (the --data of train stage2|lora).</summary>
    string WriteData(int images = 4)
    {
        string data = Path.Combine(dir, "data");
        LatentDataset.SaveIdentity(data, TinyDemo.MakeIdentity(FluxConfig.Tiny, "someone", images, 77));
        return data;
    }

    static List<JsonElement> Metrics(string path) =>
        File.ReadAllLines(path).Select(l => JsonDocument.Parse(l).RootElement.Clone()).ToList();

    [Fact]
    public void PersonalizeRunsEveryPhaseAndWritesTheLoraItsSnapshotsAndMetadata()
    {
        string models = Path.Combine(dir, "models"), photo = WritePhoto(), down = WriteDown(), output = Path.Combine(dir, "out", "me.safetensors");
        ModelsFolder.WriteTiny(models);
        var run = Run("personalize", photo, "--down", down, "--out", output, "--models", models, "--model", "random:tiny-t5:1",
                      "--resolution", "256", "--max", "3", "--iterations", "6", "--snapshots", "2,4", "--prompt", "a photo of sks person", "--format", "both");
        Assert.True(run.Code == 0, run.Err + run.Out);
        foreach (var phase in new[] { "load", "detect/augment", "encode", "train", "save" })
        {
            Assert.Matches($@"phase {phase}: \d+\.\d\d s", run.Out);
            Assert.Matches($@"(?m)^{phase}\s+\d+\.\d\d s", run.Out);
        }
        Assert.Matches(@"(?m)^total\s+\d+\.\d\d s", run.Out);

        string folder = Path.GetDirectoryName(output)!;
        foreach (var f in new[] { "me.safetensors", "me.kohya.safetensors", "me.metalora", "me.step000002.safetensors", "me.step000004.safetensors",
                                  "me.step000002.kohya.safetensors", "metrics.jsonl", "loss.png" })
            Assert.True(File.Exists(Path.Combine(folder, f)), f);
        Assert.False(File.Exists(Path.Combine(folder, "me.step000006.safetensors")));
        Assert.Equal(6, Metrics(Path.Combine(folder, "metrics.jsonl")).Count);

        using var be = CpuBackend.F32();
        foreach (var f in new[] { "me.safetensors", "me.kohya.safetensors", "me.step000004.safetensors" })
        {
            using var lora = LoraFiles.Load(Path.Combine(folder, f), FluxConfig.TinyT5, be);
            Assert.Single(lora.Identities);
            Assert.Equal(1, lora.Rank2);
        }

        using var file = SafetensorsFile.Open(output);
        var m = file.Metadata;
        Assert.Equal("networks.lora_flux", m["ss_network_module"]);
        Assert.Equal("1.0.0", m["modelspec.sai_model_spec"]);
        Assert.Equal("flux-1-dev/lora", m["modelspec.architecture"]);
        Assert.Equal("me", m["modelspec.title"]);
        Assert.Equal("https://github.com/black-forest-labs/flux", m["modelspec.implementation"]);
        Assert.True(DateTime.TryParse(m["modelspec.date"], System.Globalization.CultureInfo.InvariantCulture, System.Globalization.DateTimeStyles.AdjustToUniversal, out var date));
        Assert.InRange(date, DateTime.UtcNow.AddHours(-1), DateTime.UtcNow.AddMinutes(1));
        Assert.Equal("256x256", m["modelspec.resolution"]);
        Assert.Equal("6", m["metalora.iterations"]);
        Assert.Equal("0.0004", m["metalora.lr"]);
        Assert.Equal("42", m["metalora.seed"]);
        Assert.Equal("a photo of sks person", m["metalora.prompt"]);
        Assert.Equal("random:tiny-t5:1", m["metalora.model"]);
        using (var d = File.OpenRead(down)) Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(d)), m["metalora.down_sha256"]);

        var info = Run("lora", "info", "--in", output, "--base", "tiny-t5");
        Assert.True(info.Code == 0, info.Err);
        Assert.Contains("modelspec.architecture = flux-1-dev/lora", info.Out);
        Assert.Contains("metalora.prompt = a photo of sks person", info.Out);
        Assert.Contains("ss_network_module = networks.lora_flux", info.Out);
    }

    [Fact]
    public void PersonalizeStandardNeedsNoMetaDownAndWithoutEitherSaysWhatIsMissing()
    {
        string models = Path.Combine(dir, "models"), photo = WritePhoto(), output = Path.Combine(dir, "me.safetensors");
        ModelsFolder.WriteTiny(models);
        var missing = Run("personalize", photo, "--out", output, "--models", models, "--model", "random:tiny-t5:1");
        Assert.NotEqual(0, missing.Code);
        Assert.Contains("--down", missing.Err);
        Assert.Contains("--standard", missing.Err);

        var run = Run("personalize", photo, "--standard", "--out", output, "--models", models, "--model", "random:tiny-t5:1",
                      "--resolution", "256", "--max", "2", "--iterations", "3");
        Assert.True(run.Code == 0, run.Err + run.Out);
        Assert.Contains("standard LoRA", run.Out);
        using var be = CpuBackend.F32();
        using var lora = LoraFiles.Load(output, FluxConfig.TinyT5, be);
        Assert.Equal(LoraMode.Standard, lora.Mode);
        Assert.Equal(3, Metrics(Path.Combine(dir, "metrics.jsonl")).Count);
        using var file = SafetensorsFile.Open(output);
        Assert.False(file.Metadata.ContainsKey("metalora.down_sha256"));
        Assert.Equal("lora", file.Metadata["metalora.stage"]);
    }

    [Fact]
    public void TrainLoraLowersTheEvalLossAndWritesFilesThatLoadBack()
    {
        string data = WriteData(), output = Path.Combine(dir, "base.safetensors");
        const int iterations = 40;
        var run = Run("train", "lora", "--model", "random:tiny:1", "--data", data, "--out", output, "--iterations", $"{iterations}",
                      "--lr", "1e-2", "--rank", "2", "--eval-every", "1", "--format", "both", "--seed", "1");
        Assert.True(run.Code == 0, run.Err + run.Out);
        var lines = Metrics(Path.Combine(dir, "metrics.jsonl"));
        Assert.Equal(iterations, lines.Count);
        double first = lines[0].GetProperty("eval_loss").GetDouble(), last = lines[^1].GetProperty("eval_loss").GetDouble();
        Assert.True(last < 0.97 * first, $"eval loss {first} → {last}");

        using var be = CpuBackend.F32();
        using var peft = LoraFiles.Load(output, FluxConfig.Tiny, be);
        using var kohya = LoraFiles.Load(Path.ChangeExtension(output, ".kohya.safetensors"), FluxConfig.Tiny, be);
        Assert.Equal((LoraMode.Standard, 2), (peft.Mode, peft.Rank1));
        Assert.Equal(FluxNames.LoraTargets(FluxConfig.Tiny).Count, peft.Targets.Count);
        Assert.Contains(peft.Identities[0].Up, u => be.SumSquares(u.Value) > 0);
        // both layouts hold the same B·A of the first target
        var (pa, _, pb, pbs) = LoraFiles.Merged(peft, 0, 0);
        var t = peft.Targets[0];
        int k = kohya.Targets.ToList().FindIndex(x => x.Name == t.Name);
        var (ka, kas, kb, _) = LoraFiles.Merged(kohya, 0, k);
        for (int row = 0; row < t.Rows; row += 7)
            for (int col = 0; col < t.InFeatures; col += 5)
            {
                double p = 0, q = 0;
                for (int j = 0; j < pbs[1]; j++) p += pb[row * pbs[1] + j] * pa[j * t.InFeatures + col];
                for (int j = 0; j < kas[0]; j++) q += kb[row * kas[0] + j] * ka[j * t.InFeatures + col];
                Assert.Equal(p, q, Math.Max(1e-2 * Math.Abs(p), 1e-5));
            }
    }

    [Fact]
    public void MetricsHaveOneLinePerStepWithEvalLinesAndTheLossPlotIsAPngOfItsSize()
    {
        string data = WriteData(2), output = Path.Combine(dir, "run", "p.safetensors");
        var run = Run("train", "lora", "--model", "random:tiny:1", "--data", data, "--out", output, "--iterations", "7", "--eval-every", "3", "--state-every", "4");
        Assert.True(run.Code == 0, run.Err + run.Out);
        Assert.Matches(@"step +7/7 .*\| ema \d+\.\d+ \| \d+\.\d\d s/it", run.Out);
        var lines = Metrics(Path.Combine(dir, "run", "metrics.jsonl"));
        Assert.Equal([1, 2, 3, 4, 5, 6, 7], lines.Select(l => l.GetProperty("step").GetInt64()));
        foreach (var l in lines)
        {
            foreach (var key in new[] { "loss", "ema", "grad_norm", "lr", "ms" })
                Assert.True(double.IsFinite(l.GetProperty(key).GetDouble()), key);
            Assert.Equal(1e-4, l.GetProperty("lr").GetDouble(), 1e-9);
        }
        // evaluations at multiples of --eval-every and at the last step
        Assert.Equal([3, 6, 7], lines.Where(l => l.TryGetProperty("eval_loss", out _)).Select(l => l.GetProperty("step").GetInt64()));
        // the EMA is the running average the monitor documents
        double ema = lines[0].GetProperty("loss").GetDouble();
        foreach (var l in lines.Skip(1)) ema = 0.9 * ema + 0.1 * l.GetProperty("loss").GetDouble();
        Assert.Equal(ema, lines[^1].GetProperty("ema").GetDouble(), 1e-9);

        string png = Path.Combine(dir, "run", "loss.png");
        var bytes = File.ReadAllBytes(png);
        Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G', 13, 10, 26, 10 }, bytes[..8]);
        using var image = Image.Load<Rgb24>(png);
        Assert.Equal((640, 480), (image.Width, image.Height));
        Assert.Empty(Directory.GetFiles(Path.Combine(dir, "run"), "*.tmp-*"));
    }

    [Fact]
    public void ResumingKeepsTheMetricsOfTheStepsBefore()
    {
        string data = WriteData(2), output = Path.Combine(dir, "r.safetensors");
        Assert.Equal(0, Run("train", "lora", "--model", "random:tiny:1", "--data", data, "--out", output, "--iterations", "4").Code);
        var run = Run("train", "lora", "--model", "random:tiny:1", "--data", data, "--out", output, "--iterations", "6");
        Assert.True(run.Code == 0, run.Err + run.Out);
        Assert.Contains("resumed standard LoRA", run.Out);
        Assert.Equal([1, 2, 3, 4, 5, 6], Metrics(Path.Combine(dir, "metrics.jsonl")).Select(l => l.GetProperty("step").GetInt64()));
    }

    [Fact]
    public void SamplesAndAContactSheetAreWrittenAtTheirStepsAndSkippedWithoutModels()
    {
        string models = Path.Combine(dir, "models"), photo = WritePhoto(), down = WriteDown(), prompts = Path.Combine(dir, "prompts.txt");
        ModelsFolder.WriteTiny(models);
        File.WriteAllLines(prompts, ["a photo of sks person", "", "sks person on a beach"]);
        var prep = Run("prepare", photo, "--models", models, "--prompt", "a photo of sks person", "--out", Path.Combine(dir, "me"), "--resolution", "256", "--max", "2");
        Assert.True(prep.Code == 0, prep.Err + prep.Out);
        var run = Run("train", "stage2", "--model", "random:tiny-t5:1", "--down", down, "--data", Path.Combine(dir, "me"), "--out", Path.Combine(dir, "s", "me.safetensors"),
                      "--iterations", "5", "--sample-every", "2", "--sample-prompts", prompts, "--models", models, "--sample-size", "48", "--sample-steps", "2");
        Assert.True(run.Code == 0, run.Err + run.Out);
        string samples = Path.Combine(dir, "s", "samples");
        var written = Directory.GetFiles(samples).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToArray();
        string[] expected = [.. new[] { 2, 4, 5 }.SelectMany(s => new[] { $"step{s:D6}_00.png", $"step{s:D6}_01.png", $"step{s:D6}_sheet.png" })];
        Assert.Equal(expected.Order(StringComparer.Ordinal), written);
        using (var sample = Image.Load<Rgb24>(Path.Combine(samples, "step000002_01.png")))
            Assert.Equal((48, 48), (sample.Width, sample.Height));
        using (var sheet = Image.Load<Rgb24>(Path.Combine(samples, "step000004_sheet.png")))
            Assert.True(sheet.Width > 200 && sheet.Height > 200);

        var skip = Run("train", "stage2", "--model", "random:tiny-t5:1", "--down", down, "--data", Path.Combine(dir, "me"), "--out", Path.Combine(dir, "t", "me.safetensors"),
                       "--iterations", "2", "--sample-every", "1", "--sample-prompts", prompts, "--models", Path.Combine(dir, "nowhere"));
        Assert.True(skip.Code == 0, skip.Err + skip.Out);
        Assert.Single(skip.Out.Split('\n'), l => l.StartsWith("warning: no samples during training", StringComparison.Ordinal));
        Assert.False(Directory.Exists(Path.Combine(dir, "t", "samples")));
    }

    [Fact]
    public void KeepDeletesTheOldestSnapshotsAndStage1WritesItsMetricsToo()
    {
        string data = WriteData(2), output = Path.Combine(dir, "k.safetensors");
        var run = Run("train", "lora", "--model", "random:tiny:1", "--data", data, "--out", output, "--iterations", "5", "--save-every", "1", "--keep", "2");
        Assert.True(run.Code == 0, run.Err + run.Out);
        Assert.Equal(["k.step000004.safetensors", "k.step000005.safetensors"],
                     Directory.GetFiles(dir, "k.step*").Select(Path.GetFileName).Order(StringComparer.Ordinal));
        using (var be = CpuBackend.F32())
        using (var snap = LoraFiles.Load(Path.Combine(dir, "k.step000005.safetensors"), FluxConfig.Tiny, be))
            Assert.Single(snap.Identities);

        string ids = Path.Combine(dir, "ids"), s1 = Path.Combine(dir, "s1", "down.safetensors");
        for (int p = 0; p < 2; p++) LatentDataset.SaveIdentity(Path.Combine(ids, $"p{p}"), TinyDemo.MakeIdentity(FluxConfig.Tiny, $"p{p}", 2, (ulong)p));
        var stage1 = Run("train", "stage1", "--model", "random:tiny:1", "--data", ids, "--out", s1, "--iterations", "3", "--bucket-iterations", "3",
                         "--batch-size", "2", "--rank1", "4", "--save-every", "2");
        Assert.True(stage1.Code == 0, stage1.Err + stage1.Out);
        Assert.Equal(3, Metrics(Path.Combine(dir, "s1", "metrics.jsonl")).Count);
        Assert.True(File.Exists(Path.Combine(dir, "s1", "down.step000002.safetensors")));
        Assert.True(File.Exists(Path.Combine(dir, "s1", "loss.png")));
        using var down = SafetensorsFile.Open(s1);
        Assert.Equal("1", down.Metadata["metalora.stage"]);
        Assert.Equal("3", down.Metadata["metalora.iterations"]);
    }
}
