// `metalora score`: CLIP-T, FaceSim and R-FaceSim of generated images against folders of real photos.
//
// Real photos (--identities DIR): person folders as PersonFolders reads them (one sub-folder of photos per person,
// optional class.txt: man | woman for the prompt wording). The reference (the photo the model was personalised on) is
// the file whose name starts with "ref" (else the first file by name); every other photo is a test image for R-FaceSim.
// Generated layout (--generated DIR): DIR/<person>/<NN>[_anything].png|jpg is an image for prompt number NN (1-based)
// of the chosen prompt list; several files per prompt (seeds) are all scored, and averaged per (person, prompt).
using System.Text.Json;
using System.Text.Json.Serialization;
using MetaLoraNative.Onnx.Clip;
using MetaLoraNative.Onnx.Datasets;
using MetaLoraNative.Onnx.Faces;
using MetaLoraNative.Onnx.Imaging;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace MetaLoraNative.Onnx.Scoring;

/// <summary>A person being scored: their reference photo and their other real photos (the R-FaceSim test images).</summary>
public sealed record ScoredPerson(string Name, SubjectClass Class, string Reference, IReadOnlyList<string> Others)
{
    /// <summary>The reference is the photo whose name starts with "ref", else the first by name.</summary>
    public static ScoredPerson From(PersonFolder person)
    {
        string reference = person.Photos.FirstOrDefault(p => Path.GetFileName(p).StartsWith("ref", StringComparison.OrdinalIgnoreCase))
                           ?? person.Photos[0];
        return new ScoredPerson(person.Name, person.Class, reference, person.Photos.Where(p => p != reference).ToList());
    }
}

public sealed record ImageScore(string File, int PromptNumber, string Prompt, double? ClipT, double? FaceSim, double? RFaceSim, string? Note);

public sealed record IdentityScore(string Name, string Class, string Reference, IReadOnlyList<string> Others,
    double? ClipT, double? FaceSim, double? RFaceSim, IReadOnlyList<ImageScore> Images);

/// <summary>All similarities are cosines in [-1, 1]; tables and the plot show them x100.</summary>
public sealed record ScoreReport(string Label, string Prompts, double? ClipT, double? FaceSim, double? RFaceSim,
    int Images, IReadOnlyList<IdentityScore> Identities, IReadOnlyList<string> Warnings)
{
    public string ToJson() => JsonSerializer.Serialize(this, ScoreJson.Default.ScoreReport);

    static string Pct(double? v) => v is { } x && !double.IsNaN(x) ? (100 * x).ToString("0.00") : "n/a";

    public string ToMarkdown()
    {
        var sb = new System.Text.StringBuilder();
        sb.AppendLine($"# Scores: {Label}");
        sb.AppendLine();
        sb.AppendLine($"Prompts: {Prompts}; {Images} generated images. Cosine similarities x100.");
        sb.AppendLine();
        sb.AppendLine("| identity | class | images | CLIP-T | FaceSim | R-FaceSim |");
        sb.AppendLine("|---|---|---:|---:|---:|---:|");
        foreach (var i in Identities)
            sb.AppendLine($"| {i.Name} | {i.Class} | {i.Images.Count} | {Pct(i.ClipT)} | {Pct(i.FaceSim)} | {Pct(i.RFaceSim)} |");
        sb.AppendLine($"| **mean** | | {Images} | **{Pct(ClipT)}** | **{Pct(FaceSim)}** | **{Pct(RFaceSim)}** |");
        sb.AppendLine();
        sb.AppendLine("Paper, Table 5 (CLIP-T / R-FaceSim): Meta-LoRA 31.66 / 77.16; rank-1 LoRA + aug 31.47 / 76.15; PuLID-FLUX 30.95 / 75.72;");
        sb.AppendLine("InstantID (SDXL-Lightning) 30.52 / 75.26; PhotoMaker (SDXL) 31.51 / 67.57.");
        if (Warnings.Count > 0)
        {
            sb.AppendLine();
            sb.AppendLine("Warnings:");
            foreach (var w in Warnings) sb.AppendLine($"- {w}");
        }
        return sb.ToString();
    }

    /// <summary>The paper's Table 5 points (CLIP-T, R-FaceSim), drawn as grey rings for comparison.</summary>
    public static readonly IReadOnlyList<(string Name, double ClipT, double RFaceSim)> PaperPoints =
    [
        ("Meta-LoRA", 31.66, 77.16), ("rank-1 LoRA + aug", 31.47, 76.15), ("PuLID-FLUX", 30.95, 75.72),
        ("InstantID", 30.52, 75.26), ("PhotoMaker", 31.51, 67.57),
    ];

    /// <summary>R-FaceSim against CLIP-T (<see cref="MethodPlot"/>): this method's identities and mean, the paper's Table 5 methods.</summary>
    public Image<Rgb24> Plot() =>
        MethodPlot.Draw([new MethodPoints(Label, Identities.Select(i => (i.ClipT, i.RFaceSim)).ToList(), (ClipT, RFaceSim))], PlotMetric.RFaceSim);

    /// <summary>Writes scores.json, scores.md and scatter.png into <paramref name="dir"/>.</summary>
    public void Write(string dir)
    {
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "scores.json"), ToJson());
        File.WriteAllText(Path.Combine(dir, "scores.md"), ToMarkdown());
        using var plot = Plot();
        plot.SaveAsPng(Path.Combine(dir, "scatter.png"));
    }
}

public sealed record ScoreOptions
{
    public required string IdentitiesDir { get; init; }
    public required string GeneratedDir { get; init; }
    /// <summary>Built-in set (facesim, recontext, stylistic, clip-t) or a file of prompts.</summary>
    public string Prompts { get; init; } = "facesim";
    public SubjectClass DefaultClass { get; init; } = SubjectClass.Woman;
    public string Label { get; init; } = "generated";
    /// <summary>Fills the prompts' {trigger} placeholder (<see cref="PaperPrompts.FillTrigger"/>); null drops it.</summary>
    public string? Trigger { get; init; }
}

public sealed class ScoreRunner
{
    readonly IFaceDetector _detector;
    readonly IFaceEmbedder _embedder;
    readonly ClipScoreModel? _clip;
    readonly Action<string> _log;

    /// <param name="clip">null skips CLIP-T.</param>
    public ScoreRunner(IFaceDetector detector, IFaceEmbedder embedder, ClipScoreModel? clip, Action<string>? log = null)
    {
        _detector = detector;
        _embedder = embedder;
        _clip = clip;
        _log = log ?? (_ => { });
    }

    /// <summary>Embedding of the largest face, or null (with a warning) when the image has none.</summary>
    float[]? FaceEmbedding(Image<Rgb24> image, string label, List<string> warnings)
    {
        var faces = _detector.Detect(image);
        if (faces.Count == 0)
        {
            warnings.Add($"no face found in {label}; left out of face metrics");
            return null;
        }
        return _embedder.Embed(image, faces.MaxBy(f => f.Area)!);
    }

    public ScoreReport Run(ScoreOptions options)
    {
        var warnings = new List<string>();
        var identities = PersonFolders.Read(options.IdentitiesDir, options.DefaultClass, warnings.Add).Select(ScoredPerson.From).ToList();
        var identityScores = new List<IdentityScore>();
        var pairs = new List<double>();          // S(i, p) of every (identity, prompt) pair: R-FaceSim is their mean
        foreach (var id in identities)
        {
            var prompts = PaperPrompts.Resolve(options.Prompts, id.Class, options.Trigger);
            var (score, r) = Score(id, prompts, Path.Combine(options.GeneratedDir, id.Name), warnings);
            identityScores.Add(score);
            if (r is not null) pairs.AddRange(r.PerIdentityPrompt.Values);
        }
        var all = identityScores.SelectMany(s => s.Images).ToList();
        return new ScoreReport(options.Label, options.Prompts, Mean(all.Select(s => s.ClipT)), Mean(all.Select(s => s.FaceSim)),
            pairs.Count == 0 ? null : pairs.Average(), all.Count, identityScores, warnings);
    }

    /// <summary>
    /// One person's generated images in <paramref name="generatedDir"/> (NN[_suffix].png, NN the 1-based number of
    /// the prompt in <paramref name="prompts"/>) scored against their real photos: CLIP-T and FaceSim per image,
    /// R-FaceSim (Algorithm 3) over the person's (prompt) pairs. Problems that leave a metric out go to <paramref name="warnings"/>.
    /// </summary>
    public IdentityScore ScoreIdentity(ScoredPerson id, IReadOnlyList<string> prompts, string generatedDir, List<string> warnings) =>
        Score(id, prompts, generatedDir, warnings).Score;

    (IdentityScore Score, RFaceSimResult? RFaceSim) Score(ScoredPerson id, IReadOnlyList<string> prompts, string dir, List<string> warnings)
    {
        float[]? reference;
        using (var img = ImageIO.LoadRgb(id.Reference)) reference = FaceEmbedding(img, id.Reference, warnings);
        var others = new List<float[]>();
        foreach (var p in id.Others)
        {
            using var img = ImageIO.LoadRgb(p);
            if (FaceEmbedding(img, p, warnings) is { } e) others.Add(e);
        }
        if (others.Count == 0) warnings.Add($"{id.Name}: no real images besides the reference; R-FaceSim not computed for it");

        var files = PersonFolders.Images(dir);
        if (files.Count == 0) warnings.Add($"{id.Name}: no generated images in {dir}");
        var scores = new List<ImageScore>();
        var generated = new List<GeneratedEmbedding>();
        foreach (var file in files)
        {
            string name = Path.GetFileName(file);
            int digits = name.TakeWhile(char.IsAsciiDigit).Count();
            if (digits == 0 || !int.TryParse(name[..digits], out int n) || n < 1 || n > prompts.Count)
            {
                warnings.Add($"{file}: name does not start with a prompt number 1..{prompts.Count}; skipped");
                continue;
            }
            string prompt = prompts[n - 1];
            using var img = ImageIO.LoadRgb(file);
            double? clipT = _clip?.ClipT(img, prompt);
            double? faceSim = null, rSim = null;
            string? note = null;
            if (FaceEmbedding(img, file, warnings) is { } e)
            {
                if (reference is not null) faceSim = FaceMetrics.FaceSim(e, reference);
                if (others.Count > 0)
                {
                    generated.Add(new GeneratedEmbedding(id.Name, prompt, e));
                    rSim = others.Average(t => (double)FaceMath.Cosine(e, t));
                }
            }
            else note = "no face";
            scores.Add(new ImageScore(name, n, prompt, clipT, faceSim, rSim, note));
            _log($"{id.Name}/{name}: CLIP-T {Fmt(clipT)} FaceSim {Fmt(faceSim)} R-FaceSim {Fmt(rSim)}");
        }
        var r = generated.Count == 0 ? null : FaceMetrics.RFaceSim(generated, new Dictionary<string, IReadOnlyList<float[]>> { [id.Name] = others });
        return (new IdentityScore(id.Name, id.Class.ToString().ToLowerInvariant(), id.Reference, id.Others,
            Mean(scores.Select(s => s.ClipT)), Mean(scores.Select(s => s.FaceSim)), r is null ? null : NullIfNaN(r.Mean), scores), r);
    }

    static string Fmt(double? v) => v is { } x ? (100 * x).ToString("0.00") : "n/a";
    static double? NullIfNaN(double v) => double.IsNaN(v) ? null : v;

    static double? Mean(IEnumerable<double?> values)
    {
        var v = values.Where(x => x.HasValue).Select(x => x!.Value).ToList();
        return v.Count == 0 ? null : v.Average();
    }
}

/// <summary>Source-generated JSON for score reports (the CLI is published trimmed).</summary>
[JsonSourceGenerationOptions(WriteIndented = true, PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase,
    DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(ScoreReport))]
internal sealed partial class ScoreJson : JsonSerializerContext;
