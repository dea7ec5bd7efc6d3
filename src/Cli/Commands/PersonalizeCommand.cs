using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine;
using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
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
    public static Command Create()
    {
        var s = new TrainCommand.Shared(new Stage2Options().StateEvery);
        s.Model.Required = false;
        s.Model.Description = "The base model (BFL or diffusers checkpoint, or random:PRESET:SEED). Default: flux1-dev.safetensors in the models folder.";
        s.Monitor.Models.Description = "Models folder with models.json (face detector, VAE, T5, CLIP-L); default $METALORA_MODELS.";
        var photo = new Argument<string>("photo") { Description = "The one photo of the person." };
        var down = new Option<string?>("--down") { Description = "Stage-1 result (Meta-Down D), kept frozen. Not needed with --standard." };
        var standard = new Option<bool>("--standard") { Description = "Train the paper's baseline instead (a standard LoRA, A and B trained, no Meta-Down): personalisation without a D." };
        var prompt = new Option<string>("--prompt") { Description = "Training caption with the trigger word.", DefaultValueFactory = _ => "a photo of sks person" };
        var resolution = new Option<int>("--resolution") { Description = "Training resolution (bucket area near resolution²).", DefaultValueFactory = _ => 512 }.AcceptOnlyFromAmong("256", "512", "768", "1024");
        var max = new Option<int>("--max") { Description = "Most crops (paper: 25).", DefaultValueFactory = _ => 25 };
        var cache = new Option<string?>("--cache") { Description = "Encoding cache folder. Default: <models>/cache." };
        var iters = new Option<int?>("--iterations") { Description = "Training iterations. Default: 375 (paper, Meta-LoRA) or 625 with --standard (paper's rank-1 LoRA baseline)." };
        var rank = new Option<int>("--rank") { Description = "r2 of M and U (the merged LoRA's rank), or the standard LoRA's rank (paper: 1).", DefaultValueFactory = _ => 1 };
        var format = TrainCommand.Format();
        var dtype = LoraCommand.DType("Merged LoRA");
        var snapshots = new Option<string?>("--snapshots") { Description = "Comma-separated iterations at which a merged LoRA is also written (OUT.stepNNNNNN.safetensors), e.g. 250,375,500,625,750 for the paper's sweeps." };
        var cmd = new Command("personalize",
            "One photo → a merged LoRA: detect the face, make the paper's crops, encode them (cached), train Stage 2 against a frozen Meta-Down " +
            "(or with --standard the paper's standard-LoRA baseline) and write the LoRA. Prints the time of each phase.")
        {
            down, standard, prompt, resolution, max, cache, iters, rank, format, dtype, snapshots,
        };
        cmd.Arguments.Add(photo);
        foreach (var o in s.WithoutData) cmd.Options.Add(o);
        cmd.SetAction(r =>
        {
            OutputPath.CheckFile(r.GetValue(s.Out), "--out"); OutputPath.CheckFile(s.StatePath(r), "--state");
            bool baseline = r.GetValue(standard);
            string? downPath = r.GetValue(down);
            if (!baseline && downPath is null) throw new InputException("--down", "a Stage-1 Meta-Down (D.safetensors) is needed; without one, pass --standard");
            if (baseline && downPath is not null) throw new InputException("--standard", "trains without a Meta-Down; drop --down or --standard");
            int iterations = r.GetValue(iters) ?? (baseline ? new StandardLoraOptions().Iterations : new Stage2Options().Iterations);
            if (iterations < 1) throw new InputException("--iterations", $"must be at least 1, got {iterations}");
            var sweep = ParseSteps(r.GetValue(snapshots), iterations);
            var phases = new PhaseClock();

            string dir = OnnxCommandSupport.ModelsDir(r.GetValue(s.Monitor.Models))
                         ?? throw new InputException("--models", "no models folder: pass --models DIR or set METALORA_MODELS (docs/ENCODERS.md)");
            var problems = ModelsFolder.Check(dir);
            if (problems.Count > 0) throw new InvalidDataException(string.Join("\n", problems));
            using var set = new ModelSet(dir);
            string modelPath = r.GetValue(s.Model) ?? Path.Combine(dir, "flux1-dev.safetensors");
            using var be = Common.CreateBackend(r.GetValue(s.Device)!);
            Common.CheckHostMemory(r, be, modelPath, (r.GetValue(resolution) * r.GetValue(resolution) / (FluxConfig.PixelsPerToken * FluxConfig.PixelsPerToken), 512), recompute: r.GetValue(s.Recompute) == "on");
            using var weights = FluxLoader.Load(modelPath, be);
            using var metaDown = downPath is null ? null : LoraFiles.Load(downPath, weights.Config, be);
            phases.Done("load");

            string caption = r.GetValue(prompt)!;
            var person = Stage2Data.Prepare(r.GetValue(photo)!, caption, set, new EncodingCache(r.GetValue(cache) ?? Path.Combine(dir, "cache")),
                new AugmentOptions { Resolution = r.GetValue(resolution), MaxImages = r.GetValue(max) }, Common.Log, phases.Done);

            string outPath = r.GetValue(s.Out)!, fmt = r.GetValue(format)!;
            var dt = LoraCommand.ParseDType(r.GetValue(dtype)!);
            var train = s.Train(r, 1);
            var meta = TrainingOutputs.RunMetadata(baseline ? "lora" : "2", train, iterations, modelPath, person, caption, downPath);
            using var monitor = s.Monitor.Create(r, outPath, weights.Config, person.Examples,
                                                 (a, path) => TrainingOutputs.WriteLora(a, path, fmt, dt, meta, unmerged: false), sweep);
            var model = new FluxModel(weights);
            using var adapter = baseline
                ? Stages.StandardLora(model, person, new StandardLoraOptions
                {
                    Train = train, Iterations = iterations, Rank = r.GetValue(rank), StatePath = s.StatePath(r), StateEvery = r.GetValue(s.Every), Monitor = monitor.Monitor,
                }, Common.Log)
                : Stages.Stage2(model, metaDown!, person, new Stage2Options
                {
                    Train = train, Iterations = iterations, Rank2 = r.GetValue(rank), StatePath = s.StatePath(r), StateEvery = r.GetValue(s.Every), Monitor = monitor.Monitor,
                }, Common.Log);
            phases.Done("train");

            TrainingOutputs.WriteLora(adapter, outPath, fmt, dt, meta, unmerged: !baseline);
            phases.Done("save");
            Console.WriteLine($"wrote {(baseline ? "standard" : "merged")} LoRA ({fmt}, rank {adapter.Rank2}) of '{person.Name}' to {outPath}");
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
