// `metalora evaluate`'s results: one record per (method, identity), their summary in the shape of the paper's Table 5
// (one row per method: CLIP-T, FaceSim and R-FaceSim as mean ± std over identities) with a per-identity table, and
// the scatter plot of the methods against the paper's.
//
// On disk, under the evaluation folder OUT:
//   OUT/<method>/<identity>/result.json   one EvaluationResult: written last, atomically, so its presence means done
//   OUT/results.md, results.csv           every method found under OUT (all cosines shown x100, as the paper's %)
//   OUT/scatter.png                       R-FaceSim (or FaceSim) against CLIP-T, a colour and marker per method
// Means and standard deviations are over identities (population std: a method evaluated on one identity has std 0);
// an identity's CLIP-T and FaceSim are means over its images, its R-FaceSim the mean over its prompts of S(i, p).
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using MetaLoraNative.Engine;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Onnx.Imaging;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace MetaLoraNative.Onnx.Scoring;

/// <summary>One identity evaluated by one method. Metrics are cosines in [-1, 1], null when not computed.</summary>
public sealed record EvaluationResult(string Method, string Identity, string Class, int Prompts, int Seeds, int Images,
    double? ClipT, double? FaceSim, double? RFaceSim, double Seconds, IReadOnlyList<string> Warnings)
{
    public const string FileName = "result.json";

    public string ToJson() => JsonSerializer.Serialize(this, EvaluationJson.Default.EvaluationResult);

    public void Write(string path) => AtomicFile.WriteAllText(path, ToJson());

    /// <summary>A result file, checked: named fields present, metrics in [-1, 1]; anything else is an error naming the file.</summary>
    public static EvaluationResult Read(string path)
    {
        EvaluationResult? r;
        try { r = JsonSerializer.Deserialize(File.ReadAllText(path), EvaluationJson.Default.EvaluationResult); }
        catch (JsonException e) { throw new InputException(path, $"not an evaluation result ({e.Message}); delete it to evaluate the identity again", e); }
        if (r is null || string.IsNullOrEmpty(r.Method) || string.IsNullOrEmpty(r.Identity) || r.Warnings is null)
            throw new InputException(path, "not an evaluation result (method, identity or warnings missing); delete it to evaluate the identity again");
        foreach (var (name, v) in new[] { ("clipT", r.ClipT), ("faceSim", r.FaceSim), ("rFaceSim", r.RFaceSim) })
            if (v is { } x && !(x >= -1 && x <= 1))
                throw new InputException(path, $"{name} {x} is not a cosine in [-1, 1]; delete the file to evaluate the identity again");
        return r;
    }
}

/// <summary>A metric over identities: mean and population standard deviation of the identities that have it.</summary>
public sealed record MetricSummary(double? Mean, double? Std, int Count)
{
    public static MetricSummary Of(IEnumerable<double?> values)
    {
        var v = values.Where(x => x.HasValue).Select(x => x!.Value).ToList();
        if (v.Count == 0) return new MetricSummary(null, null, 0);
        double mean = v.Average();
        return new MetricSummary(mean, Math.Sqrt(v.Average(x => (x - mean) * (x - mean))), v.Count);
    }
}

/// <summary>One row of the Table-5-shaped summary: a method over its identities.</summary>
public sealed record MethodRow(string Method, int Identities, int Images, MetricSummary ClipT, MetricSummary FaceSim, MetricSummary RFaceSim);

/// <summary>An identity that could not be evaluated, with the reason.</summary>
public sealed record FailedIdentity(string Method, string Identity, string Error);

/// <summary>The y axis of the scatter plot (x is always CLIP-T).</summary>
public enum PlotMetric { RFaceSim, FaceSim }

public sealed record EvaluationTable(IReadOnlyList<MethodRow> Methods, IReadOnlyList<EvaluationResult> Identities, IReadOnlyList<FailedIdentity> Failed)
{
    /// <summary>Methods in order of first appearance; identities grouped by method.</summary>
    public static EvaluationTable From(IReadOnlyList<EvaluationResult> results, IReadOnlyList<FailedIdentity> failed)
    {
        var byMethod = results.GroupBy(r => r.Method).ToList();
        var rows = byMethod.Select(g => new MethodRow(g.Key, g.Count(), g.Sum(r => r.Images), MetricSummary.Of(g.Select(r => r.ClipT)),
            MetricSummary.Of(g.Select(r => r.FaceSim)), MetricSummary.Of(g.Select(r => r.RFaceSim)))).ToList();
        return new EvaluationTable(rows, byMethod.SelectMany(g => g).ToList(), failed);
    }

    /// <summary>Every result.json under OUT/&lt;method&gt;/&lt;identity&gt;/ (methods and identities in name order).</summary>
    public static List<EvaluationResult> ReadAll(string outDir)
    {
        if (!Directory.Exists(outDir)) return [];
        return Directory.GetDirectories(outDir).Order(StringComparer.Ordinal)
            .SelectMany(m => Directory.GetDirectories(m).Order(StringComparer.Ordinal))
            .Select(d => Path.Combine(d, EvaluationResult.FileName)).Where(File.Exists).Select(EvaluationResult.Read).ToList();
    }

    static string Pct(double? v) => v is { } x ? (100 * x).ToString("0.00", CultureInfo.InvariantCulture) : "n/a";
    static string PctStd(MetricSummary m) => m.Mean is null ? "n/a" : $"{Pct(m.Mean)} ± {Pct(m.Std)}";

    public string ToMarkdown()
    {
        var sb = new StringBuilder();
        sb.AppendLine("# Evaluation");
        sb.AppendLine();
        sb.AppendLine("Cosine similarities x100 (the paper's %): mean ± std over identities. CLIP-T: generated image vs its prompt " +
                      "(CLIP ViT-B/32); FaceSim: generated face vs the reference photo; R-FaceSim: vs the identity's other photos.");
        sb.AppendLine();
        sb.AppendLine("| method | identities | images | CLIP-T (%) | FaceSim (%) | R-FaceSim (%) |");
        sb.AppendLine("|---|---:|---:|---:|---:|---:|");
        foreach (var m in Methods)
            sb.AppendLine($"| {m.Method} | {m.Identities} | {m.Images} | {PctStd(m.ClipT)} | {PctStd(m.FaceSim)} | {PctStd(m.RFaceSim)} |");
        foreach (var p in ScoreReport.PaperPoints)
            sb.AppendLine(CultureInfo.InvariantCulture, $"| {p.Name} (paper, Table 5) | | | {p.ClipT:0.00} | | {p.RFaceSim:0.00} |");
        sb.AppendLine();
        sb.AppendLine("## Per identity");
        sb.AppendLine();
        sb.AppendLine("| method | identity | class | prompts × seeds | images | CLIP-T (%) | FaceSim (%) | R-FaceSim (%) | time (s) |");
        sb.AppendLine("|---|---|---|---:|---:|---:|---:|---:|---:|");
        foreach (var r in Identities)
            sb.AppendLine(CultureInfo.InvariantCulture,
                $"| {r.Method} | {r.Identity} | {r.Class} | {r.Prompts} × {r.Seeds} | {r.Images} | {Pct(r.ClipT)} | {Pct(r.FaceSim)} | {Pct(r.RFaceSim)} | {r.Seconds:0.0} |");
        if (Failed.Count > 0)
        {
            sb.AppendLine();
            sb.AppendLine("## Failed (not in the table; a rerun tries them again)");
            sb.AppendLine();
            foreach (var f in Failed) sb.AppendLine($"- {f.Method}/{f.Identity}: {f.Error}");
        }
        var warnings = Identities.SelectMany(r => r.Warnings.Select(w => $"{r.Method}/{r.Identity}: {w}")).ToList();
        if (warnings.Count > 0)
        {
            sb.AppendLine();
            sb.AppendLine("## Warnings");
            sb.AppendLine();
            foreach (var w in warnings) sb.AppendLine($"- {w}");
        }
        return sb.ToString();
    }

    public const string CsvHeader = "scope,method,identity,class,identities,images,clip_t,clip_t_std,facesim,facesim_std,rfacesim,rfacesim_std";

    /// <summary>One "method" row per method (mean and std over identities), then one "identity" row per result; values in %.</summary>
    public string ToCsv()
    {
        static string V(double? v) => v is { } x ? (100 * x).ToString("0.####", CultureInfo.InvariantCulture) : "";
        static string Q(string s) => s.IndexOfAny([',', '"', '\n']) < 0 ? s : "\"" + s.Replace("\"", "\"\"") + "\"";
        var sb = new StringBuilder();
        sb.Append(CsvHeader).Append('\n');
        foreach (var m in Methods)
            sb.Append($"method,{Q(m.Method)},,,{m.Identities},{m.Images},{V(m.ClipT.Mean)},{V(m.ClipT.Std)},{V(m.FaceSim.Mean)},{V(m.FaceSim.Std)},{V(m.RFaceSim.Mean)},{V(m.RFaceSim.Std)}\n");
        foreach (var r in Identities)
            sb.Append($"identity,{Q(r.Method)},{Q(r.Identity)},{r.Class},1,{r.Images},{V(r.ClipT)},,{V(r.FaceSim)},,{V(r.RFaceSim)},\n");
        return sb.ToString();
    }

    /// <summary>The methods' identities (small markers) and means (large), each method its own colour and marker.</summary>
    public Image<Rgb24> Plot(PlotMetric y) =>
        MethodPlot.Draw(Methods.Select(m => new MethodPoints(m.Method,
            Identities.Where(r => r.Method == m.Method).Select(r => (r.ClipT, y == PlotMetric.RFaceSim ? r.RFaceSim : r.FaceSim)).ToList(),
            (m.ClipT.Mean, y == PlotMetric.RFaceSim ? m.RFaceSim.Mean : m.FaceSim.Mean))).ToList(), y);

    /// <summary>results.md, results.csv and scatter.png into <paramref name="dir"/>, each written atomically.</summary>
    public void Write(string dir, PlotMetric y)
    {
        Directory.CreateDirectory(dir);
        AtomicFile.WriteAllText(Path.Combine(dir, "results.md"), ToMarkdown());
        AtomicFile.WriteAllText(Path.Combine(dir, "results.csv"), ToCsv());
        using var plot = Plot(y);
        AtomicFile.Write(Path.Combine(dir, "scatter.png"), s => plot.SaveAsPng(s));
    }
}

/// <summary>A method's points in cosines: (CLIP-T, y) per identity and the mean; a missing coordinate leaves the point out.</summary>
public sealed record MethodPoints(string Name, IReadOnlyList<(double? ClipT, double? Y)> Identities, (double? ClipT, double? Y) Mean);

/// <summary>
/// The scatter plot of `score` and `evaluate`: y (R-FaceSim or FaceSim) against CLIP-T, both x100. Each method gets a
/// colour and a filled marker (small per identity, large for its mean); with R-FaceSim the paper's Table 5 methods are
/// grey rings (darker for the LoRA methods). A legend names each.
/// </summary>
public static class MethodPlot
{
    static readonly Rgb24[] Colors = [new(40, 90, 200), new(210, 40, 40), new(30, 150, 70), new(200, 120, 20), new(140, 60, 170), new(20, 150, 160)];
    static readonly Marker[] Markers = [Marker.Disc, Marker.Square, Marker.Diamond, Marker.Triangle, Marker.Cross];
    static readonly Rgb24[] PaperGreys = [new(90, 90, 90), new(120, 120, 120), new(150, 150, 150), new(175, 175, 175), new(200, 200, 200)];

    public static Image<Rgb24> Draw(IReadOnlyList<MethodPoints> methods, PlotMetric y)
    {
        var points = new List<PlotPoint>();
        var legend = new List<LegendEntry>();
        static bool Finite((double? X, double? Y) p) => p.X is { } x && p.Y is { } v && double.IsFinite(x) && double.IsFinite(v);
        if (y == PlotMetric.RFaceSim)
            for (int i = 0; i < ScoreReport.PaperPoints.Count; i++)
            {
                var p = ScoreReport.PaperPoints[i];
                points.Add(new PlotPoint(p.ClipT, p.RFaceSim, PaperGreys[i % PaperGreys.Length], 6, Marker.Ring));
                legend.Add(new LegendEntry(p.Name + " (paper)", PaperGreys[i % PaperGreys.Length], Marker.Ring));
            }
        for (int m = 0; m < methods.Count; m++)
        {
            var color = Colors[m % Colors.Length];
            var marker = Markers[m % Markers.Length];
            legend.Add(new LegendEntry(methods[m].Name, color, marker));
            foreach (var p in methods[m].Identities.Where(Finite)) points.Add(new PlotPoint(100 * p.ClipT!.Value, 100 * p.Y!.Value, color, 3, marker));
            if (Finite(methods[m].Mean)) points.Add(new PlotPoint(100 * methods[m].Mean.ClipT!.Value, 100 * methods[m].Mean.Y!.Value, color, 7, marker));
        }
        // the range: every point, padded to whole ticks of 5; 0..100 when there is no point at all
        if (points.Count == 0) return ScatterPlot.Draw(points, 0, 100, 0, 100, 20, "CLIP-T (%)", Title(y), legend);
        double xMin = Math.Floor(points.Min(p => p.X) / 5) * 5 - 5, xMax = Math.Ceiling(points.Max(p => p.X) / 5) * 5 + 5;
        double yMin = Math.Floor(points.Min(p => p.Y) / 5) * 5 - 5, yMax = Math.Ceiling(points.Max(p => p.Y) / 5) * 5 + 5;
        double tick = Math.Max(5, LinePlot.NiceTick(Math.Max(xMax - xMin, yMax - yMin)));
        return ScatterPlot.Draw(points, xMin, xMax, yMin, yMax, tick, "CLIP-T (%)", Title(y), legend);
    }

    static string Title(PlotMetric y) => (y == PlotMetric.RFaceSim ? "R-FaceSim" : "FaceSim") + " (%)";
}

/// <summary>Source-generated JSON for evaluation results (the CLI is published trimmed).</summary>
[JsonSourceGenerationOptions(WriteIndented = true, PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase)]
[JsonSerializable(typeof(EvaluationResult))]
internal sealed partial class EvaluationJson : JsonSerializerContext;
