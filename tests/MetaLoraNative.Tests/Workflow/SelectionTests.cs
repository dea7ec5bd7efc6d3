using System.Globalization;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Demo;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Training;
using MetaLoraNative.Onnx.Datasets;
using MetaLoraNative.Onnx.Faces;
using MetaLoraNative.Onnx.Imaging;
using MetaLoraNative.Onnx.Models;
using MetaLoraNative.Onnx.Scoring;
using MetaLoraNative.Tests.Testing;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using static MetaLoraNative.Tests.Cli.CliRunner;

namespace MetaLoraNative.Tests.Workflow;

/// <summary>
/// --select-by rfacesim on the stand-in models: every snapshot scored (one csv row each), the arg-max copied to
/// OUT.best.safetensors while --out stays the last iteration, the scores recomputable from the images kept, the plot a
/// PNG, a repeated run reusing the scores, and every missing piece refused before training.
/// </summary>
[Collection("console")]
public sealed class SelectionTests() : TempFolderTest("select")
{
    string models = "", photos = "", data = "";

    void Setup(int others = 2)
    {
        models = Path.Combine(dir, "models");
        ModelsFolder.WriteTiny(models);
        photos = Path.Combine(dir, "photos");
        Directory.CreateDirectory(photos);
        Photo(Path.Combine(photos, "ref.png"), 0);
        for (int k = 1; k <= others; k++) Photo(Path.Combine(photos, $"other{k}.png"), k);
        data = Path.Combine(dir, "data");
        LatentDataset.SaveIdentity(data, TinyDemo.MakeIdentity(FluxConfig.TinyT5, "someone", 3, 5));
    }

    static void Photo(string path, int variant)
    {
        using var img = new Image<Rgb24>(640, 480);
        for (int y = 0; y < img.Height; y++)
            for (int x = 0; x < img.Width; x++)
                img[x, y] = new Rgb24((byte)((x * (3 + variant)) % 256), (byte)((y * (5 + 2 * variant)) % 256), (byte)((x + y + 40 * variant) % 256));
        img.SaveAsPng(path);
    }

    /// <summary>train lora with selection on; a flag of <paramref name="more"/> replaces the default of the same name.</summary>
    (int Code, string Out, string Err) TrainLora(string output, params string[] more)
    {
        var args = new List<string> { "train", "lora", "--model", "random:tiny-t5:1", "--data", data, "--out", output, "--iterations", "4", "--save-every", "2",
                                      "--select-by", "rfacesim", "--select-photos", photos, "--models", models, "--sample-size", "32", "--sample-steps", "1",
                                      "--lr", "1e-2", "--rank", "2", "--dtype", "fp32" };
        for (int i = 0; i < more.Length; i++)
        {
            bool valued = i + 1 < more.Length && !more[i + 1].StartsWith("--", StringComparison.Ordinal);
            int at = args.IndexOf(more[i]);
            if (at >= 0 && valued) args[at + 1] = more[++i];
            else if (valued) args.AddRange([more[i], more[++i]]);
            else args.Add(more[i]);
        }
        return Run([.. args]);
    }

    sealed record Row(long Step, string Metric, double? FaceSim, double? RFaceSim, double? ClipT, string Snapshot);

    static List<Row> Csv(string path)
    {
        var lines = File.ReadAllLines(path);
        Assert.Equal("step,metric,facesim,rfacesim,clip_t,images,faces,snapshot_sha256,settings_sha256,snapshot", lines[0]);
        double? N(string s) => s.Length == 0 ? null : double.Parse(s, CultureInfo.InvariantCulture);
        return lines.Skip(1).Select(l => l.Split(',', 10)).Select(f => new Row(long.Parse(f[0], CultureInfo.InvariantCulture), f[1], N(f[2]), N(f[3]), N(f[4]), f[9])).ToList();
    }

    static float[] Floats(string path, string name)
    {
        using var f = SafetensorsFile.Open(path);
        return f.ReadFloats(name);
    }

    static IEnumerable<string> Names(string path)
    {
        using var f = SafetensorsFile.Open(path);
        return f.Entries.Keys.ToList();
    }

    [Fact]
    public void EverySnapshotIsScoredTheArgMaxIsCopiedAndOutStaysTheLastIteration()
    {
        Setup();
        string output = Path.Combine(dir, "run", "me.safetensors"), run = Path.GetDirectoryName(output)!;
        var r = TrainLora(output, "--format", "both");
        Assert.True(r.Code == 0, r.Err + r.Out);

        var snapshots = Directory.GetFiles(run, "me.step*.safetensors").Where(f => !f.EndsWith(".kohya.safetensors", StringComparison.Ordinal))
                                 .Select(Path.GetFileName).Order(StringComparer.Ordinal).ToList();
        Assert.Equal(["me.step000002.safetensors", "me.step000004.safetensors"], snapshots);
        var rows = Csv(Path.Combine(run, "selection.csv"));
        Assert.Equal([2L, 4L], rows.Select(x => x.Step));
        Assert.Equal(snapshots, rows.Select(x => x.Snapshot));
        foreach (var row in rows)
        {
            Assert.Equal("rfacesim", row.Metric);
            foreach (var v in new[] { row.FaceSim, row.RFaceSim, row.ClipT }) Assert.InRange(v!.Value, -1, 1);
        }

        // the best copy is the arg-max snapshot, byte for byte (and its kohya sibling); --out holds the last iteration
        var best = rows.OrderByDescending(x => x.RFaceSim).ThenBy(x => x.Step).First();
        Assert.Equal(File.ReadAllBytes(Path.Combine(run, best.Snapshot)), File.ReadAllBytes(Path.Combine(run, "me.best.safetensors")));
        Assert.Equal(File.ReadAllBytes(Path.Combine(run, Path.ChangeExtension(best.Snapshot, ".kohya.safetensors"))),
                     File.ReadAllBytes(Path.Combine(run, "me.best.kohya.safetensors")));
        foreach (var name in Names(output))
            Assert.Equal(Floats(Path.Combine(run, "me.step000004.safetensors"), name), Floats(output, name));
        Assert.NotEqual(Floats(Path.Combine(run, "me.step000002.safetensors"), Names(output).First(n => n.EndsWith("lora_B.weight", StringComparison.Ordinal))),
                        Floats(output, Names(output).First(n => n.EndsWith("lora_B.weight", StringComparison.Ordinal))));
        Assert.Contains($"best snapshot by R-FaceSim: step {best.Step}", r.Out);
        Assert.Contains($"Best: step {best.Step} ({best.Snapshot})", File.ReadAllText(Path.Combine(run, "selection.md")));

        // the scores follow from the kept images: FaceSim against the reference, R-FaceSim against the two others, CLIP-T against the prompt
        using (var set = new ModelSet(models))
        {
            var detector = set.OpenFaceDetector();
            var embedder = set.OpenFaceEmbedder();
            var clip = set.OpenClipScorer();
            float[] Embed(string path)
            {
                using var img = ImageIO.LoadRgb(path);
                return embedder.Embed(img, detector.Detect(img).MaxBy(f => f.Area)!);
            }
            var reference = Embed(Path.Combine(photos, "ref.png"));
            var others = new[] { Embed(Path.Combine(photos, "other1.png")), Embed(Path.Combine(photos, "other2.png")) };
            var prompts = SnapshotSelection.DefaultPrompts(SubjectClass.Woman);
            foreach (var row in rows)
            {
                var images = Enumerable.Range(0, prompts.Count).Select(k => Path.Combine(run, "selection", $"step{row.Step:D6}_{k:D2}.png")).ToList();
                var e = images.Select(Embed).ToList();
                Assert.Equal(e.Average(g => (double)FaceMath.Cosine(g, reference)), row.FaceSim!.Value, 1e-9);
                Assert.Equal(e.Average(g => others.Average(t => (double)FaceMath.Cosine(g, t))), row.RFaceSim!.Value, 1e-9);
                Assert.Equal(images.Select((p, k) => { using var img = ImageIO.LoadRgb(p); return clip.ClipT(img, prompts[k]); }).Average(), row.ClipT!.Value, 1e-9);
            }
        }

        // the images are what `generate` draws from the snapshot with the prompt's seed
        string generated = Path.Combine(dir, "g.png");
        var g = Run("generate", "--model", "random:tiny-t5:1", "--lora", Path.Combine(run, "me.step000002.safetensors"), "--models", models,
                    "--prompt", SnapshotSelection.DefaultPrompts(SubjectClass.Woman)[1], "--seed", "1", "--width", "32", "--height", "32", "--steps", "1", "--out", generated);
        Assert.True(g.Code == 0, g.Err);
        using (var a = Image.Load<Rgb24>(generated))
        using (var b = Image.Load<Rgb24>(Path.Combine(run, "selection", "step000002_01.png")))
        {
            int worst = 0;
            for (int y = 0; y < 32; y++)
                for (int x = 0; x < 32; x++)
                    worst = Math.Max(worst, Math.Max(Math.Abs(a[x, y].R - b[x, y].R), Math.Max(Math.Abs(a[x, y].G - b[x, y].G), Math.Abs(a[x, y].B - b[x, y].B))));
            Assert.True(worst <= 2, $"generate and the selection image differ by {worst} levels");
        }

        var png = File.ReadAllBytes(Path.Combine(run, "selection.png"));
        Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G', 13, 10, 26, 10 }, png[..8]);
        using (var plot = Image.Load<Rgb24>(Path.Combine(run, "selection.png")))
            Assert.Equal((640, 480), (plot.Width, plot.Height));
        Assert.Empty(Directory.GetFiles(run, "*.tmp-*"));
    }

    [Fact]
    public void ARepeatedRunKeepsTheScoresOfIdenticalSnapshotsAndRescoresChangedOnes()
    {
        Setup();
        string output = Path.Combine(dir, "me.safetensors"), csv = Path.Combine(dir, "selection.csv");
        Assert.Equal(0, TrainLora(output).Code);
        // a marker score for step 2: kept only if the step is not scored again
        var lines = File.ReadAllLines(csv);
        var f = lines[1].Split(',');
        f[3] = "0.98765";
        lines[1] = string.Join(',', f);
        File.WriteAllLines(csv, lines);
        string image = Path.Combine(dir, "selection", "step000002_00.png");
        var written = File.GetLastWriteTimeUtc(image);

        var again = TrainLora(output, "--force-new");   // the same run from the start: the same snapshots
        Assert.True(again.Code == 0, again.Err + again.Out);
        Assert.Contains("step 2 already scored", again.Out);
        Assert.Contains("step 4 already scored", again.Out);
        var rows = Csv(csv);
        Assert.Equal([2L, 4L], rows.Select(x => x.Step));
        Assert.Equal(0.98765, rows[0].RFaceSim);
        Assert.Equal(written, File.GetLastWriteTimeUtc(image));
        Assert.Equal(File.ReadAllBytes(Path.Combine(dir, "me.step000002.safetensors")), File.ReadAllBytes(Path.Combine(dir, "me.best.safetensors")));

        var changed = TrainLora(output, "--force-new", "--seed", "9");   // other factors: every snapshot is scored again
        Assert.True(changed.Code == 0, changed.Err + changed.Out);
        Assert.DoesNotContain("step 2 already scored", changed.Out);
        Assert.DoesNotContain("step 4 already scored", changed.Out);
        Assert.NotEqual(0.98765, Csv(csv)[0].RFaceSim);
    }

    [Fact]
    public void WithOnlyTheReferenceFaceSimSelects()
    {
        Setup(others: 0);
        string output = Path.Combine(dir, "me.safetensors");
        var r = TrainLora(output);
        Assert.True(r.Code == 0, r.Err + r.Out);
        var rows = Csv(Path.Combine(dir, "selection.csv"));
        Assert.Equal([2L, 4L], rows.Select(x => x.Step));
        Assert.All(rows, x => Assert.Equal(("facesim", (double?)null), (x.Metric, x.RFaceSim)));
        var best = rows.OrderByDescending(x => x.FaceSim).ThenBy(x => x.Step).First();
        Assert.Equal(File.ReadAllBytes(Path.Combine(dir, best.Snapshot)), File.ReadAllBytes(Path.Combine(dir, "me.best.safetensors")));
        Assert.Contains("best snapshot by FaceSim", r.Out);
    }

    [Fact]
    public void PersonalizeSelectsAmongItsSnapshotsWithThePhotoAsReference()
    {
        Setup();
        string photo = Path.Combine(photos, "ref.png"), output = Path.Combine(dir, "p", "me.safetensors");
        var r = Run("personalize", photo, "--standard", "--out", output, "--models", models, "--model", "random:tiny-t5:1", "--resolution", "256",
                    "--max", "2", "--iterations", "3", "--snapshots", "1,3", "--select-by", "rfacesim", "--select-photos", photos,
                    "--sample-size", "32", "--sample-steps", "1");
        Assert.True(r.Code == 0, r.Err + r.Out);
        var rows = Csv(Path.Combine(dir, "p", "selection.csv"));
        Assert.Equal([1L, 3L], rows.Select(x => x.Step));
        Assert.All(rows, x => Assert.Equal("rfacesim", x.Metric));
        Assert.Contains("2 other photo(s)", File.ReadAllText(Path.Combine(dir, "p", "selection.md")));   // the photo itself is not one of them
        Assert.True(File.Exists(Path.Combine(dir, "p", "me.best.safetensors")));
    }

    [Fact]
    public void WhatSelectionNeedsIsCheckedBeforeTraining()
    {
        Setup();
        string output = Path.Combine(dir, "me.safetensors");
        void Refused((int Code, string Out, string Err) r, params string[] mentions)
        {
            Assert.Equal(2, r.Code);
            foreach (var m in mentions) Assert.Contains(m, r.Err);
            Assert.False(File.Exists(Path.Combine(dir, "metrics.jsonl")), "training started");
            Assert.False(File.Exists(output));
        }
        Refused(Run("train", "lora", "--model", "random:tiny-t5:1", "--data", data, "--out", output, "--select-by", "rfacesim", "--select-photos", photos,
                    "--models", models), "--select-by", "--save-every");
        Refused(Run("train", "lora", "--model", "random:tiny-t5:1", "--data", data, "--out", output, "--save-every", "2", "--select-by", "rfacesim", "--models", models),
                "--select-photos");
        Refused(Run("train", "lora", "--model", "random:tiny-t5:1", "--data", data, "--out", output, "--select-photos", photos), "--select-photos", "--select-by");
        Refused(TrainLora(output, "--select-prompts", Path.Combine(dir, "nowhere.txt")), "nowhere.txt");
        string prompts = Path.Combine(dir, "prompts.txt");
        File.WriteAllLines(prompts, ["a photo of sks person"]);
        Refused(TrainLora(output, "--select-prompts", prompts, "--prompt", "a photo of sks person"), "--select-prompts", "training caption");
        Refused(TrainLora(output, "--select-photos", Path.Combine(dir, "absent")), "--select-photos", "absent");

        var manifest = ModelsFolder.ReadManifest(models);
        File.Delete(Path.Combine(models, manifest.Components[ModelsFolder.FaceEmbedder].Model));
        Refused(TrainLora(output), "--models", "face_embedder");
        Refused(TrainLora(output, "--models", Path.Combine(dir, "no-models")), "--models", "no-models");
    }
}
