using System.Diagnostics;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Training;

namespace MetaLoraNative.Engine.Demo;

/// <summary>
/// The embedded default: the whole Meta-LoRA pipeline on a tiny FLUX-architecture model with deterministic weights
/// and synthetic identities, in well under two minutes on two CPU cores.
///
/// A synthetic identity is a fixed packed-latent "appearance" (4×4 tokens × 64 channels) plus small per-image variation,
/// captioned by a shared prompt embedding with an identity-specific offset. Learning an identity means the LoRA
/// has to pull the velocity prediction towards that appearance, which is what Stage 2 does for one photo.
/// </summary>
public static class TinyDemo
{
    public sealed record Options
    {
        public string OutputDirectory { get; init; } = "metalora-demo";
        public int Identities { get; init; } = 6;
        public int ImagesPerIdentity { get; init; } = 4;
        public int Stage1Iterations { get; init; } = 400;
        public int BucketIterations { get; init; } = 40;
        public int WarmupIterations { get; init; } = 16;
        public int Stage2Iterations { get; init; } = 150;
        public float LearningRate { get; init; } = 2e-3f;
        public ulong Seed { get; init; } = 7;
        public bool Verbose { get; init; }
    }

    public sealed record Result(double Stage1Before, double Stage1After, double Stage2Before, double Stage2After, double Stage2RandomDown,
                                string PeftPath, string KohyaPath, string MetaPath, string DownPath, TimeSpan Elapsed);

    public const int Grid = 4, T5Length = 8;

    public static Result Run(IBackend be, Options o, Action<string> log)
    {
        var clock = Stopwatch.StartNew();
        var config = FluxConfig.Tiny;
        Directory.CreateDirectory(o.OutputDirectory);
        log($"model: {config.Name} FLUX ({config.Depth} double + {config.DepthSingleBlocks} single blocks, hidden {config.HiddenSize}, " +
            $"{config.ParameterCount():N0} parameters), deterministic weights, backend {be.Name}");
        using var weights = FluxWeights.Random(config, be, o.Seed);
        var model = new FluxModel(weights);

        var people = Enumerable.Range(0, o.Identities).Select(k => MakeIdentity(config, $"person{k}", o.ImagesPerIdentity, o.Seed)).ToList();
        var train = new TrainOptions { LearningRate = o.LearningRate, BatchSize = 2, Seed = o.Seed, Sampling = TimestepSampling.Sigmoid };
        var s1 = new Stage1Options
        {
            Train = train, TotalIterations = o.Stage1Iterations, BucketIterations = o.BucketIterations, WarmupIterations = o.WarmupIterations,
            IdentitiesPerBucket = 3, Rank1 = 8, Rank2 = 2, StatePath = Path.Combine(o.OutputDirectory, "stage1.state.safetensors"),
            StateEvery = 40,
        };
        if (File.Exists(s1.StatePath)) File.Delete(s1.StatePath);   // the demo always starts fresh
        var quiet = o.Verbose ? log : StepFilter(log, 20);

        // Stage 1: meta-train D over the synthetic identities
        using var stage1 = Stages.Stage1(model, people, s1, quiet);
        double s1Before = Trainer.MeanIdentityLoss(model, stage1, people, train, withLora: false);
        double s1After = Trainer.MeanIdentityLoss(model, stage1, people, train, withLora: true);
        log($"Stage 1 loss over all identities: {s1Before:F5} without LoRA → {s1After:F5} with each identity's M/U");
        string downPath = Path.Combine(o.OutputDirectory, "meta-down.safetensors");
        LoraFiles.SaveMeta(stage1, null, downPath, new Dictionary<string, string> { ["metalora.stage"] = "1" });

        // Stage 2: a new person, D frozen
        var person = MakeIdentity(config, "new-person", 5, o.Seed + 1000);
        using var metaDown = LoraFiles.Load(downPath, config, be);
        var s2 = new Stage2Options
        {
            Train = train with { BatchSize = 1 }, Iterations = o.Stage2Iterations, Rank2 = 2,
            StatePath = Path.Combine(o.OutputDirectory, "stage2.state.safetensors"), StateEvery = 30,
        };
        if (File.Exists(s2.StatePath)) File.Delete(s2.StatePath);
        using var personal = Stages.Stage2(model, metaDown, person, s2, quiet);
        double s2Before = Trainer.MeanIdentityLoss(model, personal, [person], train, withLora: false);
        double s2After = Trainer.MeanIdentityLoss(model, personal, [person], train, withLora: true);
        log($"Stage 2 loss on the new person: {s2Before:F5} before → {s2After:F5} after personalisation");

        // the same Stage 2 from a D that was never meta-trained: what Stage 1 buys
        using var randomDown = LoraAdapter.Create(be, config, metaDown.Targets, LoraMode.Meta, metaDown.Rank1, 2, o.Seed + 99);
        using var baseline = Stages.Stage2(model, randomDown, person, s2 with { StatePath = null }, _ => { });
        double s2Random = Trainer.MeanIdentityLoss(model, baseline, [person], train, withLora: true);
        log($"Stage 2 from a random (not meta-trained) D: {s2Before:F5} → {s2Random:F5}");

        string metaPath = LoraFiles.UnmergedPath(Path.Combine(o.OutputDirectory, "new-person.safetensors"));
        string peftPath = Path.Combine(o.OutputDirectory, "new-person.lora.safetensors");
        string kohyaPath = Path.Combine(o.OutputDirectory, "new-person.kohya.safetensors");
        LoraFiles.SaveMeta(personal, 0, metaPath);
        LoraFiles.Export(personal, 0, peftPath, LoraFormat.Peft, SafetensorsDType.BF16, "metalora demo");
        LoraFiles.Export(personal, 0, kohyaPath, LoraFormat.Kohya, SafetensorsDType.BF16, "metalora demo");
        log($"wrote {metaPath} (unmerged D/M/U), {peftPath} (PEFT/diffusers, rank {personal.Rank2}), {kohyaPath} (kohya)");
        return new Result(s1Before, s1After, s2Before, s2After, s2Random, peftPath, kohyaPath, metaPath, downPath, clock.Elapsed);
    }

    /// <summary>A synthetic identity: appearance + per-image variation, shared prompt + identity offset.</summary>
    public static Identity MakeIdentity(FluxConfig c, string name, int images, ulong seed)
    {
        int L = Grid * Grid;
        var look = RandomWeights.Normal("look." + name, seed, L * c.InChannels);
        var prompt = RandomWeights.Normal("prompt", seed, T5Length * c.ContextInDim);
        var token = RandomWeights.Normal("token." + name, seed, c.ContextInDim);
        var pooled = RandomWeights.Normal("pooled." + name, seed, c.VecInDim);
        for (int j = 0; j < c.ContextInDim; j++) prompt[(T5Length - 1) * c.ContextInDim + j] = token[j];
        var examples = Enumerable.Range(0, images).Select(i =>
        {
            var v = RandomWeights.Normal($"pose.{name}.{i}", seed, L * c.InChannels);
            var packedLatents = look.Select((x, j) => 0.9f * x + 0.3f * v[j]).ToArray();
            return new Example(packedLatents, Grid, Grid, prompt, T5Length, pooled);
        }).ToList();
        return new Identity(name, examples);
    }

    /// <summary>Shows every n-th step line (and every other message) so the demo's log stays short.</summary>
    static Action<string> StepFilter(Action<string> log, int every) => line =>
    {
        if (!line.StartsWith("step ", StringComparison.Ordinal)) { log(line); return; }
        var head = line.Split('|')[0]["step ".Length..].Trim().Split('/');
        if (long.TryParse(head[0], out var s) && (s % every == 0 || s == 1 || head.Length > 1 && head[1] == head[0])) log(line);
    };
}
