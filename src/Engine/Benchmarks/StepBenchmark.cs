using System.Diagnostics;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Training;

namespace MetaLoraNative.Engine.Benchmarks;

/// <summary>
/// The benchmark tools/bench/torch_reference.py mirrors: one Stage-2 training step at a model's full shape with
/// random weights — batch 1, 512 text tokens, every target, r1 16, r2 1 (D frozen; M and U trained by AdamW) —
/// plus an inference forward. FLOPs are counted as the PyTorch script counts them:
///   F_lin = 2·N·L·(4C² + 2C·m) (all block linears), F_att = 4·N·L²·C (QKᵀ and PV), N = blocks, L = tokens;
///   train step = 2·F_lin + 3.5·F_att (input gradients only: W0 is frozen), inference = F_lin + F_att.
/// </summary>
public static class StepBenchmark
{
    public sealed record Options
    {
        public FluxConfig Config { get; init; } = FluxConfig.FluxDev;
        public int Resolution { get; init; } = 1024;
        public int TextTokens { get; init; } = 512;
        public int Rank1 { get; init; } = 16;
        public int Rank2 { get; init; } = 1;
        public RecomputePolicy Recompute { get; init; } = RecomputePolicy.Off;
        public int Steps { get; init; } = 10;
        public int Warmup { get; init; } = 3;
        public ulong Seed { get; init; }
    }

    public sealed record Result(int ImageTokens, int TextTokens, int Targets, bool Recompute, string RecomputeReason,
                                double TrainMs, double InferMs, double TrainTflop, double InferTflop, long PeakBytes, double LoadSeconds)
    {
        public double TrainTflops => TrainTflop / (TrainMs / 1000);
        public double InferTflops => InferTflop / (InferMs / 1000);
    }

    public static (double Train, double Infer) Flop(FluxConfig c, int imageTokens, int textTokens)
    {
        double n = c.Depth + c.DepthSingleBlocks, L = imageTokens + textTokens, C = c.HiddenSize, m = c.MlpHiddenDim;
        double lin = 2 * n * L * (4 * C * C + 2 * C * m), att = 4 * n * L * L * C;
        return (2 * lin + 3.5 * att, lin + att);
    }

    public static Result Run(IBackend be, Options o, Action<string> log)
    {
        var c = o.Config;
        if (o.Resolution % FluxConfig.PixelsPerToken != 0)
            throw new InputException("--resolution", $"resolution {o.Resolution} is not a multiple of {FluxConfig.PixelsPerToken}");
        int grid = o.Resolution / FluxConfig.PixelsPerToken, imageTokens = grid * grid;
        var load = Stopwatch.StartNew();
        log($"building {c.Name} ({c.ParameterCount() / 1e9:F2} B parameters) with random weights on {be.Name}...");
        using var weights = FluxWeights.Random(c, be, o.Seed);
        var model = new FluxModel(weights);
        var targets = FluxNames.LoraTargets(c);
        using var adapter = LoraAdapter.Create(be, c, targets, LoraMode.Meta, o.Rank1, o.Rank2, o.Seed);
        adapter.AddIdentity("bench", o.Seed);
        be.Synchronize();
        double loadSeconds = load.Elapsed.TotalSeconds;

        bool recompute = o.Recompute.Decide(model, 1, imageTokens, o.TextTokens, out var reason);
        log($"{imageTokens} image + {o.TextTokens} text tokens, {targets.Count} targets, r1 {o.Rank1}, r2 {o.Rank2}; {reason}");
        var example = new Example(RandomWeights.Normal("bench.latents", o.Seed, imageTokens * c.InChannels), grid, grid,
                                  RandomWeights.Normal("bench.t5", o.Seed, o.TextTokens * c.ContextInDim), o.TextTokens,
                                  RandomWeights.Normal("bench.pooled", o.Seed, c.VecInDim));
        var train = new TrainOptions { BatchSize = 1, Seed = o.Seed, Recompute = o.Recompute };
        var binding = new LoraBinding(adapter, [0], trainDown: false, trainIdentity: true);

        var trainMs = new List<double>();
        for (int i = 0; i < o.Warmup + o.Steps; i++)
        {
            be.Synchronize();
            var clock = Stopwatch.StartNew();
            var (loss, _) = Trainer.Step(model, binding, [example], train, i, recompute);
            be.Synchronize();
            if (i >= o.Warmup) trainMs.Add(clock.Elapsed.TotalMilliseconds);
            log($"train step {i + 1}/{o.Warmup + o.Steps}{(i < o.Warmup ? " (warm-up)" : "")}: {clock.Elapsed.TotalMilliseconds:F1} ms, loss {loss:F4}");
        }

        var inferMs = new List<double>();
        var (inputs, target) = Batches.FlowMatchingBatch(be, c, [example], [0.5f], 3.5f, o.Seed, 0);
        using (inputs)
        using (target)
        {
            for (int i = 0; i < o.Warmup + o.Steps; i++)
            {
                be.Synchronize();
                var clock = Stopwatch.StartNew();
                using (model.Predict(inputs, binding)) be.Synchronize();
                if (i >= o.Warmup) inferMs.Add(clock.Elapsed.TotalMilliseconds);
            }
        }
        var (fTrain, fInfer) = Flop(c, imageTokens, o.TextTokens);
        return new Result(imageTokens, o.TextTokens, targets.Count, recompute, reason, Median(trainMs), Median(inferMs),
                          fTrain / 1e12, fInfer / 1e12, be.PeakBytes, loadSeconds);
    }

    static double Median(List<double> xs)
    {
        if (xs.Count == 0) return double.NaN;
        var s = xs.Order().ToArray();
        return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
    }
}
