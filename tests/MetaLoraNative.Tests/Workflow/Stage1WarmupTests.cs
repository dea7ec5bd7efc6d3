using System.Globalization;
using System.Text.RegularExpressions;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Demo;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Training;
using MetaLoraNative.Tests.Testing;
using static MetaLoraNative.Tests.Cli.CliRunner;

namespace MetaLoraNative.Tests.Workflow;

/// <summary>
/// `train stage1` refuses to write a D that never left the warm-up (Algorithm 1 trains D only outside it) unless
/// --allow-warmup-only, and prints the eval loss before and after training.
/// </summary>
[Collection("console")]
public sealed partial class Stage1WarmupTests() : TempFolderTest("warmup")
{
    string Identities()
    {
        string ids = Path.Combine(dir, "ids");
        for (int p = 0; p < 2; p++) LatentDataset.SaveIdentity(Path.Combine(ids, $"p{p}"), TinyDemo.MakeIdentity(FluxConfig.Tiny, $"p{p}", 2, (ulong)p + 3));
        return ids;
    }

    (int Code, string Out, string Err) Stage1(string output, params string[] more) =>
        Run(["train", "stage1", "--model", "random:tiny:1", "--data", Identities(), "--out", output, "--batch-size", "2", "--rank1", "4", .. more]);

    [Theory]
    [InlineData("--iterations 3", "--iterations", "3")]                                                          // q_warmup 1000 (0.4 × 2500) ≥ q_total
    [InlineData("--bucket-iterations 3", "--iterations", "6", "--bucket-iterations", "3", "--warmup-iterations", "3")]   // every visit is all warm-up
    [InlineData("--iterations 2", "--iterations", "2", "--bucket-iterations", "4", "--warmup-iterations", "2")]   // the run ends inside the first warm-up
    public void ADownThatNeverLeavesTheWarmupIsRefusedBeforeAnyWork(string limit, params string[] flags)
    {
        string output = Path.Combine(dir, "out", "down.safetensors");
        var r = Stage1(output, flags);
        Assert.Equal(2, r.Code);
        Assert.StartsWith("error: --warmup-iterations", r.Err);
        Assert.Contains($"≥ {limit}:", r.Err);
        Assert.Contains("--allow-warmup-only", r.Err);
        Assert.False(Directory.Exists(Path.Combine(dir, "out")), "the run wrote something");
    }

    [Fact]
    public void AllowWarmupOnlyWritesTheUntrainedDownWithAWarning()
    {
        string output = Path.Combine(dir, "down.safetensors");
        var r = Stage1(output, "--iterations", "3", "--allow-warmup-only", "--seed", "11");
        Assert.True(r.Code == 0, r.Err + r.Out);
        Assert.Contains("WARNING: --warmup-iterations 1000 ≥ --iterations 3", r.Out);
        // D is exactly its initialisation: the trainer's own start for this seed
        using var be = CpuBackend.F32();
        var c = FluxConfig.Tiny;
        using var start = LoraAdapter.Create(be, c, FluxNames.LoraTargets(c), LoraMode.Meta, 4, 1, 11);
        using var file = SafetensorsFile.Open(output);
        foreach (var d in start.Down) Assert.Equal(be.Download(d.Value), file.ReadFloats(d.Name));
    }

    [Fact]
    public void TheEvalLossBeforeAndAfterTrainingIsPrinted()
    {
        string output = Path.Combine(dir, "down.safetensors");
        var r = Stage1(output, "--iterations", "4", "--bucket-iterations", "4", "--warmup-iterations", "1", "--lr", "1e-2");
        Assert.True(r.Code == 0, r.Err + r.Out);
        Assert.DoesNotContain("WARNING", r.Out);
        var m = EvalLine().Match(r.Out);
        Assert.True(m.Success, r.Out);
        double before = double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture), after = double.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture);
        // "before" is the base model on the same images, timesteps and noise (every U starts at zero)
        using var be = CpuBackend.F32();
        using var weights = FluxLoader.Load("random:tiny:1", be);
        var people = LatentDataset.LoadIdentities(Path.Combine(dir, "ids"));
        using var none = LoraAdapter.Create(be, FluxConfig.Tiny, FluxNames.LoraTargets(FluxConfig.Tiny), LoraMode.Meta, 4, 1, 42);
        double expected = Trainer.MeanIdentityLoss(new FluxModel(weights), none, people, new TrainOptions(), withLora: false, examplesPerIdentity: 4);
        Assert.Equal(expected.ToString("F6", CultureInfo.InvariantCulture), m.Groups[1].Value);
        Assert.True(double.IsFinite(after) && after != before, $"{before} → {after}");
    }

    [GeneratedRegex(@"Stage 1 eval loss over 2 of 2 identities .*: (\d+\.\d{6}) before training \(no LoRA\) → (\d+\.\d{6}) after \(each identity's M/U\)")]
    private static partial Regex EvalLine();
}
