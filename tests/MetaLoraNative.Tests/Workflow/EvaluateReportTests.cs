using MetaLoraNative.Engine;
using MetaLoraNative.Onnx.Datasets;
using MetaLoraNative.Onnx.Imaging;
using MetaLoraNative.Onnx.Scoring;
using MetaLoraNative.Tests.Testing;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using static MetaLoraNative.Tests.Cli.CliRunner;

namespace MetaLoraNative.Tests.Workflow;

/// <summary>What `evaluate` and `score` report: the trigger in the prompts, the labelled scatter plot and contact sheet, the tables.</summary>
[Collection("console")]
public sealed class EvaluateReportTests() : TempFolderTest("evaluate-report")
{
    static readonly Rgb24 White = new(255, 255, 255);

    static int Count(Image<Rgb24> img, Rectangle r, Func<Rgb24, bool> which)
    {
        int n = 0;
        for (int y = Math.Max(0, r.Top); y < Math.Min(img.Height, r.Bottom); y++)
            for (int x = Math.Max(0, r.Left); x < Math.Min(img.Width, r.Right); x++)
                if (which(img[x, y])) n++;
        return n;
    }

    [Fact]
    public void TheTriggerGoesBeforeTheSubjectWordOfEveryBuiltInPromptAndWithoutOneThePaperWordingStays()
    {
        foreach (var set in PaperPrompts.SetNames)
            foreach (var cls in new[] { SubjectClass.Man, SubjectClass.Woman })
            {
                var plain = PaperPrompts.Set(set, cls);
                var triggered = PaperPrompts.Set(set, cls, "sks");
                Assert.Equal(plain.Count, triggered.Count);
                string word = cls.Word();
                for (int i = 0; i < plain.Count; i++)
                {
                    Assert.Contains($"sks {word}", triggered[i]);
                    Assert.Equal(plain[i], triggered[i].Replace("sks ", ""));
                    Assert.DoesNotContain(PaperPrompts.TriggerPlaceholder, plain[i]);
                }
            }
        // the paper's own wording, unchanged without a trigger
        Assert.Equal(PaperPrompts.Table1Woman[0], PaperPrompts.Set("recontext", SubjectClass.Woman)[0]);
        Assert.Equal("A sks woman in a swimming pool, water reflecting on her face, looking straight ahead.", PaperPrompts.Set("recontext", SubjectClass.Woman, "sks")[0]);
        Assert.Equal(PaperPrompts.Substitute(PaperPrompts.Table3Template[2], SubjectClass.Man), PaperPrompts.Set("facesim", SubjectClass.Man)[2]);
    }

    [Fact]
    public void APromptFilesPlaceholderIsFilledOrDroppedAndATriggerForALineWithoutOneIsAnErrorNamingTheLine()
    {
        string file = Path.Combine(dir, "prompts.txt");
        File.WriteAllLines(file, ["# comment", "a photo of {trigger} person", "", "{trigger} [man/woman] at the beach", "a plain photo"]);
        var error = Assert.Throws<InputException>(() => PaperPrompts.Resolve(file, SubjectClass.Man, "zwx"));
        Assert.Equal($"{file} line 5", error.Subject);
        Assert.Contains("{trigger}", error.Message);
        Assert.Equal(["a photo of person", "man at the beach", "a plain photo"], PaperPrompts.Resolve(file, SubjectClass.Man));

        File.WriteAllLines(file, ["a photo of {trigger} person", "{trigger} [man/woman] at the beach"]);
        Assert.Equal(["a photo of zwx person", "zwx woman at the beach"], PaperPrompts.Resolve(file, SubjectClass.Woman, "zwx"));

        // score --trigger: the listed prompts carry it; a file line without the placeholder fails with exit code 2
        var list = Run("score", "--list-prompts", "--prompts", file, "--trigger", "zwx");
        Assert.True(list.Code == 0, list.Err);
        Assert.Contains("01  a photo of zwx person", list.Out);
        Assert.Contains("02  zwx woman at the beach", list.Out);
        var builtIn = Run("score", "--list-prompts", "--prompts", "facesim", "--class", "man", "--trigger", "zwx");
        Assert.Contains("01  A zwx man standing in a sunlit urban plaza", builtIn.Out);
        File.AppendAllLines(file, ["no placeholder here"]);
        var bad = Run("score", "--list-prompts", "--prompts", file, "--trigger", "zwx");
        Assert.Equal(2, bad.Code);
        Assert.Contains($"{file} line 3", bad.Err);
        Assert.Equal(2, Run("score", "--list-prompts", "--trigger", " sks").Code);
    }

    [Fact]
    public void TheScatterPlotHasAxisTitlesAndALegendInItsLayoutsPlaces()
    {
        var legend = new[] { new LegendEntry("meta-lora", new Rgb24(40, 90, 200), Marker.Disc), new LegendEntry("standard-lora", new Rgb24(210, 40, 40), Marker.Square) };
        var points = new[] { new PlotPoint(30, 70, legend[0].Color, 4, Marker.Disc), new PlotPoint(31, 75, legend[1].Color, 4, Marker.Square) };
        var layout = ScatterPlot.Layout(760, 480, "CLIP-T (%)", "R-FaceSim (%)", legend);
        var bare = ScatterPlot.Layout(760, 480, "", "", []);
        Assert.True(layout.Frame.Right < bare.Frame.Right, "the legend takes a column right of the frame");
        Assert.True(layout.Legend.Left > layout.Frame.Right && layout.Legend.Right <= 760 && layout.Legend.Height == 2 * 16);
        Assert.True(layout.XTitle.Top > layout.Frame.Bottom && layout.XTitle.Bottom <= 480);
        Assert.True(layout.YTitle.Bottom <= layout.Frame.Top);

        using var labelled = ScatterPlot.Draw(points, 20, 40, 60, 80, 5, "CLIP-T (%)", "R-FaceSim (%)", legend);
        using var unlabelled = ScatterPlot.Draw(points, 20, 40, 60, 80, 5, "", "", legend);
        foreach (var area in new[] { layout.XTitle, layout.YTitle })
        {
            Assert.True(Count(labelled, area, p => !p.Equals(White)) > 20, $"ink in the title at {area}");
            Assert.Equal(0, Count(unlabelled, area, p => !p.Equals(White)));
        }
        // each legend line shows its series' marker colour and a name in ink
        foreach (var entry in legend) Assert.True(Count(labelled, layout.Legend, p => p.Equals(entry.Color)) > 10, entry.Name);
        Assert.True(Count(labelled, layout.Legend, p => p.Equals(new Rgb24(40, 40, 40))) > 50);
        Assert.Throws<ArgumentException>(() => ScatterPlot.Layout(200, 200, "x", "y", [new LegendEntry(new string('m', 30), White, Marker.Disc)]));
    }

    [Fact]
    public void TheMethodPlotGivesEachMethodItsOwnColourAndMarker()
    {
        var results = new List<EvaluationResult>
        {
            new("meta-lora", "ann", "woman", 1, 1, 1, 0.30, 0.70, 0.74, 1, []), new("meta-lora", "ben", "woman", 1, 1, 1, 0.31, 0.72, 0.76, 1, []),
            new("standard-lora", "ann", "woman", 1, 1, 1, 0.29, 0.65, 0.70, 1, []),
        };
        var table = EvaluationTable.From(results, [new FailedIdentity("standard-lora", "ben", "photo.png: not an image")]);
        Assert.Equal(["meta-lora", "standard-lora"], table.Methods.Select(m => m.Method));
        Assert.Equal(0.305, table.Methods[0].ClipT.Mean!.Value, 12);
        Assert.Equal(0.005, table.Methods[0].ClipT.Std!.Value, 12);
        Assert.Equal(0, table.Methods[1].RFaceSim.Std!.Value);
        using var plot = table.Plot(PlotMetric.RFaceSim);
        Assert.True(Count(plot, new Rectangle(0, 0, plot.Width, plot.Height), p => p.Equals(new Rgb24(40, 90, 200))) > 0);
        Assert.True(Count(plot, new Rectangle(0, 0, plot.Width, plot.Height), p => p.Equals(new Rgb24(210, 40, 40))) > 0);
        Assert.Contains("- standard-lora/ben: photo.png: not an image", table.ToMarkdown());
        Assert.Contains("| meta-lora | 2 | 2 | 30.50 ± 0.50 | 71.00 ± 1.00 | 75.00 ± 1.00 |", table.ToMarkdown());

        string path = Path.Combine(dir, "result.json");
        results[0].Write(path);
        Assert.Equal(results[0].ToJson(), EvaluationResult.Read(path).ToJson());
        File.WriteAllText(path, results[0].ToJson().Replace("0.74", "1.74"));
        Assert.Contains("rFaceSim", Assert.Throws<InputException>(() => EvaluationResult.Read(path)).Message);
    }

    [Fact]
    public void TheContactSheetLabelsEachCell()
    {
        var images = Enumerable.Range(0, 3).Select(i => new Image<Rgb24>(64, 48, new Rgb24((byte)(60 * i), 120, 30))).ToList();
        try
        {
            using var numbered = ContactSheet.Build(images, cell: 100, columns: 3);
            using var named = ContactSheet.Build(images, ["01_4x3_x1.5", "02_1x1_x2.0_flip", "03_9x16_x3.5"], cell: 100, columns: 3);
            Assert.Equal((3 * 108 + 8, 100 + ContactSheet.LabelBand + 16), (named.Width, named.Height));
            var ink = new Rgb24(235, 235, 235);
            for (int i = 0; i < 3; i++)
            {
                var band = new Rectangle(8 + i * 108, 8 + 100, 100, ContactSheet.LabelBand);
                Assert.True(Count(numbered, band, p => p.Equals(ink)) > 10, $"index label {i + 1}");
                Assert.True(Count(named, band, p => p.Equals(ink)) > Count(numbered, band, p => p.Equals(ink)), $"name label {i + 1}");
            }
            Assert.Throws<ArgumentException>(() => ContactSheet.Build(images, ["one"]));
        }
        finally
        {
            images.ForEach(i => i.Dispose());
        }
    }
}
