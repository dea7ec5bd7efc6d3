using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Training;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Sampling;
using MetaLoraNative.Onnx.Datasets;
using MetaLoraNative.Onnx.Imaging;
using MetaLoraNative.Onnx.Models;
using MetaLoraNative.Onnx.Scoring;
using MetaLoraNative.Onnx.Text;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace MetaLoraNative.Cli.Commands;

/// <summary>
/// `metalora evaluate --data DIR --out DIR`: the paper's evaluation (Table 5) over a Meta-PHD-style folder, one
/// sub-folder per identity (a reference photo "ref*" and other photos of the person, PersonFolders' layout). Per
/// identity: personalise on the reference (personalize's code path) or take --loras DIR/&lt;identity&gt;.safetensors,
/// generate every prompt × seed with FLUX's sampler (the LoRA applied at strength 1, as the paper evaluates), score
/// them (ScoreRunner: CLIP-T, FaceSim vs the reference, R-FaceSim vs the other photos), and write the identity's
/// result.json last. Layout of OUT (method = --label):
///   OUT/&lt;method&gt;/&lt;identity&gt;/lora.safetensors (+ .meta, .state, metrics.jsonl, loss.png)   the trained LoRA
///   OUT/&lt;method&gt;/&lt;identity&gt;/generated/NN_seedS.png, generated_sheet.png                    the images
///   OUT/&lt;method&gt;/&lt;identity&gt;/result.json                                                the identity's scores
///   OUT/results.md, results.csv, scatter.png                                     every method under OUT
/// A rerun skips identities that have their result.json; a failed identity is reported, left out and listed, and
/// the exit code is 1 when any failed.
/// </summary>
public static class EvaluateCommand
{
    public static Command Create()
    {
        var f = new PersonalizeCommand.Flags();
        var s = f.Shared;
        s.Data.Description = "Evaluation photos, Meta-PHD style: one sub-folder per identity with its reference photo (the file whose name " +
                             "starts with 'ref', else the first by name: personalised on, and FaceSim's target) and other photos of the " +
                             "person (R-FaceSim's targets). Optional class.txt: man|woman.";
        s.Out.Description = "Evaluation folder: <label>/<identity>/ per identity (LoRA, generated images, result.json), and results.md, " +
                            "results.csv, scatter.png over every method evaluated into it.";
        var loras = new Option<string?>("--loras") { Description = "Evaluate given LoRAs instead of training: DIR/<identity>.safetensors per identity (PEFT, kohya or Meta D/M/U)." };
        var label = new Option<string?>("--label") { Description = "Method name: the row in the tables and the sub-folder of --out. Default: meta-lora, standard-lora with --standard, or the --loras folder's name." };
        var caption = new Option<string>("--caption") { Description = $"Training caption; its {PaperPrompts.TriggerPlaceholder} is the --trigger word.", DefaultValueFactory = _ => $"a photo of {PaperPrompts.TriggerPlaceholder} person" };
        var trigger = ScoreCommand.Trigger(defaultWord: "sks");
        var prompts = new Option<string>("--prompts")
        {
            Description = "Evaluation prompts: facesim (paper Table 3, the R-FaceSim prompts), recontext (Table 1), stylistic (Table 2), clip-t (Tables 1+2, " +
                          "the paper's CLIP-T prompts), or a text file, one prompt per line ([man/woman], [his/her], [he/she], {trigger} filled in).",
            DefaultValueFactory = _ => "facesim",
        };
        var subject = new Option<string>("--class") { Description = "Subject class for identities without class.txt (the man/woman prompt wording).", DefaultValueFactory = _ => "woman" }.AcceptOnlyFromAmong("woman", "man");
        var seeds = new Option<int>("--seeds") { Description = "Seeds per prompt, 0..N-1 (paper: 5).", DefaultValueFactory = _ => 5 }.AtLeast(1);
        var steps = new Option<int>("--steps") { Description = "Euler steps of the sampler per image (paper: 30).", DefaultValueFactory = _ => 30 }.AtLeast(1);
        var size = new Option<int>("--size") { Description = $"Width and height of the generated images in pixels (a multiple of {FluxConfig.PixelsPerToken}).", DefaultValueFactory = _ => 1024 }.PositiveMultipleOf(FluxConfig.PixelsPerToken);
        var generateGuidance = new Option<float>("--generate-guidance") { Description = "Distilled guidance of the sampler (paper: 3.5); --guidance is the training one.", DefaultValueFactory = _ => 3.5f }.Finite();
        var plot = new Option<string>("--plot") { Description = "The scatter plot's y axis against CLIP-T: rfacesim (with the paper's Table 5 methods) or facesim.", DefaultValueFactory = _ => "rfacesim" }.AcceptOnlyFromAmong("rfacesim", "facesim");
        var noClip = new Option<bool>("--no-clip") { Description = "Skip CLIP-T (no CLIP ViT-B/32 models needed)." };

        var cmd = new Command("evaluate",
            "The paper's evaluation over a folder of identities: personalise each on its reference photo (or take --loras), generate the " +
            "evaluation prompts × seeds, score CLIP-T, FaceSim and R-FaceSim, and write results.md / results.csv (Table 5's shape: mean ± std " +
            "over identities per method, then per identity) and scatter.png. Resumable: identities with results are skipped.");
        foreach (var o in new Option[] { loras, label, caption, trigger, prompts, subject, seeds, steps, size, generateGuidance, plot, noClip }.Concat(f.Own))
            cmd.Options.Add(o);
        foreach (var o in s.All.Where(o => o != s.State)) cmd.Options.Add(o);   // one state per identity, beside its LoRA

        cmd.SetAction(r =>
        {
            string? lorasDir = r.GetValue(loras);
            if (lorasDir is not null && (r.GetValue(f.Down) is not null || r.GetValue(f.Standard)))
                throw new InputException("--loras", "evaluates the given LoRAs without training; drop --down and --standard");
            if (lorasDir is not null && !Directory.Exists(lorasDir)) throw new InputException("--loras", $"{lorasDir}: no such folder");
            var (standard, downPath, iterations) = lorasDir is null ? f.Mode(r) : (false, null, 0);
            string method = r.GetValue(label) ?? (lorasDir is not null ? Path.GetFileName(Path.GetFullPath(lorasDir).TrimEnd(Path.DirectorySeparatorChar))
                                                 : standard ? "standard-lora" : "meta-lora");
            if (method.Length == 0 || method is "." or ".." || method.IndexOfAny([.. Path.GetInvalidFileNameChars(), '/', '\\']) >= 0)
                throw new InputException("--label", $"'{method}' cannot name a folder (no path separators, not . or ..)");
            string? word = r.GetValue(trigger) is { Length: > 0 } t ? t : null;
            string trainCaption = PaperPrompts.FillTrigger(r.GetValue(caption)!, word, "--caption");
            var defaultClass = PersonFolders.ParseClass(r.GetValue(subject)!, "--class");
            string outDir = r.GetValue(s.Out)!, methodDir = Path.Combine(outDir, method);
            var y = r.GetValue(plot) == "facesim" ? PlotMetric.FaceSim : PlotMetric.RFaceSim;

            // everything that can be wrong with the input fails here, before any model is loaded
            var people = PersonFolders.Read(r.GetValue(s.Data)!, defaultClass, w => Console.Error.WriteLine($"warning: {w}")).Select(ScoredPerson.From).ToList();
            var promptsFor = people.Select(p => p.Class).Distinct().ToDictionary(c => c, c => PaperPrompts.Resolve(r.GetValue(prompts)!, c, word));
            bool clip = !r.GetValue(noClip);
            List<string> components = [ModelsFolder.T5, ModelsFolder.ClipL, ModelsFolder.VaeDecoder, ModelsFolder.FaceDetector, ModelsFolder.FaceEmbedder];
            if (lorasDir is null) components.Add(ModelsFolder.VaeEncoder);
            if (clip) components.AddRange([ModelsFolder.ClipB32Image, ModelsFolder.ClipB32Text]);

            // one run per method folder at a time: a second evaluate into it stops here, naming the first
            using var runLock = RunLock.Acquire(methodDir, [], Common.Log);
            using var loaded = f.Load(r, downPath, components);
            var set = loaded.Models;
            var scorer = new ScoreRunner(set.OpenFaceDetector(), set.OpenFaceEmbedder(), clip ? set.OpenClipScorer() : null, Common.Log);
            var sampler = new Sampler(loaded.Weights, set.OpenTextEncoder(), set.OpenVae(encoder: false, decoder: true),
                                      r.GetValue(size), r.GetValue(steps), r.GetValue(generateGuidance));
            int seedCount = r.GetValue(seeds);

            var failed = new List<FailedIdentity>();
            int done = 0, skipped = 0;
            var clock = Stopwatch.StartNew();
            for (int i = 0; i < people.Count; i++)
            {
                var person = people[i];
                string idDir = Path.Combine(methodDir, person.Name), resultPath = Path.Combine(idDir, EvaluationResult.FileName);
                string at = $"[{i + 1}/{people.Count}] {method}/{person.Name}";
                if (File.Exists(resultPath))
                {
                    EvaluationResult.Read(resultPath);   // a damaged result is an error naming it, not a silent skip
                    skipped++;
                    Console.WriteLine($"{at}: skipped, results exist ({resultPath})");
                    continue;
                }
                var start = clock.Elapsed;
                try
                {
                    var promptList = promptsFor[person.Class];
                    var result = EvaluateIdentity(person, method, idDir, promptList, seedCount, scorer, sampler, () =>
                    {
                        if (lorasDir is not null)
                        {
                            string path = Path.Combine(lorasDir, person.Name + ".safetensors");
                            if (!File.Exists(path)) throw new InputException("--loras", $"{path}: no LoRA for identity '{person.Name}'");
                            var adapter = LoraFiles.Load(path, loaded.Weights.Config, loaded.Backend, Common.Log);
                            try { LoraCommand.RequireIdentity(adapter, path); }
                            catch { adapter.Dispose(); throw; }
                            return adapter;
                        }
                        var personalize = f.Job(r, loaded, person.Reference, trainCaption, Path.Combine(idDir, "lora.safetensors"),
                                                Path.Combine(idDir, "lora.state.safetensors"), iterations, person.Name);
                        return PersonalizeCommand.Personalize(loaded, personalize,
                            (p, save) => s.Monitor.Create(r, personalize.OutPath, loaded.Weights.Config, p.Examples, save), phase => { });
                    });
                    result = result with { Seconds = (clock.Elapsed - start).TotalSeconds };
                    result.Write(resultPath);
                    done++;
                    Console.WriteLine($"{at}: CLIP-T {Pct(result.ClipT)}  FaceSim {Pct(result.FaceSim)}  R-FaceSim {Pct(result.RFaceSim)} " +
                                      $"({result.Images} images, {result.Seconds:0.0} s){Eta(clock.Elapsed, done + failed.Count, people.Count - i - 1)}");
                }
                catch (Exception e) when (e is not OutOfMemoryException)
                {
                    var (code, subjectOf) = Errors.Classify(e);
                    string message = e.Message.ReplaceLineEndings(" ").Trim();
                    if (subjectOf is not null && !message.StartsWith(subjectOf, StringComparison.Ordinal)) message = $"{subjectOf}: {message}";
                    if (code == Errors.Internal) message = $"{e.GetType().Name}: {message}";
                    failed.Add(new FailedIdentity(method, person.Name, message));
                    Console.Error.WriteLine($"{at}: failed: {message}; skipped{Eta(clock.Elapsed, done + failed.Count, people.Count - i - 1)}");
                }
            }

            var table = EvaluationTable.From(EvaluationTable.ReadAll(outDir), failed);
            table.Write(outDir, y);
            Console.WriteLine($"{method}: {done} evaluated, {skipped} skipped (results existed), {failed.Count} failed" +
                              (failed.Count > 0 ? $" ({string.Join(", ", failed.Select(x => x.Identity))})" : "") +
                              $" -> {Path.Combine(outDir, "results.md")}, results.csv, scatter.png");
            foreach (var row in table.Methods)
                Console.WriteLine($"  {row.Method}: {row.Identities} identities, CLIP-T {Pct(row.ClipT.Mean)}  FaceSim {Pct(row.FaceSim.Mean)}  R-FaceSim {Pct(row.RFaceSim.Mean)}");
            return failed.Count > 0 ? Errors.Failure : 0;
        });
        return cmd;
    }

    /// <summary>
    /// One identity: its photos are checked to load, <paramref name="lora"/> gives its LoRA (trained or read), every
    /// prompt × seed is generated into idDir/generated (an image already there from an interrupted run is kept),
    /// then scored. The result's Seconds are filled in by the caller.
    /// </summary>
    static EvaluationResult EvaluateIdentity(ScoredPerson person, string method, string idDir, IReadOnlyList<string> prompts, int seeds,
        ScoreRunner scorer, Sampler sampler, Func<LoraAdapter> lora)
    {
        foreach (var photo in person.Others.Prepend(person.Reference))
            using (ImageIO.LoadRgb(photo)) { }
        Directory.CreateDirectory(idDir);
        string generatedDir = Path.Combine(idDir, "generated");
        Directory.CreateDirectory(generatedDir);
        using (var adapter = lora())
        {
            var binding = new LoraBinding(adapter, [0], trainDown: false, trainIdentity: false);
            var images = new List<Image<Rgb24>>();
            var labels = new List<string>();
            try
            {
                for (int p = 0; p < prompts.Count; p++)
                    for (int seed = 0; seed < seeds; seed++)
                    {
                        string path = Path.Combine(generatedDir, $"{p + 1:00}_seed{seed}.png");
                        images.Add(File.Exists(path) ? ImageIO.LoadRgb(path) : sampler.Generate(prompts[p], (ulong)seed, binding, path));
                        labels.Add($"p{p + 1:00} seed {seed}");
                    }
                using var sheet = ContactSheet.Build(images, labels, columns: Math.Max(seeds, 5));
                TrainingOutputs.SavePng(sheet, Path.Combine(idDir, "generated_sheet.png"));
            }
            finally
            {
                images.ForEach(i => i.Dispose());
            }
        }
        var warnings = new List<string>();
        var score = scorer.ScoreIdentity(person, prompts, generatedDir, warnings);
        return new EvaluationResult(method, person.Name, score.Class, prompts.Count, seeds, score.Images.Count,
            score.ClipT, score.FaceSim, score.RFaceSim, 0, warnings);
    }

    /// <summary>FLUX's sampler as `generate` runs it, with each prompt encoded once and the LoRA bound instead of baked.</summary>
    sealed class Sampler(FluxWeights weights, FluxTextEncoder text, Onnx.Vae.FluxVae vae, int size, int steps, float guidance)
    {
        readonly FluxModel model = new(weights);
        readonly Dictionary<string, (PromptEmbedding Embedding, int T5Length)> encoded = [];

        public Image<Rgb24> Generate(string prompt, ulong seed, LoraBinding lora, string path)
        {
            if (!encoded.TryGetValue(prompt, out var e))
            {
                var embedding = text.Encode(prompt);
                encoded[prompt] = e = (embedding, TrainingOutputs.T5Length(embedding, weights.Config));
            }
            var image = SnapshotSelection.Render(model, lora, e.Embedding, e.T5Length, size, steps, guidance, seed, vae);
            TrainingOutputs.SavePng(image, path);
            return image;
        }
    }

    static string Pct(double? v) => v is { } x ? (100 * x).ToString("0.00", CultureInfo.InvariantCulture) : "n/a";

    /// <summary>"; ETA 01:02:03 for 4 more" from the mean time of the identities processed so far; empty when none remain.</summary>
    static string Eta(TimeSpan elapsed, int processed, int remaining)
    {
        if (remaining == 0 || processed == 0) return "";
        var t = TimeSpan.FromSeconds(elapsed.TotalSeconds / processed * remaining);
        return $"; ETA {(int)t.TotalHours:00}:{t.Minutes:00}:{t.Seconds:00} for {remaining} more";
    }
}
