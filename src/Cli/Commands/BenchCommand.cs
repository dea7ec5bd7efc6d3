using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine;
using System.CommandLine;
using System.Globalization;
using MetaLoraNative.Engine.Benchmarks;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Training;
using MetaLoraNative.Engine.Planning;
using MetaLoraNative.Engine.Quantization;
using MetaLoraNative.Kernels;

namespace MetaLoraNative.Cli.Commands;

internal static class BenchCommand
{
    /// <summary>
    /// --base-dtype, the one definition every command that loads the transformer takes (its value goes through
    /// <see cref="BaseDTypes.Parse"/>: "auto" is null, for the memory planner to decide).
    /// </summary>
    public static Option<string> BaseDTypeOption() => new Option<string>("--base-dtype")
    {
        Description = "How the frozen transformer is held: bf16, or fp8 (the block linears in E4M3 with one fp32 scale per output " +
                      "channel, about half the memory; embedders and final layer stay bf16); auto lets the memory planner choose.",
        DefaultValueFactory = _ => "auto",
    }.AcceptOnlyFromAmong([.. BaseDTypes.Choices]);

    /// <summary>
    /// --swap-blocks N|auto, the one definition every command that runs the transformer takes (read it with
    /// <see cref="BlockOrder.ParseSwap"/>: "auto" is null, for the memory planner to decide).
    /// </summary>
    public static Option<string> SwapBlocksOption(string defaultValue = "auto") => new Option<string>("--swap-blocks")
    {
        Description = "Blocks whose frozen weights wait in pinned host memory and are copied into a reused device slot just before they " +
                      "compute (one block ahead, on a second stream), in the order double blocks from the last back, then single blocks " +
                      "from the last back; 0 keeps every block on the device, auto takes the fewest the memory planner needs.",
        DefaultValueFactory = _ => defaultValue,
    };

    /// <summary>
    /// --base-dtype and --swap-blocks of a command that loads the transformer to train it (train stage1/stage2/lora,
    /// personalize) or to sample (generate, without --base-dtype), and the load they decide: what is given is used,
    /// "auto" is what the memory planner chooses for a training step of the command's shape in the device's free memory.
    /// </summary>
    internal sealed class Placement(bool withBaseDType = true)
    {
        public Option<string> BaseDType = BaseDTypeOption();
        public Option<string> Swap = SwapBlocksOption();

        public IEnumerable<Option> All => withBaseDType ? [BaseDType, Swap] : [Swap];

        /// <summary>A training step's shape over cached examples: the largest of them, every LoRA target.</summary>
        public static TrainingShape Step(FluxConfig c, IEnumerable<Example> examples, int batch, LoraMode mode, int rank1, int rank2,
                                         bool trainDown, int identitiesInBatch, int identitiesHeld)
        {
            var (image, text) = Common.Tokens(examples);
            return new TrainingShape(c, batch, image, text, FluxNames.LoraTargets(c), mode, rank1, rank2,
                                     trainDown, TrainIdentity: true, identitiesInBatch, identitiesHeld);
        }

        /// <param name="shape">the step to plan for, from the model's config; read only when something is on auto</param>
        public FluxWeights Load(ParseResult r, string model, IBackend be, Func<FluxConfig, TrainingShape> shape, RecomputePolicy recompute)
        {
            var dtype = withBaseDType ? BaseDTypes.Parse(r.GetValue(BaseDType)!) : Engine.Quantization.BaseDType.Bf16;
            int? swap = BlockOrder.ParseSwap(r.GetValue(Swap)!);
            if (dtype == null || swap == null)
            {
                var memory = be is CudaBackend cuda ? MemoryModel.Cuda(DevicePool.SizeClass, attentionDqAccumulator: cuda.AttentionBackwardKernel == AttentionKernel.OnePass) : MemoryModel.For(be)
                    ?? throw new InvalidOperationException($"no memory model for {be.Name}");
                bool? fixedRecompute = recompute == RecomputePolicy.On ? true : recompute == RecomputePolicy.Off ? false : null;
                var plan = MemoryPlanner.Choose(shape(FluxLoader.Inspect(model)), memory, MemoryPlanner.Budget(be, null), dtype, fixedRecompute, swap);
                foreach (var line in plan.Lines()) Common.Log(line);
                if (!plan.Fits)
                    throw new RuntimeFailure("--swap-blocks", $"the step does not fit in {MemoryCapExceededException.FormatBytes(plan.Budget)} of free memory " +
                                                              $"(the smallest plan, {plan.Chosen.Label}, needs {MemoryCapExceededException.FormatBytes(plan.Chosen.Peak)})");
                (dtype, swap) = (plan.Chosen.BaseDType, plan.Chosen.SwapBlocks);
            }
            var weights = FluxLoader.Load(model, be, null, dtype.Value, swap.Value);
            if (weights.Blocks is SwappedBlocks swapped) Common.Log(swapped.ToString());
            return weights;
        }
    }

    internal sealed class Shared
    {
        public Option<int> Resolution = new Option<int>("--resolution") { Description = "Image side in pixels: 512 (1,024 image tokens) or 1024 (4,096).", DefaultValueFactory = _ => 1024 }.AcceptOnlyFromAmong("512", "768", "1024");
        public Option<string> Recompute = Common.Recompute();
        public Option<string> Device = new Option<string>("--device") { Description = "cuda (default) or cpu (only sensible with --preset tiny).", DefaultValueFactory = _ => "cuda" }.AcceptOnlyFromAmong("cpu", "cuda");
        public Option<string> Preset = new Option<string>("--preset") { Description = "Model shape: flux-dev (default), flux-schnell, tiny, micro.", DefaultValueFactory = _ => "flux-dev" }.PresetName();
        public Option<string?> Weights = new("--weights") { Description = "A checkpoint to bench (BFL, ComfyUI fp8, diffusers) instead of random weights of --preset." };
        public Option<int> Text = new Option<int>("--txt") { Description = "Text tokens (T5 sequence length).", DefaultValueFactory = _ => 512 }.AtLeast(1);
        public Option<string> BaseDType = BaseDTypeOption();
        public Option<string> Swap = SwapBlocksOption();
        public Option<double?> Vram = new("--vram") { Description = "Memory budget in GiB for the planner, and a hard cap on the allocator, so a large GPU behaves as a card of this size (default: the device's free memory, no cap)." };

        public Option<string?> Fuse = new("--fuse") { Description = "Fused elementwise forms of the model: none, all, or a comma list of qkv (split-qkv + QK norm + RoPE), residual-norm (gated residual + LayerNorm-modulate), gelu (GELU as a GEMM epilogue). Default: METALORA_FUSE, unset = none. Opt-in until a GPU run has passed their parity checks (check cuda --dev)." };

        public IEnumerable<Option> All => [Resolution, Recompute, Device, Preset, Weights, Text, BaseDType, Swap, Vram, Fuse];

        public StepBenchmark.Options Options(ParseResult r, int steps, int warmup) => new()
        {
            Config = FluxConfig.Preset(r.GetValue(Preset)!), Weights = r.GetValue(Weights), Resolution = r.GetValue(Resolution), TextTokens = r.GetValue(Text),
            Recompute = RecomputePolicy.Parse(r.GetValue(Recompute)!), BaseDType = BaseDTypes.Parse(r.GetValue(BaseDType)!),
            SwapBlocks = BlockOrder.ParseSwap(r.GetValue(Swap)!), VramBytes = VramBytes(r.GetValue(Vram)),
            Fusions = r.GetValue(Fuse) is { } fuse ? FusionSettings.Parse(fuse, "--fuse") : FusionSettings.FromEnvironment(),
            Memory = r.GetValue(Device) == "cuda" ? MemoryModel.Cuda(DevicePool.SizeClass, attentionDqAccumulator: AttentionKernels.FromEnvironment() == AttentionKernel.OnePass) : null, Steps = steps, Warmup = warmup,
        };

        static long? VramBytes(double? gib) => gib switch
        {
            null => null,
            > 0 and < 1 << 20 => (long)(gib.Value * (1L << 30)),
            _ => throw new InputException("--vram", $"{gib} GiB is not a memory size (give GiB, e.g. 24)"),
        };
    }

    /// <summary>
    /// --plan-only: the chosen plan's base dtype, recomputation and swap walked again with each subset of the fused
    /// forms (<see cref="Fusions"/>), each predicted peak beside the unfused step's.
    /// </summary>
    static IEnumerable<string> FusionLines(IBackend be, StepBenchmark.Options o, MemoryEstimate chosen)
    {
        var fixedPlan = o with
        {
            BaseDType = chosen.BaseDType, Recompute = chosen.Recompute ? RecomputePolicy.On : RecomputePolicy.Off, SwapBlocks = chosen.SwapBlocks,
        };
        long Peak(Fusions f) => StepBenchmark.Plan(be, fixedPlan with { Fusions = f }).Chosen.Peak;
        long none = Peak(Fusions.None);
        bool gib = none >= 1L << 30;
        double unit = gib ? 1L << 30 : 1L << 20;
        yield return $"fused forms, {chosen.Label}: predicted peak ({(gib ? "GiB" : "MiB")}) against none";
        for (var f = Fusions.None; f <= Fusions.All; f++)
        {
            long peak = Peak(f);
            yield return $"  {FusionSettings.Format(f),-22} {peak / unit,8:F2}  {(peak - none) / unit,8:+0.00;-0.00;0.00}{(f == o.Fusions ? "  (this run's)" : "")}";
        }
    }

    public static Command Create()
    {
        var shared = new Shared();
        var steps = new Option<int>("--steps") { Description = "Timed steps (the median is reported); 0 loads the model and plans only, timing nothing.", DefaultValueFactory = _ => 10 }.AtLeast(0);
        var warmup = new Option<int>("--warmup") { Description = "Untimed steps first (kernel compilation, pool growth).", DefaultValueFactory = _ => 3 }.AtLeast(0);
        var json = new Option<string?>("--json") { Description = "Also write the figures as JSON to this file." };
        var launches = new Option<bool>("--launches") { Description = "Also count what one training step issues, per phase (forward, backward, optimiser): kernel launches, GEMMs by route, host synchronisations, async read-backs and allocations, beside one step of the host path." };
        var cudaGraph = new Option<bool>("--cuda-graph") { Description = "Capture one training step in a CUDA graph after the warm-up and time its replays (also METALORA_GRAPH=1; opt-in, not yet verified on a GPU)." };
        var planOnly = new Option<bool>("--plan-only") { Description = "Print the memory plan and stop (needs no GPU: with --device cuda it plans for the CUDA engine's storage)." };
        var cmd = new Command("bench",
            "Times a Stage-2 training step at the full model shape with random weights (batch 1, 512 text tokens, all 494 " +
            "targets, r1 16, r2 1) and an inference forward; prints the memory plan, ms/step (median), achieved TFLOP/s and peak " +
            "GPU memory beside the planner's prediction. Run tools/bench/torch_reference.py with the same flags in the same " +
            "session to get PyTorch's figures on the same GPU.")
        {
            steps, warmup, json, planOnly, launches, cudaGraph,
        };
        foreach (var o in shared.All) cmd.Options.Add(o);
        cmd.Subcommands.Add(LossCurveCommand());
        cmd.SetAction(r =>
        {
            OutputPath.CheckFile(r.GetValue(json), "--json");
            var options = shared.Options(r, r.GetValue(steps), r.GetValue(warmup)) with { PlanOnly = r.GetValue(planOnly), Launches = r.GetValue(launches) };
            if (r.GetValue(cudaGraph)) options = options with { CudaGraph = true };
            if (options.PlanOnly && options.Memory != null)
            {
                // Planning for the GPU engine needs its storage rules, not a GPU.
                using var host = Common.CreateBackend("cpu");
                var plan = StepBenchmark.Plan(host, options);
                foreach (var line in plan.Lines().Concat(FusionLines(host, options, plan.Chosen))) Console.WriteLine(line);
                return 0;
            }
            using var be = Common.CreateBackend(r.GetValue(shared.Device)!);
            if (!options.PlanOnly) Common.CheckHostMemory(r, be, options.Weights ?? $"random:{options.Config.Name}:0", (options.Resolution * options.Resolution / (FluxConfig.PixelsPerToken * FluxConfig.PixelsPerToken), options.TextTokens), flag: options.Weights != null ? "--weights" : "--preset", recompute: r.GetValue(shared.Recompute) == "on");
            var res = StepBenchmark.Run(be, options, Common.Log);
            if (options.PlanOnly)
            {
                foreach (var line in FusionLines(be, options, res.Plan.Chosen)) Console.WriteLine(line);
                return 0;
            }
            Console.WriteLine();
            Console.WriteLine($"device      {be.Name}; {res.ImageTokens} image + {res.TextTokens} text tokens; {res.RecomputeReason}");
            Console.WriteLine($"train step  {res.TrainMs,9:F1} ms median of {r.GetValue(steps)}   {res.TrainTflops,7:F1} TFLOP/s ({res.TrainTflop:F1} TFLOP/step)");
            Console.WriteLine($"inference   {res.InferMs,9:F1} ms median of {r.GetValue(steps)}   {res.InferTflops,7:F1} TFLOP/s");
            if (res.Overlap is { } o)
                Console.WriteLine($"block swap  {res.Plan.Chosen.SwapBlocks} blocks, last step {o.CopyMs:F1} ms of copies: {o.HiddenMs:F1} ms hidden, {o.ExposedMs:F1} ms exposed " +
                                  $"({o.Bytes / (double)(1L << 30):F2} GiB)");
            Console.WriteLine($"peak memory {res.PeakBytes / (double)(1L << 30),9:F2} GiB (tensors alive at once), predicted {res.Plan.Chosen.Peak / (double)(1L << 30):F2} GiB; setup {res.LoadSeconds:F1} s");
            if (options.Launches && res.Launches is null && r.GetValue(steps) > 0)
                Console.WriteLine($"launches    {be.Name} does not count what it issues");
            foreach (var (label, counts) in new[] { ("step", res.Launches), ("host path", res.HostPathLaunches) })
            {
                if (counts is null) continue;
                foreach (var phase in LaunchPhases(counts)) Console.WriteLine($"launches    {label,-9} {phase,-9} {Total(counts, phase)}");
            }
            if (r.GetValue(json) is { } path)
            {
                var inv = CultureInfo.InvariantCulture;
                string launchJson = res.Launches is { } l ? $", \"launches\": {LaunchJson(l)}, \"host_path_launches\": {LaunchJson(res.HostPathLaunches!)}" : "";
                File.WriteAllText(path, string.Create(inv,
                    $"{{\"engine\": \"metalora\", \"device\": \"{be.Name}\", \"image_tokens\": {res.ImageTokens}, \"text_tokens\": {res.TextTokens}, " +
                    $"\"recompute\": {(res.Recompute ? "true" : "false")}, \"train_ms_median\": {res.TrainMs:F2}, \"train_tflops\": {res.TrainTflops:F1}, " +
                    $"\"infer_ms_median\": {res.InferMs:F2}, \"infer_tflops\": {res.InferTflops:F1}, \"peak_gib\": {res.PeakBytes / (double)(1L << 30):F2}, " +
                    $"\"predicted_peak_gib\": {res.Plan.Chosen.Peak / (double)(1L << 30):F2}, \"base_dtype\": \"{BaseDTypes.Name(res.Plan.Chosen.BaseDType)}\", " +
                    $"\"swap_blocks\": {res.Plan.Chosen.SwapBlocks}, \"fusions\": \"{FusionSettings.Format(options.Fusions)}\", \"swap_copy_ms\": {res.Overlap?.CopyMs ?? 0:F2}, \"swap_exposed_ms\": {res.Overlap?.ExposedMs ?? 0:F2}{launchJson}}}\n"));
            }
            return 0;
        });
        return cmd;
    }

    /// <summary>
    /// bench loss-curve: the fp8 adoption rule (<see cref="LossCurve"/>): N seeds of Stage-2 runs on a bf16 base, an
    /// fp8 base, and an fp8 base with W8A8 forward products, on the same data; prints the windowed means, the bf16
    /// seed-to-seed spread and whether each fp8 variant stays within it.
    /// </summary>
    static Command LossCurveCommand()
    {
        var device = new Option<string>("--device") { Description = "cuda (default) or cpu (the tiny preset).", DefaultValueFactory = _ => "cuda" }.AcceptOnlyFromAmong("cpu", "cuda");
        var preset = new Option<string>("--preset") { Description = "Model shape with random weights: tiny (default), micro, flux-dev, flux-schnell.", DefaultValueFactory = _ => "tiny" }.PresetName();
        var weights = new Option<string?>("--weights") { Description = "A checkpoint to train against instead of random weights of --preset." };
        var steps = new Option<int>("--steps") { Description = "Training steps per run.", DefaultValueFactory = _ => 200 }.AtLeast(1);
        var window = new Option<int>("--window") { Description = "Steps per window of the windowed mean loss.", DefaultValueFactory = _ => 20 }.AtLeast(1);
        var seeds = new Option<int>("--seeds") { Description = "Runs per variant (seed 1, 2, ...); the spread needs at least 2.", DefaultValueFactory = _ => 3 }.AtLeast(1);
        var examples = new Option<int>("--examples") { Description = "Synthetic examples the steps cycle over (the same for every run).", DefaultValueFactory = _ => 4 }.AtLeast(1);
        var resolution = new Option<int>("--resolution") { Description = "Image side in pixels of the synthetic examples (a multiple of 16; 1024 for FLUX.1-dev's setting).", DefaultValueFactory = _ => 64 }.AtLeast(16);
        var text = new Option<int>("--txt") { Description = "Text tokens of the synthetic examples.", DefaultValueFactory = _ => 8 }.AtLeast(1);
        var lr = new Option<float>("--lr") { Description = "Learning rate (Stage 2's default 4e-4).", DefaultValueFactory = _ => 4e-4f };
        var recompute = new Option<bool>("--recompute") { Description = "Per-block recomputation in the backward (for FLUX.1-dev at 1024² on smaller cards)." };
        var json = new Option<string?>("--json") { Description = "Also write every run's losses, the windowed means, the spread and the verdicts as JSON to this file." };
        var cmd = new Command("loss-curve",
            "The fp8 adoption rule: Stage-2 runs of N seeds on a bf16 base, an fp8 base (W8A16) and an fp8 base with W8A8 " +
            "forward products (METALORA_FP8_MATMUL), same data; prints per-run windowed mean loss, the bf16 seed-to-seed " +
            "spread (max − min of the windowed means across seeds) and whether each fp8 variant's seed-mean stays within it in every window.")
        {
            device, preset, weights, steps, window, seeds, examples, resolution, text, lr, recompute, json,
        };
        cmd.SetAction(r =>
        {
            OutputPath.CheckFile(r.GetValue(json), "--json");
            int px = r.GetValue(resolution);
            if (px % FluxConfig.PixelsPerToken != 0)
                throw new InputException("--resolution", $"resolution {px} is not a multiple of {FluxConfig.PixelsPerToken}");
            var options = new LossCurve.Options
            {
                Config = FluxConfig.Preset(r.GetValue(preset)!), Weights = r.GetValue(weights), Steps = r.GetValue(steps), Window = r.GetValue(window),
                Seeds = r.GetValue(seeds), Examples = r.GetValue(examples), Grid = px / FluxConfig.PixelsPerToken, TextTokens = r.GetValue(text),
                LearningRate = r.GetValue(lr), Recompute = r.GetValue(recompute),
            };
            using var be = Common.CreateBackend(r.GetValue(device)!);
            var result = LossCurve.Measure(be, options, Common.Log);
            foreach (var line in LossCurve.Lines(result)) Console.WriteLine(line);
            if (r.GetValue(json) is { } path) File.WriteAllText(path, LossCurve.ToJson(result));
            return 0;
        });
        return cmd;
    }

    /// <summary>The phases of a step in order, then "total".</summary>
    static IEnumerable<string> LaunchPhases(IReadOnlyDictionary<string, LaunchCounters.Counts> counts) =>
        new[] { Trainer.ForwardPhase, Trainer.BackwardPhase, Trainer.OptimiserPhase }.Concat(counts.Keys.Order()).Distinct().Where(counts.ContainsKey).Append("total");

    static LaunchCounters.Counts Total(IReadOnlyDictionary<string, LaunchCounters.Counts> counts, string phase) =>
        phase == "total" ? LaunchCounters.Sum(counts.Values) : counts[phase];

    /// <summary>{"forward": {"launches": .., "gemms": {"cublaslt": ..}, "syncs": .., ...}, ..., "total": {...}}</summary>
    static string LaunchJson(IReadOnlyDictionary<string, LaunchCounters.Counts> counts) =>
        "{" + string.Join(", ", LaunchPhases(counts).Select(phase =>
        {
            var c = Total(counts, phase);
            string gemms = string.Join(", ", c.Gemms.OrderBy(g => g.Key).Select(g => $"\"{g.Key}\": {g.Value}"));
            return $"\"{phase}\": {{\"launches\": {c.Launches}, \"gemms\": {{{gemms}}}, \"syncs\": {c.Syncs}, \"read_backs\": {c.ReadBacks}, " +
                   $"\"read_back_waits\": {c.Waits}, \"allocations\": {c.Allocations}}}";
        })) + "}";
}
