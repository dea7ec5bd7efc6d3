// Checkpoint selection by identity score (`--select-by rfacesim` of train stage2|lora and personalize). At every
// snapshot the training monitor hands over the model with that snapshot's factors; the held-out prompts are sampled
// with fixed seeds (prompt K with seed K) through FluxSampler, the sampler `generate` runs, decoded by the VAE and
// scored as `score` scores (appendix F): the face embedder against the reference photo (FaceSim) and against the
// person's other photos (R-FaceSim, the identity metric whenever there are other photos), CLIP ViT-B/32 against the
// prompt (CLIP-T, reported beside it). The snapshot with the highest identity metric is copied to OUT.best.safetensors.
//
// The run's folder keeps everything (written atomically after every snapshot):
//   selection.csv                  one row per scored snapshot; also the store a resumed or repeated run reads back
//   selection.md, selection.png    the same rows as a table and as both metrics against the step
//   selection/stepNNNNNN_KK.png    the images that were scored
//   OUT.best.safetensors           the best snapshot (and OUT.best.kohya.safetensors beside a kohya snapshot)
// A row is reused instead of recomputed when its step, its snapshot's tensors (a hash of the factors, not of the file,
// whose metadata carries the write time) and the selection settings (prompts, photos, sampler) are the same.
using System.Globalization;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Sampling;
using MetaLoraNative.Onnx.Clip;
using MetaLoraNative.Onnx.Datasets;
using MetaLoraNative.Onnx.Faces;
using MetaLoraNative.Onnx.Imaging;
using MetaLoraNative.Onnx.Models;
using MetaLoraNative.Onnx.Text;
using MetaLoraNative.Onnx.Vae;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace MetaLoraNative.Onnx.Scoring;

/// <summary>What one selection run samples and scores against; every path already checked (<see cref="SnapshotSelection.Plan"/>).</summary>
/// <param name="Reference">the photo the LoRA was trained on (FaceSim's reference; never one of <paramref name="Others"/>)</param>
/// <param name="Others">the person's other photos (R-FaceSim's test images); none: FaceSim selects</param>
/// <param name="Prompts">held-out prompts, class words filled in; prompt K is sampled with seed K</param>
/// <param name="Size">sample width and height in pixels (a multiple of 16)</param>
public sealed record SelectionPlan(string Reference, IReadOnlyList<string> Others, IReadOnlyList<string> Prompts, int Size, int Steps,
                                   float Guidance = 3.5f);

/// <summary>One scored snapshot: the means over its images (cosines in [-1, 1]; null where no image had a face).</summary>
public sealed record SelectionRow(long Step, double? FaceSim, double? RFaceSim, double? ClipT, int Images, int Faces,
                                  string Snapshot, string SnapshotHash, string SettingsHash);

public sealed class SnapshotSelection
{
    /// <summary>The metric names of --select-by.</summary>
    public const string RFaceSimName = "rfacesim";

    const string Header = "step,metric,facesim,rfacesim,clip_t,images,faces,snapshot_sha256,settings_sha256,snapshot";

    readonly SelectionPlan plan;
    readonly string folder, csvPath, bestPath;
    readonly Action<string> log;
    readonly IFaceDetector detector;
    readonly IFaceEmbedder embedder;
    readonly ClipScoreModel clip;
    readonly FluxVae vae;
    readonly IReadOnlyList<PromptEmbedding> embeddings;
    readonly IReadOnlyList<int> t5Lengths;
    readonly float[] reference;
    readonly IReadOnlyList<float[]> others;
    readonly string settingsHash;
    readonly List<SelectionRow> rows = [];

    /// <summary>R-FaceSim selects when at least one other photo has a face, else FaceSim.</summary>
    public bool UsesRFaceSim => others.Count > 0;
    public string MetricName => UsesRFaceSim ? "R-FaceSim" : "FaceSim";
    public IReadOnlyList<SelectionRow> Rows => rows;
    public string CsvPath => csvPath;
    public string BestPath => bestPath;

    /// <summary>The identity metric of a row: R-FaceSim or FaceSim.</summary>
    public double? Metric(SelectionRow r) => UsesRFaceSim ? r.RFaceSim : r.FaceSim;

    /// <summary>The row with the highest identity metric (the earliest on a tie); null before any has one.</summary>
    public SelectionRow? Best => rows.Where(r => Metric(r) is double m && double.IsFinite(m)).OrderByDescending(r => Metric(r)!.Value).ThenBy(r => r.Step).FirstOrDefault();

    /// <summary>
    /// Opens the models (text encoders, VAE decoder, face detector and embedder, CLIP ViT-B/32 from <paramref name="models"/>,
    /// which the caller owns), encodes the prompts, embeds the photos (the reference must show a face) and reads the rows
    /// already in <paramref name="folder"/>/selection.csv. <paramref name="t5Length"/> checks an embedding against the model.
    /// </summary>
    public SnapshotSelection(SelectionPlan plan, ModelSet models, Func<PromptEmbedding, int> t5Length, string folder, string bestPath, Action<string> log)
    {
        this.plan = plan;
        this.folder = folder;
        this.bestPath = bestPath;
        this.log = log;
        csvPath = Path.Combine(folder, "selection.csv");
        var text = models.OpenTextEncoder();
        embeddings = plan.Prompts.Select(p => text.Encode(p)).ToList();
        t5Lengths = embeddings.Select(t5Length).ToList();
        vae = models.OpenVae(encoder: false, decoder: true);
        detector = models.OpenFaceDetector();
        embedder = models.OpenFaceEmbedder();
        clip = models.OpenClipScorer();
        using (var photo = ImageIO.LoadRgb(plan.Reference))
            reference = FaceOf(photo) ?? throw new InputFileException(plan.Reference, "no face found: the reference photo of --select-by needs one");
        var found = new List<float[]>();
        foreach (var p in plan.Others)
        {
            using var photo = ImageIO.LoadRgb(p);
            if (FaceOf(photo) is { } e) found.Add(e);
            else log($"warning: no face found in {p}; left out of R-FaceSim");
        }
        others = found;
        if (plan.Others.Count > 0 && found.Count == 0) log("warning: no other photo shows a face; FaceSim (against the reference) selects instead of R-FaceSim");
        settingsHash = SettingsHash(plan);
        Read();
        log($"selection by {MetricName}: {plan.Prompts.Count} held-out prompt(s), reference {plan.Reference}" +
            (UsesRFaceSim ? $", {others.Count} other photo(s)" : "") + (rows.Count > 0 ? $"; {rows.Count} snapshot(s) already scored in {csvPath}" : ""));
    }

    /// <summary>
    /// The checks of --select-by before anything is loaded, each an <see cref="InputException"/> naming the flag or
    /// file: a snapshot to choose from, the models folder's components, the photos, the prompts. The reference is
    /// <paramref name="referencePhoto"/> (personalize's photo) or, without it, the photo of --select-photos whose name
    /// starts with "ref" (else the first by name), as `score` picks it. Prompts: --select-prompts (a file, or one of
    /// `score`'s built-in sets), else <see cref="DefaultPrompts"/>; class words from --select-photos' class.txt
    /// (default woman); none may be the training caption.
    /// </summary>
    public static SelectionPlan Plan(string? modelsDir, string? photosDir, string? referencePhoto, string? promptsArg, string? trainingCaption,
                                     bool hasSnapshots, string snapshotFlags, int size, int steps)
    {
        if (!hasSnapshots)
            throw new InputException("--select-by", $"needs snapshots to choose from: pass {snapshotFlags}");
        string[] needed = [ModelsFolder.T5, ModelsFolder.ClipL, ModelsFolder.VaeDecoder, ModelsFolder.FaceDetector, ModelsFolder.FaceEmbedder,
                           ModelsFolder.ClipB32Image, ModelsFolder.ClipB32Text];
        if (modelsDir is null)
            throw new InputException("--models", "--select-by needs a models folder (--models DIR or METALORA_MODELS) with " + string.Join(", ", needed));
        var problems = ModelsFolder.Check(modelsDir, needed);
        if (problems.Count > 0) throw new InputException("--models", $"--select-by needs these models in {modelsDir}: " + string.Join("; ", problems));
        const int side = FluxConfig.PixelsPerToken;
        if (size <= 0 || size % side != 0) throw new InputException("--sample-size", $"{size} must be a positive multiple of {side}");
        if (steps < 1) throw new InputException("--sample-steps", $"{steps} must be at least 1");

        var subject = SubjectClass.Woman;
        var photos = new List<string>();
        if (photosDir != null)
        {
            if (!Directory.Exists(photosDir)) throw new InputException("--select-photos", $"{photosDir}: no such folder (the person's photos)");
            photos = PersonFolders.Images(photosDir);
            string classFile = Path.Combine(photosDir, "class.txt");
            if (File.Exists(classFile)) subject = PersonFolders.ParseClass(File.ReadAllText(classFile), classFile);
        }
        string reference;
        if (referencePhoto != null)
        {
            if (!File.Exists(referencePhoto)) throw new InputException(referencePhoto, "no such photo");
            reference = referencePhoto;
        }
        else
        {
            if (photosDir is null)
                throw new InputException("--select-photos", "--select-by needs the person's photos: a folder with the training photo (named ref*, else the first by name) and any others");
            if (photos.Count == 0)
                throw new InputException("--select-photos", $"{photosDir} holds no photos ({string.Join(", ", PersonFolders.ImageExtensions)})");
            reference = ScoredPerson.From(new PersonFolder(Path.GetFileName(photosDir), photosDir, subject, photos)).Reference;
        }
        var others = photos.Where(p => !SameFile(p, reference)).ToList();

        if (promptsArg != null && !PaperPrompts.SetNames.Contains(promptsArg) && !File.Exists(promptsArg))
            throw new InputException("--select-prompts", $"{promptsArg}: neither a prompts file nor a built-in set ({string.Join(", ", PaperPrompts.SetNames)})");
        var prompts = promptsArg is null ? DefaultPrompts(subject) : PaperPrompts.Resolve(promptsArg, subject);
        if (prompts.Count == 0) throw new InputException("--select-prompts", $"{promptsArg}: holds no prompt");
        if (trainingCaption != null && prompts.FirstOrDefault(p => string.Equals(p.Trim(), trainingCaption.Trim(), StringComparison.OrdinalIgnoreCase)) is { } seen)
            throw new InputException("--select-prompts", $"'{seen}' is the training caption; selection needs held-out prompts");
        return new SelectionPlan(reference, others, prompts, size, steps);
    }

    /// <summary>
    /// Four held-out prompts from the paper's evaluation tables (appendix E), none of them a training caption: two of
    /// Table 3 (frontal, unoccluded faces, R-FaceSim's), Table 1's desert recontextualisation and Table 2's cyberpunk style.
    /// </summary>
    public static IReadOnlyList<string> DefaultPrompts(SubjectClass subject)
    {
        bool man = subject == SubjectClass.Man;
        return [PaperPrompts.Substitute(PaperPrompts.Table3Template[0], subject), PaperPrompts.Substitute(PaperPrompts.Table3Template[3], subject),
                man ? PaperPrompts.Table1Man[9] : PaperPrompts.Table1Woman[6], man ? PaperPrompts.Table2Man[0] : PaperPrompts.Table2Woman[0]];
    }

    /// <summary>
    /// Scores the snapshot <paramref name="snapshot"/> of <paramref name="step"/> (the model with <paramref name="binding"/>
    /// is that snapshot), unless selection.csv already holds it; then rewrites the outputs and the best copy.
    /// </summary>
    public void Score(FluxModel model, LoraBinding binding, long step, string snapshot)
    {
        string hash = TensorHash(snapshot);
        if (rows.FirstOrDefault(r => r.Step == step) is { } kept && kept.SnapshotHash == hash && kept.SettingsHash == settingsHash)
        {
            log($"selection: step {step} already scored in {csvPath}; kept ({MetricName} {Pct(Metric(kept))})");
            Publish(kept, snapshot);
            return;
        }
        rows.RemoveAll(r => r.Step == step);
        string images = Path.Combine(folder, "selection");
        Directory.CreateDirectory(images);
        var clipT = new List<double>();
        var faceSim = new List<double>();
        var generated = new List<GeneratedEmbedding>();
        for (int k = 0; k < plan.Prompts.Count; k++)
        {
            using var image = Render(model, binding, embeddings[k], t5Lengths[k], plan.Size, plan.Steps, plan.Guidance, (ulong)k, vae);
            AtomicFile.Write(Path.Combine(images, $"step{step:D6}_{k:D2}.png"), s => image.SaveAsPng(s));
            clipT.Add(clip.ClipT(image, plan.Prompts[k]));
            if (FaceOf(image) is not { } e) continue;
            faceSim.Add(FaceMetrics.FaceSim(e, reference));
            generated.Add(new GeneratedEmbedding("person", plan.Prompts[k], e));
        }
        double? rFaceSim = UsesRFaceSim && generated.Count > 0 ? FaceMetrics.RFaceSim(generated, new Dictionary<string, IReadOnlyList<float[]>> { ["person"] = others }).Mean : null;
        var row = new SelectionRow(step, faceSim.Count > 0 ? faceSim.Average() : null, rFaceSim, clipT.Average(), plan.Prompts.Count, faceSim.Count,
                                   Path.GetFileName(snapshot), hash, settingsHash);
        rows.Add(row);
        rows.Sort((a, b) => a.Step.CompareTo(b.Step));
        log($"selection: step {step}: {MetricName} {Pct(Metric(row))}, CLIP-T {Pct(row.ClipT)} ({row.Faces}/{row.Images} images with a face)");
        Publish(row, snapshot);
    }

    /// <summary>One line for the end of the run: the best step and where its copy is.</summary>
    public string Summary() => Best is { } b
        ? $"best snapshot by {MetricName}: step {b.Step} ({MetricName} {Pct(Metric(b))}, CLIP-T {Pct(b.ClipT)}) copied to {bestPath}; all scores in {csvPath}"
        : $"no snapshot has a {MetricName} yet (no face in any scored image); scores in {csvPath}";

    /// <summary>
    /// The prompt's image: FLUX's shifted Euler sampler with the binding's LoRA (what `generate` runs after baking it),
    /// the fixed seed, the VAE decoder. Shared with the monitor's samples.
    /// </summary>
    public static Image<Rgb24> Render(FluxModel model, LoraBinding binding, PromptEmbedding prompt, int t5Length, int size, int steps, float guidance,
                                      ulong seed, FluxVae vae)
    {
        const int side = FluxConfig.PixelsPerToken;
        var packed = FluxSampler.Sample(model, prompt.T5, t5Length, prompt.Pooled, size / side, size / side, steps, guidance, seed, lora: binding);
        return vae.DecodePacked(packed, size, size);
    }

    /// <summary>Writes selection.csv, .md and .png, and copies the best snapshot when <paramref name="row"/> is it.</summary>
    void Publish(SelectionRow row, string snapshot)
    {
        if (Best == row)
        {
            CopyAtomically(snapshot, bestPath);
            string kohya = Path.ChangeExtension(snapshot, ".kohya.safetensors");
            if (File.Exists(kohya)) CopyAtomically(kohya, Path.ChangeExtension(bestPath, ".kohya.safetensors"));
        }
        AtomicFile.WriteAllText(csvPath, ToCsv());
        AtomicFile.WriteAllText(Path.Combine(folder, "selection.md"), ToMarkdown());
        string png = Path.Combine(folder, "selection.png");
        var metric = rows.Where(r => Metric(r) is double m && double.IsFinite(m)).Select(r => ((double)r.Step, 100 * Metric(r)!.Value)).ToList();
        var clipT = rows.Where(r => r.ClipT is double c && double.IsFinite(c)).Select(r => ((double)r.Step, 100 * r.ClipT!.Value)).ToList();
        if (metric.Count + clipT.Count == 0) return;
        var series = new List<LineSeries> { new(MetricName, metric, new Rgb24(20, 70, 170)), new("CLIP-T", clipT, new Rgb24(30, 150, 60)) };
        if (Best is { } best) series.Add(new("best", [((double)best.Step, 100 * Metric(best)!.Value)], new Rgb24(210, 60, 30), Dots: true));
        using var image = LinePlot.Draw(series, "step", "cosine x100");
        AtomicFile.Write(png, s => image.SaveAsPng(s));
    }

    static void CopyAtomically(string from, string to) => AtomicFile.Write(to, s =>
    {
        using var source = File.OpenRead(from);
        source.CopyTo(s);
    });

    string ToCsv()
    {
        var sb = new StringBuilder(Header).Append('\n');
        foreach (var r in rows)
            sb.Append(CultureInfo.InvariantCulture, $"{r.Step},{(UsesRFaceSim ? RFaceSimName : "facesim")},{Num(r.FaceSim)},{Num(r.RFaceSim)},{Num(r.ClipT)},")
              .Append(CultureInfo.InvariantCulture, $"{r.Images},{r.Faces},{r.SnapshotHash},{r.SettingsHash},{r.Snapshot}\n");
        return sb.ToString();
    }

    string ToMarkdown()
    {
        var best = Best;
        var sb = new StringBuilder();
        sb.AppendLine("# Snapshot selection");
        sb.AppendLine();
        sb.AppendLine($"Selected by {MetricName} (cosine similarities x100); reference photo {plan.Reference}" +
                      (UsesRFaceSim ? $", R-FaceSim against {others.Count} other photo(s)" : "") + ".");
        sb.AppendLine($"{plan.Prompts.Count} held-out prompt(s), prompt K with seed K, {plan.Size}x{plan.Size}, {plan.Steps} Euler steps, guidance {plan.Guidance.ToString(CultureInfo.InvariantCulture)}.");
        sb.AppendLine(best is null ? "No best snapshot yet." : $"Best: step {best.Step} ({best.Snapshot}), copied to {Path.GetFileName(bestPath)}.");
        sb.AppendLine();
        sb.AppendLine($"| step | {MetricName} | CLIP-T | images with a face | snapshot |");
        sb.AppendLine("|---:|---:|---:|---:|---|");
        foreach (var r in rows)
        {
            string mark = r == best ? "**" : "";
            sb.AppendLine($"| {mark}{r.Step}{mark} | {mark}{Pct(Metric(r))}{mark} | {Pct(r.ClipT)} | {r.Faces}/{r.Images} | {r.Snapshot} |");
        }
        sb.AppendLine();
        sb.AppendLine("Prompts:");
        for (int k = 0; k < plan.Prompts.Count; k++) sb.AppendLine($"{k}. {plan.Prompts[k]}");
        return sb.ToString();
    }

    /// <summary>Reads selection.csv back (a resumed or repeated run); every fault names the file and the line.</summary>
    void Read()
    {
        if (!File.Exists(csvPath)) return;
        var lines = File.ReadAllLines(csvPath);
        if (lines.Length == 0) return;
        if (lines[0] != Header) throw new InputFileException(csvPath, $"line 1 is not the header '{Header}' (delete the file to score every snapshot again)");
        for (int i = 1; i < lines.Length; i++)
        {
            if (lines[i].Length == 0) continue;
            var f = lines[i].Split(',', 10);
            if (f.Length != 10 || !long.TryParse(f[0], NumberStyles.None, CultureInfo.InvariantCulture, out long step)
                || !TryNum(f[2], out var face) || !TryNum(f[3], out var rFace) || !TryNum(f[4], out var clipT)
                || !int.TryParse(f[5], NumberStyles.None, CultureInfo.InvariantCulture, out int images)
                || !int.TryParse(f[6], NumberStyles.None, CultureInfo.InvariantCulture, out int faces))
                throw new InputFileException(csvPath, $"line {i + 1} is not a selection row: {lines[i]} (delete the file to score every snapshot again)");
            rows.Add(new SelectionRow(step, face, rFace, clipT, images, faces, f[9], f[7], f[8]));
        }
        rows.RemoveAll(r => r.SettingsHash != settingsHash);
        if (rows.Count < lines.Skip(1).Count(l => l.Length > 0))
            log($"selection: {csvPath} holds scores made with other prompts, photos or sampler settings; those snapshots are scored again");
        rows.Sort((a, b) => a.Step.CompareTo(b.Step));
    }

    /// <summary>Embedding of the largest face, or null when there is none.</summary>
    float[]? FaceOf(Image<Rgb24> image)
    {
        var faces = detector.Detect(image);
        return faces.Count == 0 ? null : embedder.Embed(image, faces.MaxBy(f => f.Area)!);
    }

    /// <summary>SHA-256 (first 16 hex digits) over the snapshot's tensor names and values, not its metadata (which holds the write time).</summary>
    static string TensorHash(string path)
    {
        using var file = SafetensorsFile.Open(path);
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var name in file.Entries.Keys.Order(StringComparer.Ordinal))
        {
            sha.AppendData(Encoding.UTF8.GetBytes(name + "\n"));
            sha.AppendData(MemoryMarshal.AsBytes(file.ReadFloats(name).AsSpan()));
        }
        return Convert.ToHexStringLower(sha.GetHashAndReset())[..16];
    }

    /// <summary>What the scores depend on besides the snapshot: prompts, the photos' bytes, the sampler settings.</summary>
    static string SettingsHash(SelectionPlan plan)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        sha.AppendData(Encoding.UTF8.GetBytes(string.Join("\n", plan.Prompts) + $"\n{plan.Size}\n{plan.Steps}\n{plan.Guidance.ToString(CultureInfo.InvariantCulture)}\n"));
        foreach (var photo in (IEnumerable<string>)[plan.Reference, .. plan.Others])
        {
            using var f = File.OpenRead(photo);
            sha.AppendData(SHA256.HashData(f));
        }
        return Convert.ToHexStringLower(sha.GetHashAndReset())[..16];
    }

    static bool SameFile(string a, string b)
    {
        if (Path.GetFullPath(a) == Path.GetFullPath(b)) return true;
        if (new FileInfo(a).Length != new FileInfo(b).Length) return false;
        using var fa = File.OpenRead(a);
        using var fb = File.OpenRead(b);
        return SHA256.HashData(fa).AsSpan().SequenceEqual(SHA256.HashData(fb));
    }

    static string Num(double? v) => v is double x ? x.ToString("R", CultureInfo.InvariantCulture) : "";

    static bool TryNum(string s, out double? v)
    {
        v = null;
        if (s.Length == 0) return true;
        if (!double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double x)) return false;
        v = x;
        return true;
    }

    static string Pct(double? v) => v is double x && double.IsFinite(x) ? (100 * x).ToString("0.00", CultureInfo.InvariantCulture) : "n/a";
}
