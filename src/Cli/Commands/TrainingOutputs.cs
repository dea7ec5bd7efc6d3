using MetaLoraNative.Engine;
using System.CommandLine;
using System.Globalization;
using System.Security.Cryptography;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Training;
using MetaLoraNative.Onnx.Imaging;
using MetaLoraNative.Onnx.Models;
using MetaLoraNative.Onnx.Scoring;
using MetaLoraNative.Onnx.Text;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace MetaLoraNative.Cli.Commands;

/// <summary>
/// What the training commands (train stage1|stage2|lora, personalize) write besides the state: the LoRA files with the
/// run's metadata, and the monitor's outputs next to --out (metrics.jsonl, loss.png, samples/, .stepNNNNNN snapshots).
/// </summary>
internal static class TrainingOutputs
{
    /// <summary>The merged LoRA of identity 0 in the --format layout(s); with <paramref name="unmerged"/> also the D/M/U file (<see cref="LoraFiles.UnmergedPath"/>: OUT.metalora).</summary>
    public static void WriteLora(LoraAdapter a, string outPath, string format, SafetensorsDType dtype, IReadOnlyDictionary<string, string> metadata, bool unmerged)
    {
        if (format is "peft" or "both") LoraFiles.Export(a, 0, outPath, LoraFormat.Peft, dtype, metadata: metadata);
        if (format is "kohya" or "both")
            LoraFiles.Export(a, 0, format == "both" ? Path.ChangeExtension(outPath, ".kohya.safetensors") : outPath, LoraFormat.Kohya, dtype, metadata: metadata);
        if (unmerged) LoraFiles.SaveMeta(a, 0, LoraFiles.UnmergedPath(outPath), metadata);
    }

    /// <summary>
    /// The run's settings as file metadata: metalora.* keys, kohya's ss_learning_rate / ss_max_train_steps / ss_seed,
    /// and modelspec.resolution (Stability's ModelSpec, github.com/Stability-AI/ModelSpec: "WIDTHxHEIGHT").
    /// </summary>
    public static Dictionary<string, string> RunMetadata(string stage, TrainOptions train, long iterations, string baseModel, Identity? person,
                                                        string? prompt, string? downPath)
    {
        string I(long v) => v.ToString(CultureInfo.InvariantCulture);
        string lr = train.LearningRate.ToString(CultureInfo.InvariantCulture);    // float: "0.0004", not its double expansion
        var m = new Dictionary<string, string>
        {
            ["metalora.stage"] = stage,
            ["metalora.lr"] = lr,
            ["metalora.iterations"] = I(iterations),
            ["metalora.seed"] = train.Seed.ToString(CultureInfo.InvariantCulture),
            ["metalora.batch_size"] = I(train.BatchSize),
            ["metalora.model"] = baseModel,
            ["ss_learning_rate"] = lr,
            ["ss_max_train_steps"] = I(iterations),
            ["ss_seed"] = train.Seed.ToString(CultureInfo.InvariantCulture),
        };
        if (person is { Examples.Count: > 0 })
        {
            // the buckets' area is near resolution² (prepare --resolution): recover it to the nearest 64
            double area = person.Examples.Average(e => (double)e.ImageTokens) * FluxConfig.PixelsPerToken * FluxConfig.PixelsPerToken;
            int resolution = (int)Math.Round(Math.Sqrt(area) / 64) * 64;
            m["metalora.resolution"] = I(resolution);
            m["modelspec.resolution"] = $"{resolution}x{resolution}";
            m["metalora.identity"] = person.Name;
        }
        if (prompt != null) m["metalora.prompt"] = prompt;
        if (downPath != null)
        {
            using var f = File.OpenRead(downPath);
            m["metalora.down_sha256"] = Convert.ToHexStringLower(SHA256.HashData(f));
            m["metalora.down_file"] = Path.GetFileName(downPath);
        }
        return m;
    }

    /// <summary>T5 (L, ctx) and CLIP pooled (vec) of the text encoders must fit the model, else an error names both sides.</summary>
    public static int T5Length(PromptEmbedding embedding, FluxConfig c)
    {
        if (embedding.T5.Length % c.ContextInDim != 0 || embedding.Pooled.Length != c.VecInDim)
            throw new InvalidDataException($"the text encoders give T5 {embedding.T5.Length} values and CLIP {embedding.Pooled.Length}, " +
                                           $"but the {c.Name} model takes context width {c.ContextInDim} and vec {c.VecInDim}");
        return embedding.T5.Length / c.ContextInDim;
    }

    /// <summary>Writes a PNG atomically (temporary file, then rename).</summary>
    public static void SavePng(Image<Rgb24> image, string path) => AtomicFile.Write(path, s => image.SaveAsPng(s));

    /// <summary>The loss plot: loss and its EMA per step, the eval loss as dots.</summary>
    public static void DrawLoss(string path, IReadOnlyList<LossPoint> history)
    {
        var series = new List<LineSeries>
        {
            new("loss", history.Select(p => ((double)p.Step, p.Loss)).ToList(), new Rgb24(160, 190, 230)),
            new("ema", history.Select(p => ((double)p.Step, p.Smoothed)).ToList(), new Rgb24(20, 70, 170)),
        };
        var evals = history.Where(p => p.EvalLoss != null).Select(p => ((double)p.Step, p.EvalLoss!.Value)).ToList();
        if (evals.Count > 0) series.Add(new("eval", evals, new Rgb24(210, 60, 30), Dots: true));
        using var image = LinePlot.Draw(series, "step", "loss (mse)");
        SavePng(image, path);
    }
}

/// <summary>The monitor's options (--eval-every, --sample-every, --sample-prompts, --save-every, --keep ...), one set per command.</summary>
internal sealed class MonitorFlags
{
    public Option<int> EvalEvery = new Option<int>("--eval-every") { Description = "Steps between evaluations (fixed timesteps and noise over the training images), logged as eval_loss in metrics.jsonl; 0: none.", DefaultValueFactory = _ => 0 }.AtLeast(0);
    public Option<int> SampleEvery = new Option<int>("--sample-every") { Description = "Steps between sample images (samples/stepNNNNNN_KK.png and a contact sheet per step, FLUX sampler + VAE of the models folder); 0: none.", DefaultValueFactory = _ => 0 }.AtLeast(0);
    public Option<string?> SamplePrompts = new("--sample-prompts") { Description = "Text file with one sample prompt per line (prompt K is sampled with seed K)." };
    public Option<int> SampleSize = new("--sample-size") { Description = $"Sample width and height in pixels (a multiple of {FluxConfig.PixelsPerToken}).", DefaultValueFactory = _ => 512 };
    public Option<int> SampleSteps = new("--sample-steps") { Description = "Euler steps per sample.", DefaultValueFactory = _ => 20 };
    public Option<int> SaveEvery = new Option<int>("--save-every") { Description = "Steps between merged LoRA snapshots (OUT.stepNNNNNN.safetensors); 0: none.", DefaultValueFactory = _ => 0 }.AtLeast(0);
    public Option<int> Keep = new Option<int>("--keep") { Description = "Keep only the K newest --save-every snapshots; 0 keeps all.", DefaultValueFactory = _ => 0 }.AtLeast(0);
    public Option<string?> Models;
    public Option<string?> SelectBy = new Option<string?>("--select-by") { Description = "Score every snapshot (--save-every / --snapshots) by identity and copy the best to OUT.best.safetensors: rfacesim (R-FaceSim against the other photos of --select-photos, FaceSim against the reference when there are none; CLIP-T beside it). Writes selection.csv, selection.md, selection.png; --out stays the last iteration." }
        .AcceptOnlyFromAmong(SnapshotSelection.RFaceSimName);
    public Option<string?> SelectPrompts = new("--select-prompts") { Description = "Held-out prompts of --select-by: a file with one per line ([man/woman] placeholders allowed) or a built-in set of `score` (facesim, recontext, stylistic, clip-t). Default: four of the paper's evaluation prompts. Sampled at --sample-size, --sample-steps, prompt K with seed K." };
    public Option<string?> SelectPhotos = new("--select-photos") { Description = "Folder of the person's photos for --select-by: the others are R-FaceSim's test images (class.txt: man|woman words the prompts). train stage2|lora: the training photo is the one named ref*, else the first by name; personalize: PHOTO." };

    /// <summary><paramref name="models"/>: the command's own --models option when it has one, else the monitor adds its own.</summary>
    public MonitorFlags(Option<string?>? models = null) =>
        Models = models ?? new Option<string?>("--models") { Description = "Models folder (T5, CLIP-L, VAE decoder) for --sample-every; default $METALORA_MODELS." };

    public IEnumerable<Option> All(bool withModels) =>
        withModels ? [EvalEvery, SampleEvery, SamplePrompts, SampleSize, SampleSteps, SaveEvery, Keep, Models] : [EvalEvery, SampleEvery, SamplePrompts, SampleSize, SampleSteps, SaveEvery, Keep];

    /// <summary>The options of checkpoint selection (train stage2|lora, personalize; Stage 1's D alone is not scored).</summary>
    public IEnumerable<Option> Selection => [SelectBy, SelectPrompts, SelectPhotos];

    /// <summary>
    /// --select-by checked against the other options and the files before any work (<see cref="SnapshotSelection.Plan"/>);
    /// null without --select-by. <paramref name="referencePhoto"/>: personalize's photo; <paramref name="caption"/>:
    /// the training caption when known; <paramref name="sweepSteps"/>: personalize's --snapshots.
    /// </summary>
    public SelectionPlan? PlanSelection(ParseResult r, string? referencePhoto, string? caption, int sweepSteps = 0, string snapshotFlags = "--save-every N")
    {
        if (r.GetValue(SelectBy) is null)
        {
            foreach (var o in new[] { SelectPrompts, SelectPhotos })
                if (r.GetValue(o) is not null) throw new Engine.InputException(o.Name, $"{o.Name} is used only with --select-by {SnapshotSelection.RFaceSimName}");
            return null;
        }
        return SnapshotSelection.Plan(OnnxCommandSupport.ModelsDir(r.GetValue(Models)), r.GetValue(SelectPhotos), referencePhoto, r.GetValue(SelectPrompts),
                                      caption, r.GetValue(SaveEvery) > 0 || sweepSteps > 0, snapshotFlags, r.GetValue(SampleSize), r.GetValue(SampleSteps));
    }

    /// <summary>OUT.best.safetensors: where --select-by copies the best snapshot (the --out itself stays the last iteration).</summary>
    public static string BestPath(string outPath) => Path.ChangeExtension(outPath, ".best.safetensors");

    /// <summary>
    /// The monitor for a run writing <paramref name="outPath"/>; <paramref name="saveSnapshot"/> writes one snapshot file.
    /// The returned scope owns the sampling encoders and is disposed after training.
    /// </summary>
    public Scope Create(ParseResult r, string outPath, FluxConfig config, IReadOnlyList<Example> evalExamples,
                        Action<LoraAdapter, string> saveSnapshot, IReadOnlyCollection<long>? snapshotSteps = null, SelectionPlan? selection = null)
    {
        string folder = Path.GetDirectoryName(Path.GetFullPath(outPath))!;
        string stem = Path.GetFileNameWithoutExtension(outPath);
        Directory.CreateDirectory(folder);
        var scope = new Scope();
        Action<FluxModel, LoraBinding, long>? sample = null;
        int sampleEvery = r.GetValue(SampleEvery);
        if (sampleEvery > 0)
            sample = scope.Sampler(r.GetValue(SamplePrompts), OnnxCommandSupport.ModelsDir(r.GetValue(Models)), config, Path.Combine(folder, "samples"),
                                   r.GetValue(SampleSize), r.GetValue(SampleSteps));
        if (selection != null)
            scope.Selection = new SnapshotSelection(selection, scope.Models(OnnxCommandSupport.ModelsDir(r.GetValue(Models))!),
                                                    e => TrainingOutputs.T5Length(e, config), folder, BestPath(outPath), Common.Log);
        var options = new MonitorOptions
        {
            MetricsPath = Path.Combine(folder, "metrics.jsonl"),
            EvalEvery = r.GetValue(EvalEvery), EvalExamples = evalExamples.Take(8).ToList(),
            LossPlotPath = Path.Combine(folder, "loss.png"), DrawLossPlot = TrainingOutputs.DrawLoss,
            SampleEvery = sample is null ? 0 : sampleEvery, Sample = sample,
            SaveEvery = r.GetValue(SaveEvery), Keep = r.GetValue(Keep), SnapshotSteps = snapshotSteps ?? [],
            SnapshotPath = step => Path.Combine(folder, $"{stem}.step{step:D6}.safetensors"), SaveSnapshot = saveSnapshot,
            ScoreSnapshot = scope.Selection is { } s ? s.Score : null,
            LiveLine = Console.IsOutputRedirected ? null : line => Console.Write(line == "\n" ? line : "\r" + line + "\u001b[K"),
        };
        scope.Monitor = new TrainingMonitor(options, Common.Log);
        return scope;
    }

    public sealed class Scope : IDisposable
    {
        ModelSet? set;
        public TrainingMonitor Monitor { get; set; } = null!;
        /// <summary>Checkpoint selection (--select-by); null without it.</summary>
        public SnapshotSelection? Selection { get; set; }

        /// <summary>The models folder's components, opened once for samples and selection.</summary>
        public ModelSet Models(string dir) => set ??= new ModelSet(dir);

        /// <summary>After training: the selection's one-line summary (best step, where its copy is), when the run selects.</summary>
        public void ReportSelection()
        {
            if (Selection != null) Console.WriteLine(Selection.Summary());
        }

        /// <summary>Encodes every prompt once; each call then samples them all with fixed seeds and writes a contact sheet. Null when there is no models folder.</summary>
        public Action<FluxModel, LoraBinding, long>? Sampler(string? promptsFile, string? modelsDir, FluxConfig config, string folder, int size, int steps)
        {
            if (promptsFile is null) throw new InputException("--sample-every", "needs --sample-prompts FILE (one prompt per line)");
            if (!File.Exists(promptsFile)) throw new FileNotFoundException($"--sample-prompts {promptsFile}: no such file");
            var prompts = File.ReadAllLines(promptsFile).Select(l => l.Trim()).Where(l => l.Length > 0).ToList();
            if (prompts.Count == 0) throw new InputException("--sample-prompts", $"{promptsFile}: holds no prompt");
            const int side = FluxConfig.PixelsPerToken;
            if (size <= 0 || size % side != 0) throw new InputException("--sample-size", $"{size} must be a positive multiple of {side}");
            if (steps < 1) throw new InputException("--sample-steps", $"{steps} must be at least 1");
            var problems = modelsDir is null ? ["no models folder (--models DIR or METALORA_MODELS)"]
                         : ModelsFolder.Check(modelsDir, [ModelsFolder.T5, ModelsFolder.ClipL, ModelsFolder.VaeDecoder]);
            if (problems.Count > 0)
            {
                Console.WriteLine($"warning: no samples during training: {problems[0]}");
                return null;
            }
            var text = Models(modelsDir!).OpenTextEncoder();
            var embeddings = prompts.Select(p => text.Encode(p)).ToList();
            var lengths = embeddings.Select(e => TrainingOutputs.T5Length(e, config)).ToList();
            var vae = Models(modelsDir!).OpenVae(encoder: false, decoder: true);
            Directory.CreateDirectory(folder);
            return (model, binding, step) =>
            {
                var images = new List<Image<Rgb24>>();
                try
                {
                    for (int k = 0; k < prompts.Count; k++)
                    {
                        var image = SnapshotSelection.Render(model, binding, embeddings[k], lengths[k], size, steps, guidance: 3.5f, seed: (ulong)k, vae);
                        images.Add(image);
                        TrainingOutputs.SavePng(image, Path.Combine(folder, $"step{step:D6}_{k:D2}.png"));
                    }
                    using var sheet = ContactSheet.Build(images);
                    TrainingOutputs.SavePng(sheet, Path.Combine(folder, $"step{step:D6}_sheet.png"));
                    Common.Log($"samples at step {step}: {prompts.Count} image(s) and a contact sheet in {folder}");
                }
                finally
                {
                    images.ForEach(i => i.Dispose());
                }
            };
        }

        public void Dispose() => set?.Dispose();
    }
}
