using MetaLoraNative.Engine;
using System.CommandLine;
using MetaLoraNative.Engine.Distributed;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Quantization;
using MetaLoraNative.Engine.Training;

namespace MetaLoraNative.Cli.Commands;

internal static class TrainCommand
{
    /// <summary>The options every trainer takes (personalize too, without --data).</summary>
    internal sealed class Shared
    {
        public Option<string> Model = new("--model") { Description = "The base model: flux1-dev.safetensors (BFL checkpoint), a diffusers transformer folder or index json, or random:PRESET:SEED.", Required = true };
        public Option<string> Data = new("--data") { Description = "Cached dataset folder (see docs/TRAINING.md).", Required = true };
        public Option<string> Out = new("--out") { Description = "Result file (.safetensors).", Required = true };
        public Option<float> Lr = new Option<float>("--lr") { Description = "AdamW learning rate (paper: 4e-4).", DefaultValueFactory = _ => 4e-4f }.FinitePositive();
        public Option<float> Wd = new Option<float>("--weight-decay") { Description = "AdamW decoupled weight decay.", DefaultValueFactory = _ => 1e-4f }.FiniteNonNegative();
        public Option<float> Clip = new Option<float>("--max-grad-norm") { Description = "Clip the global gradient norm of the trained factors to this; 0 turns clipping off.", DefaultValueFactory = _ => 1f }.FiniteNonNegative();
        public Option<string> Sampling = new Option<string>("--timesteps") { Description = "Timestep sampling: sigmoid (logit-normal, ai-toolkit's), shift (FLUX's resolution shift) or uniform.", DefaultValueFactory = _ => "sigmoid" }.AcceptOnlyFromAmong("sigmoid", "shift", "uniform");
        public Option<float> Guidance = new Option<float>("--guidance") { Description = "Guidance-embedding value during training.", DefaultValueFactory = _ => 1f }.Finite();
        public Option<ulong> Seed = new("--seed") { Description = "Seed for initialisation, sampling and noise (a resumed run repeats exactly).", DefaultValueFactory = _ => 42UL };
        public Option<string> Device = Common.Device();
        public Option<string?> State = new("--state") { Description = "Resumable training state (factors, AdamW moments, iteration); the run resumes from it when it exists. Default: OUT with .state.safetensors." };
        public Option<int> Every;
        public Option<string> Recompute = Common.Recompute();
        public MonitorFlags Monitor = new();
        public Option<string> OnNonFinite = new Option<string>("--on-nonfinite") { Description = "A step with a NaN/Inf loss or gradient norm: stop (nothing final is written, the last good state stays) or skip its update (up to --max-nonfinite-skips).", DefaultValueFactory = _ => "stop" }.AcceptOnlyFromAmong("stop", "skip");
        public Option<int> MaxSkips = new Option<int>("--max-nonfinite-skips") { Description = "With --on-nonfinite skip: the most steps a run may skip before it stops.", DefaultValueFactory = _ => 10 }.AtLeast(0);
        public BenchCommand.Placement Placement = new();
        public Option<bool> ForceNew = new("--force-new") { Description = "Start over even when the state exists (it is moved to STATE.old); without it a state of other options is refused." };

        public Shared(int stateEvery) =>
            Every = new Option<int>("--state-every") { Description = "Iterations between writes of the training state (it is also written at the end).", DefaultValueFactory = _ => stateEvery }.AtLeast(1);

        public IEnumerable<Option> All => [Model, Data, Out, Lr, Wd, Clip, Sampling, Guidance, Seed, Device, State, Every, Recompute, OnNonFinite, MaxSkips, ForceNew,
                                           .. Placement.All, .. Monitor.All(withModels: true)];

        /// <summary>Everything but --data (personalize makes its data from a photo).</summary>
        public IEnumerable<Option> WithoutData => All.Where(o => o != Data);

        public TrainOptions Train(ParseResult r, int batch) => new()
        {
            LearningRate = r.GetValue(Lr), WeightDecay = r.GetValue(Wd), MaxGradNorm = r.GetValue(Clip), BatchSize = batch,
            Sampling = Enum.Parse<TimestepSampling>(r.GetValue(Sampling)!, ignoreCase: true), Guidance = r.GetValue(Guidance), Seed = r.GetValue(Seed),
            Recompute = RecomputePolicy.Parse(r.GetValue(Recompute)!),
            OnNonFinite = NonFiniteGuard.Parse(r.GetValue(OnNonFinite)!), MaxNonFiniteSkips = r.GetValue(MaxSkips), ForceNew = r.GetValue(ForceNew),
        };

        /// <summary>The lock on --out, taken before anything is loaded (<see cref="RunLock"/>); <paramref name="written"/> are the other files the run writes.</summary>
        public RunLock Lock(ParseResult r, params string[] written) => RunLock.Acquire(r.GetValue(Out)!, [StatePath(r), .. written], Common.Log);

        /// <summary>--out and the state file can be written: a probe write in each folder before any work.</summary>
        public void ProbeOutputs(ParseResult r)
        {
            OutputPath.CheckFile(r.GetValue(Out), "--out");
            OutputPath.CheckFile(StatePath(r), "--state");
        }

        /// <summary>The lock of a run writing a LoRA to --out: beside it the kohya copy, the selection's best and, with <paramref name="unmerged"/>, the D/M/U file.</summary>
        public RunLock LockLora(ParseResult r, bool unmerged)
        {
            string o = r.GetValue(Out)!;
            return Lock(r, [Path.ChangeExtension(o, ".kohya.safetensors"), MonitorFlags.BestPath(o), .. unmerged ? [LoraFiles.UnmergedPath(o)] : Array.Empty<string>()]);
        }

        public string StatePath(ParseResult r) => r.GetValue(State) ?? Path.ChangeExtension(r.GetValue(Out)!, ".state.safetensors");
    }

    public static Command Create()
    {
        var s1 = new Shared(new Stage1Options().StateEvery);
        var bs = new Option<int>("--batch-size") { Description = "Batch size (paper: 4).", DefaultValueFactory = _ => 4 }.AtLeast(1);
        var total = new Option<int>("--iterations") { Description = "q_total: all Stage-1 iterations (paper: 50,000).", DefaultValueFactory = _ => 50_000 }.AtLeast(1);
        var bucket = new Option<int>("--bucket-iterations") { Description = "q_bucket: iterations per bucket visit (paper: 2,500).", DefaultValueFactory = _ => 2_500 }.AtLeast(1);
        var warm = new Option<int?>("--warmup-iterations") { Description = "q_warmup: leading iterations of each visit that train only the bucket's M/U. Default 0.4 × q_bucket." }.AtLeast(0);
        var perBucket = new Option<int>("--identities-per-bucket") { Description = "N: identities per bucket.", DefaultValueFactory = _ => 50 }.AtLeast(1);
        var r1 = new Option<int>("--rank1") { Description = "r1, the rank of the shared Meta-Down D (not stated in the paper; 16 is the common FLUX LoRA rank).", DefaultValueFactory = _ => 16 }.AtLeast(1);
        var r2 = new Option<int>("--rank2") { Description = "r2, the rank of M and U (paper: 1).", DefaultValueFactory = _ => 1 }.AtLeast(1);
        var warmupOnly = new Option<bool>("--allow-warmup-only") { Description = "Write D even when no iteration leaves the warm-up (q_warmup ≥ q_total or ≥ q_bucket), so D is still its random start (tests, smoke runs)." };
        var include = Include();
        var exclude = Exclude();
        var gpus = Workers.Gpus();
        var ranks = Workers.Ranks();
        var stage1 = new Command("stage1", "Algorithm 1: meta-train the shared Meta-Down D over many identities. Writes D (lora_down per target) to --out.")
        {
            bs, total, bucket, warm, perBucket, r1, r2, include, exclude, gpus, ranks, warmupOnly,
        };
        foreach (var o in s1.All) stage1.Options.Add(o);
        stage1.SetAction(r =>
        {
            int q = r.GetValue(bucket), qWarmup = r.GetValue(warm) ?? (int)(0.4 * q);
            CheckLeavesWarmup(r.GetValue(total), q, qWarmup, r.GetValue(warmupOnly));
            if (Workers.LaunchIds(r, gpus, ranks) is { } ids) return Workers.Launch(ids);
            s1.ProbeOutputs(r);
            var (be, comm) = Workers.Open(r.GetValue(s1.Device)!);
            using var _be = be;
            using var _comm = comm;
            using var runLock = comm is null or { Rank: 0 } ? s1.Lock(r) : null;   // rank 0 owns the outputs
            var people = LatentDataset.LoadIdentities(r.GetValue(s1.Data)!);
            Common.CheckHostMemory(r, be, r.GetValue(s1.Model)!, Common.Tokens(people.SelectMany(p => p.Examples)), recompute: r.GetValue(s1.Recompute) == "on");
            int batch1 = r.GetValue(bs);
            using var weights = s1.Placement.Load(r, r.GetValue(s1.Model)!, be, c => BenchCommand.Placement.Step(c, people.SelectMany(p => p.Examples), batch1,
                LoraMode.Meta, r.GetValue(r1), r.GetValue(r2), true, Math.Min(batch1, r.GetValue(perBucket)), people.Count), RecomputePolicy.Parse(r.GetValue(s1.Recompute)!));
            Backends.WarnIfSlow(be, weights.Config, people[0].Examples[0], r.GetValue(bs));
            var opts = new Stage1Options
            {
                Train = s1.Train(r, r.GetValue(bs)), TotalIterations = r.GetValue(total), BucketIterations = q,
                WarmupIterations = qWarmup, IdentitiesPerBucket = r.GetValue(perBucket),
                Rank1 = r.GetValue(r1), Rank2 = r.GetValue(r2), StatePath = s1.StatePath(r), StateEvery = r.GetValue(s1.Every),
                Include = r.GetValue(include), Exclude = r.GetValue(exclude),
            };
            var parallel = comm != null ? new Stage1Parallel(comm) : null;
            var meta = TrainingOutputs.RunMetadata("1", opts.Train, opts.TotalIterations, r.GetValue(s1.Model)!, null, null, null);
            meta["metalora.base_dtype"] = BaseDTypes.Name(weights.BaseDType);
            if (Engine.Quantization.Fp8Activations.FromEnvironment()) meta["metalora.fp8_matmul"] = "w8a8";   // the model read the same switch
            // only rank 0 writes outputs: metrics, samples and snapshots included
            using var monitor = parallel is { WritesOutputs: false } ? null
                : s1.Monitor.Create(r, r.GetValue(s1.Out)!, weights.Config, people[0].Examples, (a, path) => LoraFiles.SaveMeta(a, null, path, meta));
            LoraAdapter adapter;
            try { adapter = Stages.Stage1(new FluxModel(weights), people, opts with { Monitor = monitor?.Monitor }, Common.Log, parallel); }
            catch (DistributedException e) { throw Workers.Failure(comm!.Rank, e); }
            using var _adapter = adapter;
            if (parallel != null) Workers.Report(parallel);
            if (parallel is { WritesOutputs: false }) return 0;   // rank 0 writes the result
            LoraFiles.SaveMeta(adapter, null, r.GetValue(s1.Out)!, meta);   // the result first: the report below cannot lose it
            // as the demo prints it: the base model (every U starts at zero) against each identity's trained M/U, on the
            // first identities only (the paper's 1,050 would cost thousands of forwards at the end of a run)
            var model = new FluxModel(weights);
            var sample = people.Take(Stage1EvalIdentities).ToList();   // the first ones, so index k is still the adapter's identity k
            double before = Trainer.MeanIdentityLoss(model, adapter, sample, opts.Train, withLora: false, Stage1EvalImages);
            double after = Trainer.MeanIdentityLoss(model, adapter, sample, opts.Train, withLora: true, Stage1EvalImages);
            Console.WriteLine($"Stage 1 eval loss over {sample.Count} of {people.Count} identities (fixed timesteps and noise, up to {Stage1EvalImages} images each): " +
                              $"{before:F6} before training (no LoRA) → {after:F6} after (each identity's M/U)");
            Console.WriteLine($"wrote Meta-Down ({adapter.Targets.Count} targets, r1 {adapter.Rank1}) to {r.GetValue(s1.Out)}");
            return 0;
        });

        var s2 = new Shared(new Stage2Options().StateEvery);
        var down = new Option<string>("--down") { Description = "Stage-1 result (Meta-Down D), kept frozen.", Required = true };
        var iters = new Option<int>("--iterations") { Description = "Stage-2 iterations (paper: 375).", DefaultValueFactory = _ => 375 }.AtLeast(1);
        var rank2 = new Option<int>("--rank2") { Description = "r2, the rank of the personal M and U and of the merged LoRA (paper: 1).", DefaultValueFactory = _ => 1 }.AtLeast(1);
        var format = Format();
        var dtype = LoraCommand.DType("Merged LoRA");
        var trigger2 = Trigger();
        var (queue, queueGpus, queueWorkers) = (QueueRunner.Queue(), QueueRunner.Gpus(), QueueRunner.Workers());
        var stage2 = new Command("stage2", "Algorithm 2: personalise one identity (its cached augmented crops) with D frozen. Writes the merged rank-r2 LoRA to --out and the unmerged D/M/U beside it (OUT.metalora: safetensors bytes under a name LoRA loaders do not list). " +
                                           "With --queue FILE, everyone in FILE, one worker per --gpus id.")
        {
            down, iters, rank2, format, dtype, trigger2, queue, queueGpus, queueWorkers,
        };
        foreach (var o in s2.All.Concat(s2.Monitor.Selection)) stage2.Options.Add(o);
        (s2.Data.Required, s2.Out.Required) = (false, false);   // with --queue each line gives them
        stage2.SetAction(r =>
        {
            if (r.GetValue(queue) is { } queueFile) return QueueRunner.Run(r, stage2, queueFile, r.GetValue(queueGpus), r.GetValue(queueWorkers));
            if (r.GetValue(s2.Data) is null || r.GetValue(s2.Out) is null)
                throw new Engine.InputException(r.GetValue(s2.Data) is null ? "--data" : "--out", "is required (or --queue FILE, one person per line)");
            if (r.GetValue(queueGpus) is not null || r.GetValue(queueWorkers) is not null)
                throw new Engine.InputException("--gpus", "--gpus and --workers go with --queue FILE");
            s2.ProbeOutputs(r);
            var selection = s2.Monitor.PlanSelection(r, null, r.GetValue(trigger2));
            using var runLock = s2.LockLora(r, unmerged: true);
            using var be = Common.CreateBackend(r.GetValue(s2.Device)!);
            var person = LatentDataset.LoadIdentity(r.GetValue(s2.Data)!);
            Common.CheckHostMemory(r, be, r.GetValue(s2.Model)!, Common.Tokens(person.Examples), recompute: r.GetValue(s2.Recompute) == "on");
            using var metaDown = LoraFiles.Load(r.GetValue(down)!, FluxLoader.Inspect(r.GetValue(s2.Model)!), be, Common.Log);
            if (metaDown.Mode != LoraMode.Meta)
                throw new Engine.InputException(r.GetValue(down)!, "is a merged LoRA; --down needs the Meta-Down (lora_down) file Stage 1 wrote");
            using var weights = s2.Placement.Load(r, r.GetValue(s2.Model)!, be, c => BenchCommand.Placement.Step(c, person.Examples, 1, LoraMode.Meta,
                metaDown.Rank1, r.GetValue(rank2), false, 1, 1), RecomputePolicy.Parse(r.GetValue(s2.Recompute)!));
            Backends.WarnIfSlow(be, weights.Config, person.Examples[0], 1);
            var opts = new Stage2Options
            {
                Train = s2.Train(r, 1), Iterations = r.GetValue(iters), Rank2 = r.GetValue(rank2),
                StatePath = s2.StatePath(r), StateEvery = r.GetValue(s2.Every),
            };
            string outPath = r.GetValue(s2.Out)!, fmt = r.GetValue(format)!;
            var dt = LoraCommand.ParseDType(r.GetValue(dtype)!);
            var meta = TrainingOutputs.RunMetadata("2", opts.Train, opts.Iterations, r.GetValue(s2.Model)!, person, r.GetValue(trigger2), r.GetValue(down));
            meta["metalora.base_dtype"] = BaseDTypes.Name(weights.BaseDType);
            if (Engine.Quantization.Fp8Activations.FromEnvironment()) meta["metalora.fp8_matmul"] = "w8a8";   // the model read the same switch
            using var monitor = s2.Monitor.Create(r, outPath, weights.Config, person.Examples, (a, path) => TrainingOutputs.WriteLora(a, path, fmt, dt, meta, unmerged: false),
                                                  selection: selection);
            using var adapter = Stages.Stage2(new FluxModel(weights), metaDown, person, opts with { Monitor = monitor.Monitor }, Common.Log);
            TrainingOutputs.WriteLora(adapter, outPath, fmt, dt, meta, unmerged: true);
            Console.WriteLine($"wrote merged LoRA ({fmt}, rank {adapter.Rank2}) to {outPath}");
            monitor.ReportSelection();
            return 0;
        });

        var sl = new Shared(new StandardLoraOptions().StateEvery);
        sl.Lr.DefaultValueFactory = _ => new StandardLoraOptions().Train.LearningRate;
        sl.Lr.Description = "AdamW learning rate (ai-toolkit's FLUX LoRA default: 1e-4).";
        var lIters = new Option<int>("--iterations") { Description = "Iterations (the paper's rank-1 LoRA baseline: 625).", DefaultValueFactory = _ => new StandardLoraOptions().Iterations }.AtLeast(1);
        var lRank = new Option<int>("--rank") { Description = "LoRA rank r (the paper's baseline: 1).", DefaultValueFactory = _ => 1 }.AtLeast(1);
        var lFormat = Format();
        var lDtype = LoraCommand.DType("LoRA");
        var lTrigger = Trigger();
        var lInclude = Include();
        var lExclude = Exclude();
        var lora = new Command("lora", "The paper's baseline: a standard rank-r LoRA (A and B trained) on Meta-LoRA's targets, on one person's cached images " +
                                       "(prepared with or without augmentation). Writes it to --out in the Stage-2 formats.")
        {
            lIters, lRank, lFormat, lDtype, lTrigger, lInclude, lExclude,
        };
        foreach (var o in sl.All.Concat(sl.Monitor.Selection)) lora.Options.Add(o);
        lora.SetAction(r =>
        {
            sl.ProbeOutputs(r);
            var selection = sl.Monitor.PlanSelection(r, null, r.GetValue(lTrigger));
            using var runLock = sl.LockLora(r, unmerged: false);
            using var be = Common.CreateBackend(r.GetValue(sl.Device)!);
            var person = LatentDataset.LoadIdentity(r.GetValue(sl.Data)!);
            Common.CheckHostMemory(r, be, r.GetValue(sl.Model)!, Common.Tokens(person.Examples), recompute: r.GetValue(sl.Recompute) == "on");
            using var weights = sl.Placement.Load(r, r.GetValue(sl.Model)!, be, c => BenchCommand.Placement.Step(c, person.Examples, 1, LoraMode.Standard,
                r.GetValue(lRank), r.GetValue(lRank), true, 1, 1), RecomputePolicy.Parse(r.GetValue(sl.Recompute)!));
            var opts = new StandardLoraOptions
            {
                Train = sl.Train(r, 1), Iterations = r.GetValue(lIters), Rank = r.GetValue(lRank), StatePath = sl.StatePath(r), StateEvery = r.GetValue(sl.Every),
                Include = r.GetValue(lInclude), Exclude = r.GetValue(lExclude),
            };
            string outPath = r.GetValue(sl.Out)!, fmt = r.GetValue(lFormat)!;
            var dt = LoraCommand.ParseDType(r.GetValue(lDtype)!);
            var meta = TrainingOutputs.RunMetadata("lora", opts.Train, opts.Iterations, r.GetValue(sl.Model)!, person, r.GetValue(lTrigger), null);
            meta["metalora.base_dtype"] = BaseDTypes.Name(weights.BaseDType);
            if (Engine.Quantization.Fp8Activations.FromEnvironment()) meta["metalora.fp8_matmul"] = "w8a8";   // the model read the same switch
            using var monitor = sl.Monitor.Create(r, outPath, weights.Config, person.Examples, (a, path) => TrainingOutputs.WriteLora(a, path, fmt, dt, meta, unmerged: false),
                                                  selection: selection);
            using var adapter = Stages.StandardLora(new FluxModel(weights), person, opts with { Monitor = monitor.Monitor }, Common.Log);
            TrainingOutputs.WriteLora(adapter, outPath, fmt, dt, meta, unmerged: false);
            Console.WriteLine($"wrote standard LoRA ({fmt}, rank {adapter.Rank1}) to {outPath}");
            monitor.ReportSelection();
            return 0;
        });

        return new Command("train", "Meta-LoRA training on cached latents and text embeddings.") { stage1, stage2, lora };
    }

    /// <summary>Images per identity in Stage 1's before/after eval loss (two forward passes each).</summary>
    const int Stage1EvalImages = 4;
    const int Stage1EvalIdentities = 16;

    /// <summary>
    /// Algorithm 1 updates D only outside the warm-up: iteration i trains D when i mod q_bucket ≥ q_warmup, so some
    /// iteration does iff q_warmup &lt; min(q_total, q_bucket). Otherwise the written D would be its random start;
    /// that is refused unless --allow-warmup-only, which warns instead.
    /// </summary>
    static void CheckLeavesWarmup(int total, int bucket, int warmup, bool allow)
    {
        if (warmup < Math.Min(total, bucket)) return;
        string why = $"--warmup-iterations {warmup} ≥ {(warmup >= total ? $"--iterations {total}" : $"--bucket-iterations {bucket}")}: " +
                     "no iteration leaves the warm-up, so D is never trained and would be written as its random start";
        if (!allow) throw new Engine.InputException("--warmup-iterations", why + "; lower --warmup-iterations, raise --iterations, or pass --allow-warmup-only");
        Console.WriteLine($"WARNING: {why} (--allow-warmup-only)");
    }

    /// <summary>--format peft|kohya|both of a written LoRA (read by <see cref="TrainingOutputs.WriteLora"/>).</summary>
    internal static Option<string> Format() =>
        new Option<string>("--format") { Description = "Merged LoRA layout: peft (diffusers/ComfyUI/ai-toolkit keys), kohya, or both (OUT and OUT.kohya.safetensors).", DefaultValueFactory = _ => "peft" }.AcceptOnlyFromAmong("peft", "kohya", "both");

    static Option<string[]> Include() => new Option<string[]>("--include") { Description = "Only targets whose kind (to_q, ff.net.2, norm1.linear...) or name contains one of these.", AllowMultipleArgumentsPerToken = true }.TargetFilter();

    static Option<string[]> Exclude() => new Option<string[]>("--exclude") { Description = "Drop targets whose kind or name contains one of these.", AllowMultipleArgumentsPerToken = true }.TargetFilter();

    static Option<string?> Trigger() => new("--prompt") { Description = "The training caption (its trigger word), recorded in the LoRA's metadata (the cached data holds only its embedding)." };
}
