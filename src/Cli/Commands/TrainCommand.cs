using System.CommandLine;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Training;

namespace MetaLoraNative.Cli.Commands;

internal static class TrainCommand
{
    sealed class Shared
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

        public Shared(int stateEvery) =>
            Every = new Option<int>("--state-every") { Description = "Iterations between writes of the training state (it is also written at the end).", DefaultValueFactory = _ => stateEvery }.AtLeast(1);

        public IEnumerable<Option> All => [Model, Data, Out, Lr, Wd, Clip, Sampling, Guidance, Seed, Device, State, Every, Recompute];

        public TrainOptions Train(ParseResult r, int batch) => new()
        {
            LearningRate = r.GetValue(Lr), WeightDecay = r.GetValue(Wd), MaxGradNorm = r.GetValue(Clip), BatchSize = batch,
            Sampling = Enum.Parse<TimestepSampling>(r.GetValue(Sampling)!, ignoreCase: true), Guidance = r.GetValue(Guidance), Seed = r.GetValue(Seed),
            Recompute = RecomputePolicy.Parse(r.GetValue(Recompute)!),
        };

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
        var include = new Option<string[]>("--include") { Description = "Only targets whose kind (to_q, ff.net.2, norm1.linear...) or name contains one of these.", AllowMultipleArgumentsPerToken = true }.TargetFilter();
        var exclude = new Option<string[]>("--exclude") { Description = "Drop targets whose kind or name contains one of these.", AllowMultipleArgumentsPerToken = true }.TargetFilter();
        var stage1 = new Command("stage1", "Algorithm 1: meta-train the shared Meta-Down D over many identities. Writes D (lora_down per target) to --out.")
        {
            bs, total, bucket, warm, perBucket, r1, r2, include, exclude,
        };
        foreach (var o in s1.All) stage1.Options.Add(o);
        stage1.SetAction(r =>
        {
            using var be = Common.CreateBackend(r.GetValue(s1.Device)!);
            using var weights = FluxLoader.Load(r.GetValue(s1.Model)!, be);
            var people = LatentDataset.LoadIdentities(r.GetValue(s1.Data)!);
            int q = r.GetValue(bucket);
            var opts = new Stage1Options
            {
                Train = s1.Train(r, r.GetValue(bs)), TotalIterations = r.GetValue(total), BucketIterations = q,
                WarmupIterations = r.GetValue(warm) ?? (int)(0.4 * q), IdentitiesPerBucket = r.GetValue(perBucket),
                Rank1 = r.GetValue(r1), Rank2 = r.GetValue(r2), StatePath = s1.StatePath(r), StateEvery = r.GetValue(s1.Every),
                Include = r.GetValue(include), Exclude = r.GetValue(exclude),
            };
            using var adapter = Stages.Stage1(new FluxModel(weights), people, opts, Common.Log);
            LoraFiles.SaveMeta(adapter, null, r.GetValue(s1.Out)!, new Dictionary<string, string> { ["metalora.stage"] = "1" });
            Console.WriteLine($"wrote Meta-Down ({adapter.Targets.Count} targets, r1 {adapter.Rank1}) to {r.GetValue(s1.Out)}");
            return 0;
        });

        var s2 = new Shared(new Stage2Options().StateEvery);
        var down = new Option<string>("--down") { Description = "Stage-1 result (Meta-Down D), kept frozen.", Required = true };
        var iters = new Option<int>("--iterations") { Description = "Stage-2 iterations (paper: 375).", DefaultValueFactory = _ => 375 }.AtLeast(1);
        var rank2 = new Option<int>("--rank2") { Description = "r2, the rank of the personal M and U and of the merged LoRA (paper: 1).", DefaultValueFactory = _ => 1 }.AtLeast(1);
        var format = new Option<string>("--format") { Description = "Merged LoRA layout: peft (diffusers/ComfyUI/ai-toolkit keys), kohya, or both.", DefaultValueFactory = _ => "peft" }.AcceptOnlyFromAmong("peft", "kohya", "both");
        var dtype = LoraCommand.DType("Merged LoRA");
        var stage2 = new Command("stage2", "Algorithm 2: personalise one identity (its cached augmented crops) with D frozen. Writes the merged rank-r2 LoRA to --out and the unmerged D/M/U beside it (.meta.safetensors).")
        {
            down, iters, rank2, format, dtype,
        };
        foreach (var o in s2.All) stage2.Options.Add(o);
        stage2.SetAction(r =>
        {
            using var be = Common.CreateBackend(r.GetValue(s2.Device)!);
            using var weights = FluxLoader.Load(r.GetValue(s2.Model)!, be);
            var person = LatentDataset.LoadIdentity(r.GetValue(s2.Data)!);
            using var metaDown = LoraFiles.Load(r.GetValue(down)!, weights.Config, be);
            if (metaDown.Mode != LoraMode.Meta)
                throw new Engine.InputException(r.GetValue(down)!, "is a merged LoRA; --down needs the Meta-Down (lora_down) file Stage 1 wrote");
            var opts = new Stage2Options
            {
                Train = s2.Train(r, 1), Iterations = r.GetValue(iters), Rank2 = r.GetValue(rank2),
                StatePath = s2.StatePath(r), StateEvery = r.GetValue(s2.Every),
            };
            using var adapter = Stages.Stage2(new FluxModel(weights), metaDown, person, opts, Common.Log);
            string outPath = r.GetValue(s2.Out)!;
            var dt = LoraCommand.ParseDType(r.GetValue(dtype)!);
            string fmt = r.GetValue(format)!;
            if (fmt is "peft" or "both") LoraFiles.Export(adapter, 0, outPath, LoraFormat.Peft, dt);
            if (fmt is "kohya" or "both") LoraFiles.Export(adapter, 0, fmt == "both" ? Path.ChangeExtension(outPath, ".kohya.safetensors") : outPath, LoraFormat.Kohya, dt);
            LoraFiles.SaveMeta(adapter, 0, Path.ChangeExtension(outPath, ".meta.safetensors"));
            Console.WriteLine($"wrote merged LoRA ({fmt}, rank {adapter.Rank2}) to {outPath}");
            return 0;
        });

        return new Command("train", "Meta-LoRA training on cached latents and text embeddings.") { stage1, stage2 };
    }
}
