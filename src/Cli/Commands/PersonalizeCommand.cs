using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Planning;
using MetaLoraNative.Engine.Training;
using MetaLoraNative.Onnx.Augment;
using MetaLoraNative.Onnx.Cache;
using MetaLoraNative.Onnx.Datasets;
using MetaLoraNative.Onnx.Models;

namespace MetaLoraNative.Cli.Commands;

/// <summary>
/// `metalora personalize PHOTO --down D --out me.safetensors`: one photo to a merged LoRA in one command, the paths of
/// `prepare` (face, the paper's crops, encodings through the cache) and `train stage2` (or `train lora` with
/// --standard) back to back, with the wall time of each phase.
/// </summary>
internal static class PersonalizeCommand
{
    /// <summary>The options of one photo's personalisation, shared by `personalize` and `evaluate` (which trains one per identity).</summary>
    internal sealed class Flags
    {
        public readonly TrainCommand.Shared Shared = new(new Stage2Options().StateEvery);
        public readonly Option<string?> Down = new("--down") { Description = "Stage-1 result (Meta-Down D), kept frozen. Not needed with --standard." };
        public readonly Option<bool> Standard = new("--standard") { Description = "Train the paper's baseline instead (a standard LoRA, A and B trained, no Meta-Down): personalisation without a D." };
        public readonly Option<int> Resolution = new Option<int>("--resolution") { Description = "Training resolution (bucket area near resolution²).", DefaultValueFactory = _ => 512 }.AcceptOnlyFromAmong("256", "512", "768", "1024");
        public readonly Option<int> Max = new("--max") { Description = "Most crops (paper: 25).", DefaultValueFactory = _ => 25 };
        public readonly Option<string?> Cache = new("--cache") { Description = "Encoding cache folder. Default: <models>/cache." };
        public readonly Option<int?> Iterations = new("--iterations") { Description = "Training iterations. Default: 375 (paper, Meta-LoRA) or 625 with --standard (paper's rank-1 LoRA baseline)." };
        public readonly Option<int> Rank = new("--rank") { Description = "r2 of M and U (the merged LoRA's rank), or the standard LoRA's rank (paper: 1).", DefaultValueFactory = _ => 1 };
        public readonly Option<string> Format = TrainCommand.Format();
        public readonly Option<string> DType = LoraCommand.DType("Merged LoRA");

        public Flags()
        {
            Shared.Model.Required = false;
            Shared.Model.Description = "The base model (BFL or diffusers checkpoint, or random:PRESET:SEED). Default: flux1-dev.safetensors in the models folder.";
            Shared.Monitor.Models.Description = "Models folder with models.json (face detector, VAE, T5, CLIP-L); default $METALORA_MODELS.";
        }

        /// <summary>The options besides the training ones of <see cref="Shared"/>.</summary>
        public IEnumerable<Option> Own => [Down, Standard, Resolution, Max, Cache, Iterations, Rank, Format, DType];

        /// <summary>--standard or --down (exactly one), and the iterations (the mode's paper default unless given).</summary>
        public (bool Standard, string? Down, int Iterations) Mode(ParseResult r)
        {
            bool baseline = r.GetValue(Standard);
            string? downPath = r.GetValue(Down);
            if (!baseline && downPath is null) throw new InputException("--down", "a Stage-1 Meta-Down (--down D.safetensors) is needed; without one, pass --standard");
            if (baseline && downPath is not null) throw new InputException("--standard", "trains without a Meta-Down; drop --down or --standard");
            int iterations = r.GetValue(Iterations) ?? (baseline ? new StandardLoraOptions().Iterations : new Stage2Options().Iterations);
            if (iterations < 1) throw new InputException("--iterations", $"must be at least 1, got {iterations}");
            return (baseline, downPath, iterations);
        }

        /// <summary>
        /// The models folder (checked for <paramref name="components"/>, or for all when null), the backend, the base
        /// model and, for <paramref name="downPath"/>, the Meta-Down.
        /// </summary>
        public Loaded Load(ParseResult r, string? downPath, IEnumerable<string>? components = null, Func<ModelSet, IReadOnlyList<Example>>? planFor = null)
        {
            string dir = OnnxCommandSupport.ModelsDir(r.GetValue(Shared.Monitor.Models))
                         ?? throw new InputException("--models", "no models folder: pass --models DIR or set METALORA_MODELS (docs/ENCODERS.md)");
            var problems = ModelsFolder.Check(dir, components);
            if (problems.Count > 0) throw new InvalidDataException(string.Join("\n", problems));
            var loaded = new Loaded { ModelsDir = dir, ModelPath = r.GetValue(Shared.Model) ?? Path.Combine(dir, "flux1-dev.safetensors"), DownPath = downPath };
            try
            {
                loaded.Models = new ModelSet(dir);
                loaded.Backend = Common.CreateBackend(r.GetValue(Shared.Device)!);
                loaded.MetaDown = downPath is null ? null : LoraFiles.Load(downPath, FluxLoader.Inspect(loaded.ModelPath), loaded.Backend, Common.Log);
                var examples = planFor?.Invoke(loaded.Models);
                // The step the memory check and the planner size: the examples' own, or without them (evaluate plans once
                // for every identity) a square crop at --resolution with the longest T5 context, erring on the side of fitting.
                int side = r.GetValue(Resolution) / FluxConfig.PixelsPerToken;
                var (image, text) = examples is { Count: > 0 } ? Common.Tokens(examples) : (side * side, MaxT5Tokens);
                Common.CheckHostMemory(r, loaded.Backend, loaded.ModelPath, (image, text), recompute: r.GetValue(Shared.Recompute) == "on");
                var mode = downPath is null ? LoraMode.Standard : LoraMode.Meta;
                int rank2 = r.GetValue(Rank), rank1 = loaded.MetaDown?.Rank1 ?? rank2;
                loaded.Weights = Shared.Placement.Load(r, loaded.ModelPath, loaded.Backend,
                    c => new TrainingShape(c, 1, image, text, FluxNames.LoraTargets(c), mode, rank1, rank2, mode == LoraMode.Standard, TrainIdentity: true, 1, 1),
                    RecomputePolicy.Parse(r.GetValue(Shared.Recompute)!));
                return loaded;
            }
            catch
            {
                loaded.Dispose();
                throw;
            }
        }

        /// <summary>FLUX.1-dev's T5 context length (BFL's max_sequence_length).</summary>
        const int MaxT5Tokens = 512;

        /// <summary>The encoding cache folder: --cache, else the models folder's cache.</summary>
        public string CacheDir(ParseResult r, ModelSet models) => r.GetValue(Cache) ?? Path.Combine(models.Directory, "cache");

        public AugmentOptions Augment(ParseResult r) => new() { Resolution = r.GetValue(Resolution), MaxImages = r.GetValue(Max) };

        /// <summary>One photo's job from the flags; <paramref name="outPath"/> is the LoRA file to write.</summary>
        public Job Job(ParseResult r, Loaded loaded, string photo, string caption, string outPath, string statePath, int iterations, string? identityName = null) => new()
        {
            Photo = photo, Caption = caption, IdentityName = identityName, OutPath = outPath, StatePath = statePath,
            Standard = loaded.MetaDown is null, Iterations = iterations, Rank = r.GetValue(Rank), Train = Shared.Train(r, 1), StateEvery = r.GetValue(Shared.Every),
            Augment = Augment(r),
            CacheDir = r.GetValue(Cache) ?? Path.Combine(loaded.ModelsDir, "cache"), Format = r.GetValue(Format)!, DType = LoraCommand.ParseDType(r.GetValue(DType)!),
        };
    }

    /// <summary>What every personalisation of a run shares: the models folder, the backend, the base model and the Meta-Down (none for --standard).</summary>
    internal sealed class Loaded : IDisposable
    {
        public required string ModelsDir { get; init; }
        public required string ModelPath { get; init; }
        public string? DownPath { get; init; }
        public ModelSet Models { get; set; } = null!;
        public IBackend Backend { get; set; } = null!;
        public FluxWeights Weights { get; set; } = null!;
        public LoraAdapter? MetaDown { get; set; }

        public void Dispose()
        {
            MetaDown?.Dispose();
            Weights?.Dispose();
            Backend?.Dispose();
            Models?.Dispose();
        }
    }

    /// <summary>One photo to personalise and how.</summary>
    internal sealed record Job
    {
        public required string Photo { get; init; }
        public required string Caption { get; init; }
        /// <summary>The identity's name in the LoRA's metadata; default the photo's file name.</summary>
        public string? IdentityName { get; init; }
        public required string OutPath { get; init; }
        public required string StatePath { get; init; }
        public required bool Standard { get; init; }
        public required int Iterations { get; init; }
        public required int Rank { get; init; }
        public required TrainOptions Train { get; init; }
        public required int StateEvery { get; init; }
        public required AugmentOptions Augment { get; init; }
        public required string CacheDir { get; init; }
        public required string Format { get; init; }
        public required SafetensorsDType DType { get; init; }
    }

    /// <summary>Makes the monitor of a run: the person (its examples for the eval loss) and the snapshot writer.</summary>
    internal delegate MonitorFlags.Scope MonitorFactory(Identity person, Action<LoraAdapter, string> saveSnapshot);

    /// <summary>
    /// The personalisation `personalize` runs and `evaluate` repeats per identity: crops and encodings of the photo
    /// (through the cache), Stage 2 against the frozen Meta-Down (or the standard LoRA), then the LoRA file(s) at
    /// job.OutPath. Returns the trained adapter (identity 0), which the caller disposes.
    /// </summary>
    internal static LoraAdapter Personalize(Loaded loaded, Job job, MonitorFactory monitorFor, Action<string> phaseDone, Identity? prepared = null)
    {
        var person = prepared ?? Stage2Data.Prepare(job.Photo, job.Caption, loaded.Models, new EncodingCache(job.CacheDir), job.Augment, Common.Log, phaseDone);
        if (job.IdentityName is { } name) person = person with { Name = name };
        var meta = TrainingOutputs.RunMetadata(job.Standard ? "lora" : "2", job.Train, job.Iterations, loaded.ModelPath, person, job.Caption, loaded.DownPath);
        meta["metalora.base_dtype"] = Engine.Quantization.BaseDTypes.Name(loaded.Weights.BaseDType);
        if (Engine.Quantization.Fp8Activations.FromEnvironment()) meta["metalora.fp8_matmul"] = "w8a8";   // the model read the same switch
        using var monitor = monitorFor(person, (a, path) => TrainingOutputs.WriteLora(a, path, job.Format, job.DType, meta, unmerged: false));
        var model = new FluxModel(loaded.Weights);
        var adapter = job.Standard
            ? Stages.StandardLora(model, person, new StandardLoraOptions
            {
                Train = job.Train, Iterations = job.Iterations, Rank = job.Rank, StatePath = job.StatePath, StateEvery = job.StateEvery, Monitor = monitor.Monitor,
            }, Common.Log)
            : Stages.Stage2(model, loaded.MetaDown!, person, new Stage2Options
            {
                Train = job.Train, Iterations = job.Iterations, Rank2 = job.Rank, StatePath = job.StatePath, StateEvery = job.StateEvery, Monitor = monitor.Monitor,
            }, Common.Log);
        try
        {
            phaseDone("train");
            TrainingOutputs.WriteLora(adapter, job.OutPath, job.Format, job.DType, meta, unmerged: !job.Standard);
            phaseDone("save");
            Console.WriteLine($"wrote {(job.Standard ? "standard" : "merged")} LoRA ({job.Format}, rank {adapter.Rank2}) of '{person.Name}' to {job.OutPath}");
            monitor.ReportSelection();
            return adapter;
        }
        catch
        {
            adapter.Dispose();
            throw;
        }
    }

    public static Command Create()
    {
        var f = new Flags();
        var photo = new Argument<string>("photo") { Description = "The one photo of the person." };
        var prompt = new Option<string>("--prompt") { Description = "Training caption with the trigger word.", DefaultValueFactory = _ => "a photo of sks person" };
        var snapshots = new Option<string?>("--snapshots") { Description = "Comma-separated iterations at which a merged LoRA is also written (OUT.stepNNNNNN.safetensors), e.g. 250,375,500,625,750 for the paper's sweeps." };
        var cmd = new Command("personalize",
            "One photo → a merged LoRA: detect the face, make the paper's crops, encode them (cached), train Stage 2 against a frozen Meta-Down " +
            "(or with --standard the paper's standard-LoRA baseline) and write the LoRA. Prints the time of each phase.");
        foreach (var o in f.Own.Append(prompt).Append(snapshots)) cmd.Options.Add(o);
        cmd.Arguments.Add(photo);
        foreach (var o in f.Shared.WithoutData.Concat(f.Shared.Monitor.Selection)) cmd.Options.Add(o);
        cmd.SetAction(r =>
        {
            string outPath = r.GetValue(f.Shared.Out)!;
            f.Shared.ProbeOutputs(r);
            var (standard, downPath, iterations) = f.Mode(r);
            var sweep = ParseSteps(r.GetValue(snapshots), iterations);
            var selection = f.Shared.Monitor.PlanSelection(r, r.GetValue(photo), r.GetValue(prompt), sweep.Length, "--save-every N or --snapshots STEPS");
            using var runLock = f.Shared.LockLora(r, unmerged: !standard);
            var phases = new PhaseClock();
            Identity? person = null;   // prepared first, so the memory planner sees the step it plans for
            using var loaded = f.Load(r, downPath, planFor: models =>
            {
                person = Stage2Data.Prepare(r.GetValue(photo)!, r.GetValue(prompt)!, models, new EncodingCache(f.CacheDir(r, models)), f.Augment(r), Common.Log, phases.Done);
                return person.Examples;
            });
            phases.Done("load");

            var job = f.Job(r, loaded, r.GetValue(photo)!, r.GetValue(prompt)!, outPath, f.Shared.StatePath(r), iterations);
            using var adapter = Personalize(loaded, job, (p, save) => f.Shared.Monitor.Create(r, outPath, loaded.Weights.Config, p.Examples, save, sweep, selection), phases.Done, person);
            phases.PrintTable();
            return 0;
        });
        return cmd;
    }

    /// <summary>"250,375,500" → the steps, each within 1..iterations.</summary>
    static long[] ParseSteps(string? text, int iterations)
    {
        if (string.IsNullOrWhiteSpace(text)) return [];
        return text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries).Select(t =>
            long.TryParse(t, NumberStyles.None, CultureInfo.InvariantCulture, out long v) && v >= 1 && v <= iterations ? v
                : throw new InputException("--snapshots", $"'{t}' is not an iteration between 1 and {iterations}")).Distinct().Order().ToArray();
    }

    /// <summary>Wall time per phase: each Done(name) closes the phase that ran since the previous one.</summary>
    sealed class PhaseClock
    {
        readonly Stopwatch clock = Stopwatch.StartNew();
        readonly List<(string Name, TimeSpan Time)> phases = [];
        TimeSpan last;

        public void Done(string name)
        {
            var now = clock.Elapsed;
            phases.Add((name, now - last));
            last = now;
            Console.WriteLine($"phase {name}: {Seconds(phases[^1].Time)}");
        }

        public void PrintTable()
        {
            Console.WriteLine("phase            wall time");
            foreach (var (name, time) in phases) Console.WriteLine($"{name,-16} {Seconds(time),10}");
            Console.WriteLine($"{"total",-16} {Seconds(clock.Elapsed),10}");
        }

        static string Seconds(TimeSpan t) => t.TotalSeconds.ToString("F2", CultureInfo.InvariantCulture) + " s";
    }
}
