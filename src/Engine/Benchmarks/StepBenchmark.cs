using System.Diagnostics;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Planning;
using MetaLoraNative.Engine.Quantization;
using MetaLoraNative.Engine.Training;

namespace MetaLoraNative.Engine.Benchmarks;

/// <summary>
/// The benchmark tools/bench/torch_reference.py mirrors: one Stage-2 training step at a model's full shape with
/// random weights — batch 1, 512 text tokens, every target, r1 16, r2 1 (D frozen; M and U trained by AdamW) —
/// plus an inference forward. FLOPs are counted as the PyTorch script counts them:
///   F_lin = 2·N·L·(4C² + 2C·m) (all block linears), F_att = 4·N·L²·C (QKᵀ and PV), N = blocks, L = tokens;
///   train step = 2·F_lin + 3.5·F_att (input gradients only: W0 is frozen), inference = F_lin + F_att.
/// Before building anything the memory planner predicts the step's peak for the budget (--vram, else the device's
/// free memory) and picks the base dtype and recomputation left on auto; after the first step the measured peak is
/// logged beside the prediction. A --vram budget is also a hard cap on the backend's allocator. The training step is
/// the one training runs (<see cref="StepPipeline"/>); with <see cref="Options.Launches"/> the backend's counters give
/// what one step issued, per phase, beside one step of the host path (<see cref="Trainer.Step"/>).
/// </summary>
public static class StepBenchmark
{
    public sealed record Options
    {
        public FluxConfig Config { get; init; } = FluxConfig.FluxDev;
        /// <summary>A checkpoint to bench instead of random weights of <see cref="Config"/>.</summary>
        public string? Weights { get; init; }
        public int Resolution { get; init; } = 1024;
        public int TextTokens { get; init; } = 512;
        public int Rank1 { get; init; } = 16;
        public int Rank2 { get; init; } = 1;
        public RecomputePolicy Recompute { get; init; } = RecomputePolicy.Off;
        /// <summary>The frozen base's dtype; null lets the planner choose.</summary>
        public BaseDType? BaseDType { get; init; } = Quantization.BaseDType.Bf16;
        /// <summary>Blocks whose weights wait in host memory (<see cref="SwappedBlocks"/>); null lets the planner choose.</summary>
        public int? SwapBlocks { get; init; } = 0;
        /// <summary>The memory budget and hard cap in bytes; null: the device's free memory (host memory on the CPU), no cap.</summary>
        public long? VramBytes { get; init; }
        /// <summary>How the backend stores what the planner counts; null: the CPU backend's own model.</summary>
        public MemoryModel? Memory { get; init; }
        /// <summary>Print the plan and stop before building the model.</summary>
        public bool PlanOnly { get; init; }
        /// <summary>Count what one step issues, per phase (<see cref="LaunchCounters"/>): the device step and, for comparison, the host path.</summary>
        public bool Launches { get; init; }
        /// <summary>
        /// Capture one step in a CUDA graph after the warm-up (at least two steps, then one uncaptured run on the
        /// capture's fixed inputs, which fills the caches the capture reads) and time its replays (opt-in,
        /// <c>--cuda-graph</c> or METALORA_GRAPH=1; not yet run on a GPU). The replays repeat the captured step's
        /// inputs and AdamW step numbers: a timing of the step, not training.
        /// </summary>
        public bool CudaGraph { get; init; } = Environment.GetEnvironmentVariable("METALORA_GRAPH") is "1" or "true" or "yes";
        /// <summary>The model's fused elementwise forms (<see cref="Flux.Fusions"/>; the CLI's --fuse or METALORA_FUSE).</summary>
        public Fusions Fusions { get; init; } = Fusions.None;
        public int Steps { get; init; } = 10;
        public int Warmup { get; init; } = 3;
        public ulong Seed { get; init; }
    }

    /// <param name="FirstStepPeakBytes">the backend's peak after the first training step, beside <see cref="MemoryPlan.Chosen"/>'s prediction</param>
    /// <param name="Overlap">block swap's copies in the last timed training step (null without swap)</param>
    public sealed record Result(int ImageTokens, int TextTokens, int Targets, bool Recompute, string RecomputeReason,
                                double TrainMs, double InferMs, double TrainTflop, double InferTflop, long PeakBytes, double LoadSeconds,
                                MemoryPlan Plan, long FirstStepPeakBytes, SwapOverlap? Overlap = null)
    {
        /// <summary>With <see cref="Options.Launches"/>: per phase, what the last timed device step issued.</summary>
        public IReadOnlyDictionary<string, LaunchCounters.Counts>? Launches { get; init; }
        /// <summary>With <see cref="Options.Launches"/>: the same step on the host path (<see cref="Trainer.Step"/>), for comparison.</summary>
        public IReadOnlyDictionary<string, LaunchCounters.Counts>? HostPathLaunches { get; init; }

        public double TrainTflops => TrainTflop / (TrainMs / 1000);
        public double InferTflops => InferTflop / (InferMs / 1000);
    }

    public static (double Train, double Infer) Flop(FluxConfig c, int imageTokens, int textTokens)
    {
        double n = c.Depth + c.DepthSingleBlocks, L = imageTokens + textTokens, C = c.HiddenSize, m = c.MlpHiddenDim;
        double lin = 2 * n * L * (4 * C * C + 2 * C * m), att = 4 * n * L * L * C;
        return (2 * lin + 3.5 * att, lin + att);
    }

    /// <summary>The plan for the options' step on this backend (no allocation).</summary>
    public static MemoryPlan Plan(IBackend be, Options o)
    {
        var c = o.Weights != null ? FluxLoader.Inspect(o.Weights) : o.Config;
        var memory = o.Memory ?? MemoryModel.For(be)
            ?? throw new ArgumentException($"the memory planner needs the memory model of {be.Name} (MemoryModel.Cuda for the GPU)");
        bool? recompute = o.Recompute == RecomputePolicy.On ? true : o.Recompute == RecomputePolicy.Off ? false : null;   // auto: the planner decides
        return MemoryPlanner.Choose(TrainingShape.Stage2(c, ImageTokens(o), o.TextTokens, o.Rank1, o.Rank2, o.Fusions), memory, MemoryPlanner.Budget(be, o.VramBytes),
                                    o.BaseDType, recompute, o.SwapBlocks);
    }

    static int ImageTokens(Options o)
    {
        if (o.Resolution % FluxConfig.PixelsPerToken != 0)
            throw new InputException("--resolution", $"resolution {o.Resolution} is not a multiple of {FluxConfig.PixelsPerToken}");
        int grid = o.Resolution / FluxConfig.PixelsPerToken;
        return grid * grid;
    }

    public static Result Run(IBackend be, Options o, Action<string> log)
    {
        int grid = o.Resolution / FluxConfig.PixelsPerToken, imageTokens = ImageTokens(o);
        var plan = Plan(be, o);
        foreach (var line in plan.Lines()) log(line);
        if (o.PlanOnly)
            return new Result(imageTokens, o.TextTokens, 0, plan.Chosen.Recompute, plan.Chosen.Label, double.NaN, double.NaN, 0, 0, be.PeakBytes, 0, plan, 0);
        if (!plan.Fits)
            throw new RuntimeFailure("--vram", $"the step does not fit in {MemoryCapExceededException.FormatBytes(plan.Budget)} " +
                                                $"(the smallest plan, {plan.Chosen.Label}, needs {MemoryCapExceededException.FormatBytes(plan.Chosen.Peak)})");
        var chosen = plan.Chosen;
        if (o.VramBytes is long cap) be.CapMemory(cap);

        var load = Stopwatch.StartNew();
        FluxWeights weights;
        if (o.Weights != null)
        {
            weights = FluxLoader.Load(o.Weights, be, null, chosen.BaseDType, out var report, chosen.SwapBlocks);
            log(report.ToString());
        }
        else
        {
            log($"building {o.Config.Name} ({o.Config.ParameterCount() / 1e9:F2} B parameters) with random weights on {be.Name}, {BaseDTypes.Name(chosen.BaseDType)} base...");
            weights = FluxWeights.Random(o.Config, be, o.Seed, chosen.BaseDType, chosen.SwapBlocks);
        }
        if (weights.Blocks is SwappedBlocks swapped) log(swapped.ToString());
        using var _w = weights;
        var c = weights.Config;
        var model = new FluxModel(weights, o.Fusions);
        log($"fused elementwise forms: {FusionSettings.Format(model.Fusions)}");
        if (model.Fp8Matmul) log("W8A8 forward products for the fp8 block linears (METALORA_FP8_MATMUL=1; the backward stays W8A16)");
        var targets = FluxNames.LoraTargets(c);
        using var adapter = LoraAdapter.Create(be, c, targets, LoraMode.Meta, o.Rank1, o.Rank2, o.Seed);
        adapter.AddIdentity("bench", o.Seed);
        be.Synchronize();
        double loadSeconds = load.Elapsed.TotalSeconds;

        bool recompute = chosen.Recompute;
        string reason = $"{chosen.Label} (memory plan)";
        log($"{imageTokens} image + {o.TextTokens} text tokens, {targets.Count} targets, r1 {o.Rank1}, r2 {o.Rank2}; {reason}");
        var example = new Example(RandomWeights.Normal("bench.latents", o.Seed, imageTokens * c.InChannels), grid, grid,
                                  RandomWeights.Normal("bench.t5", o.Seed, o.TextTokens * c.ContextInDim), o.TextTokens,
                                  RandomWeights.Normal("bench.pooled", o.Seed, c.VecInDim));
        var train = new TrainOptions { BatchSize = 1, Seed = o.Seed, Recompute = recompute ? RecomputePolicy.On : RecomputePolicy.Off };
        var binding = new LoraBinding(adapter, [0], trainDown: false, trainIdentity: true);

        // The step training runs: the trained factors in flat buffers, no host synchronisation inside the step (its
        // loss is reported during the next one); the timing synchronises after each step.
        using var flat = FlatParameters.Create(be, [.. adapter.Identities[0].Parameters()]);
        using var pipeline = new StepPipeline(be, flat);
        var counters = o.Launches ? be.Counters : null;
        IReadOnlyDictionary<string, LaunchCounters.Counts>? launches = null, hostLaunches = null;
        void Completed(CompletedStep d) => log($"train step {d.Step + 1}: loss {d.Loss:F4}, grad norm {d.GradNorm:F4}");
        var trainMs = new List<double>();
        long firstPeak = 0;
        SwapOverlap? overlap = null;
        int warmup = o.CudaGraph ? Math.Max(o.Warmup, 2) : o.Warmup;   // a capture needs the pool to hold the step's blocks
        IStepGraph? graph = null;
        FluxInputs? fixedInputs = null;
        Tensor? fixedTarget = null;
        using var graphScalars = o.CudaGraph ? be.NewStepScalars() : null;
        for (int i = 0; i < warmup + o.Steps; i++)
        {
            if (o.CudaGraph && i == warmup && o.Steps > 0)
            {
                if (pipeline.Flush(null) is { } warm) Completed(warm);
                (fixedInputs, fixedTarget) = Trainer.StepInputs(model, [example], train, i);   // the fixed device buffers replays read
                // One uncaptured run of exactly what the capture records, on the same fixed buffers and scalars: the
                // device step's caches keyed by content (the grouped GEMM's tables under METALORA_LORA_GROUPED=1, keyed
                // by the blocks' addresses) then hold what the capture asks for, as the pool, asked the same requests in
                // the same order, normally hands out the same blocks. A miss inside the capture anyway is refused with an
                // error naming the op (an upload there would record a copy from memory the graph does not own).
                pipeline.Queue(model, binding, fixedInputs, fixedTarget, train, recompute, graphScalars!);
                be.Synchronize();
                graph = be.CaptureGraph(() => pipeline.Queue(model, binding, fixedInputs, fixedTarget, train, recompute, graphScalars!))
                    ?? throw new RuntimeFailure("--cuda-graph", $"{be.Name} cannot capture a step in a graph");
                log($"captured step {i + 1} in a CUDA graph after {warmup} steps and one uncaptured run on its fixed inputs; the timed steps replay it (opt-in, not yet verified on a GPU)");
            }
            be.Synchronize();
            var before = counters?.Snapshot();
            var clock = Stopwatch.StartNew();
            if (graph != null) graph.Launch();
            else pipeline.Step(model, binding, [example], train, i, recompute, null, Completed);
            if (before != null) launches = LaunchCounters.Between(before, counters!.Snapshot());
            be.Synchronize();
            if (i >= warmup) trainMs.Add(clock.Elapsed.TotalMilliseconds);
            log($"train step {i + 1}/{warmup + o.Steps}{(i < warmup ? " (warm-up)" : graph != null ? " (graph replay)" : "")}: {clock.Elapsed.TotalMilliseconds:F1} ms");
            if (model.Blocks.TakeOverlap() is { } stepOverlap)
            {
                overlap = stepOverlap;
                log($"  {stepOverlap}");
            }
            if (i == 0)
            {
                firstPeak = be.PeakBytes;
                log($"peak after the first step: measured {MemoryCapExceededException.FormatBytes(firstPeak)}, predicted " +
                    $"{MemoryCapExceededException.FormatBytes(chosen.Peak)} (the flat buffers hold AdamW's moments from the start)");
            }
        }

        if (pipeline.Flush(null) is { } last) Completed(last);
        if (graph != null)
        {
            graph.Dispose();   // its blocks go back to the pool's use
            fixedInputs!.Dispose();
            fixedTarget!.Dispose();
        }
        if (counters != null)
        {
            // one step of the host path the device step replaced: what it issued, for comparison (not timed)
            var before = counters.Snapshot();
            Trainer.Step(model, binding, [example], train, o.Warmup + o.Steps, recompute);
            hostLaunches = LaunchCounters.Between(before, counters.Snapshot());
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
        return new Result(imageTokens, o.TextTokens, targets.Count, chosen.Recompute, reason, Median(trainMs), Median(inferMs),
                          fTrain / 1e12, fInfer / 1e12, be.PeakBytes, loadSeconds, plan, firstPeak, overlap)
        { Launches = launches, HostPathLaunches = hostLaunches };
    }

    static double Median(List<double> xs)
    {
        if (xs.Count == 0) return double.NaN;
        var s = xs.Order().ToArray();
        return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
    }
}
