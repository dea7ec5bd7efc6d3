using System.Globalization;
using MetaLoraNative.Cli.Commands;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Training;
using MetaLoraNative.Onnx.Models;
using MetaLoraNative.Onnx.Scoring;
using MetaLoraNative.Tests.Testing;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using static MetaLoraNative.Tests.Cli.CliRunner;

namespace MetaLoraNative.Tests.Workflow;

/// <summary>
/// `metalora evaluate` end to end on the stand-in models (CPU): the Table-5-shaped outputs, resuming, a failing
/// identity, and the options' route through a config file.
/// </summary>
[Collection("console")]
public sealed class EvaluateTests() : TempFolderTest("evaluate")
{
    const string Model = "random:tiny-t5:1";

    /// <summary>A Meta-PHD-style folder: per identity a reference photo and two other photos, each a different pattern.</summary>
    string WriteData(params string[] identities)
    {
        string data = Path.Combine(dir, "data");
        for (int n = 0; n < identities.Length; n++)
        {
            string folder = Directory.CreateDirectory(Path.Combine(data, identities[n])).FullName;
            string[] names = ["ref.png", "side.png", "smile.png"];
            for (int k = 0; k < names.Length; k++)
            {
                using var img = new Image<Rgb24>(320, 240);
                for (int y = 0; y < img.Height; y++)
                    for (int x = 0; x < img.Width; x++)
                        img[x, y] = new Rgb24((byte)(x * 255 / 320 + 60 * n + 13 * k), (byte)(y * 255 / 240 + 40 * n), (byte)((x + y + 30 * k) % 256));
                img.SaveAsPng(Path.Combine(folder, names[k]));
            }
        }
        return data;
    }

    string WritePrompts(params string[] lines)
    {
        string path = Path.Combine(dir, "prompts.txt");
        File.WriteAllLines(path, lines);
        return path;
    }

    /// <summary>A standard LoRA file per identity for --loras, so a test can skip training.</summary>
    string WriteLoras(params string[] identities)
    {
        string folder = Directory.CreateDirectory(Path.Combine(dir, "loras")).FullName;
        using var be = CpuBackend.F32();
        for (int i = 0; i < identities.Length; i++)
        {
            using var a = LoraAdapter.Random(be, FluxConfig.TinyT5, LoraMode.Standard, 2, 2, 1, (ulong)(5 + i));
            LoraFiles.Export(a, 0, Path.Combine(folder, identities[i] + ".safetensors"), LoraFormat.Peft);
        }
        return folder;
    }

    static List<string[]> Csv(string path) => File.ReadAllLines(path).Skip(1).Select(l => l.Split(',')).ToList();

    static double Value(string cell) => double.Parse(cell, CultureInfo.InvariantCulture);

    [Fact]
    public void EvaluateTrainsGeneratesAndScoresEachIdentityIntoATable5ShapedTableAndARerunSkipsThem()
    {
        string models = Path.Combine(dir, "models"), data = WriteData("alice", "bob"), output = Path.Combine(dir, "eval");
        ModelsFolder.WriteTiny(models);
        string prompts = WritePrompts("a photo of {trigger} [man/woman] in a garden", "a portrait of {trigger} [man/woman], looking at the camera");
        var run = Run("evaluate", "--data", data, "--out", output, "--models", models, "--model", Model, "--standard", "--iterations", "2",
                      "--resolution", "256", "--max", "1", "--prompts", prompts, "--seeds", "1", "--steps", "2", "--size", "64");
        Assert.True(run.Code == 0, run.Err + run.Out);
        Assert.Matches(@"\[1/2\] standard-lora/alice: CLIP-T -?\d+\.\d\d  FaceSim -?\d+\.\d\d  R-FaceSim -?\d+\.\d\d \(2 images, \d+\.\d s\); ETA \d\d:\d\d:\d\d for 1 more", run.Out);
        Assert.Matches(@"\[2/2\] standard-lora/bob: CLIP-T", run.Out);
        Assert.Contains("standard-lora: 2 evaluated, 0 skipped (results existed), 0 failed", run.Out);

        foreach (var id in new[] { "alice", "bob" })
        {
            string idDir = Path.Combine(output, "standard-lora", id);
            foreach (var f in new[] { "lora.safetensors", "result.json", "generated_sheet.png", "generated/01_seed0.png", "generated/02_seed0.png", "loss.png" })
                Assert.True(File.Exists(Path.Combine(idDir, f)), $"{id}/{f}");
            var result = EvaluationResult.Read(Path.Combine(idDir, "result.json"));
            Assert.Equal(("standard-lora", id, 2, 1, 2), (result.Method, result.Identity, result.Prompts, result.Seeds, result.Images));
        }
        // the trigger went into the prompts the images were scored against (and the caption the LoRA was trained on)
        using (var file = Engine.IO.SafetensorsFile.Open(Path.Combine(output, "standard-lora", "alice", "lora.safetensors")))
            Assert.Equal("a photo of sks person", file.Metadata["metalora.prompt"]);

        // results.csv: the header, one method row, then one row per identity; every value a finite percentage
        var lines = File.ReadAllLines(Path.Combine(output, "results.csv"));
        Assert.Equal(EvaluationTable.CsvHeader, lines[0]);
        var rows = Csv(Path.Combine(output, "results.csv"));
        Assert.Equal(["method", "identity", "identity"], rows.Select(r => r[0]));
        Assert.Equal(["alice", "bob"], rows.Skip(1).Select(r => r[2]));
        Assert.All(rows, r => Assert.Equal(12, r.Length));
        var method = rows[0];
        Assert.Equal(("standard-lora", "2", "4"), (method[1], method[4], method[5]));
        foreach (int column in new[] { 6, 8, 10 })
        {
            var perIdentity = rows.Skip(1).Select(r => Value(r[column])).ToList();
            Assert.All(perIdentity, v => Assert.InRange(v, -100, 100));
            double mean = perIdentity.Average(), std = Math.Sqrt(perIdentity.Average(v => (v - mean) * (v - mean)));
            Assert.Equal(mean, Value(method[column]), 3);         // the row is the mean over identities ...
            Assert.Equal(std, Value(method[column + 1]), 3);      // ... ± their (population) std
        }

        string md = File.ReadAllText(Path.Combine(output, "results.md"));
        Assert.Contains("| method | identities | images | CLIP-T (%) | FaceSim (%) | R-FaceSim (%) |", md);
        Assert.Matches(@"\| standard-lora \| 2 \| 4 \| -?\d+\.\d\d ± \d+\.\d\d \| -?\d+\.\d\d ± \d+\.\d\d \| -?\d+\.\d\d ± \d+\.\d\d \|", md);
        Assert.Contains("| Meta-LoRA (paper, Table 5) | | | 31.66 | | 77.16 |", md);
        Assert.Matches(@"\| standard-lora \| alice \| woman \| 2 × 1 \| 2 \|", md);
        using (var plot = Image.Load<Rgb24>(Path.Combine(output, "scatter.png")))
            Assert.Equal((760, 480), (plot.Width, plot.Height));
        Assert.True(File.Exists(Path.Combine(output, "config.yaml")));

        // the rerun, through the saved config file: both identities are skipped and their results stay as they were
        string before = File.ReadAllText(Path.Combine(output, "standard-lora", "bob", "result.json"));
        var again = Run("evaluate", "--config", Path.Combine(output, "config.yaml"));
        Assert.True(again.Code == 0, again.Err + again.Out);
        Assert.Contains("[1/2] standard-lora/alice: skipped, results exist", again.Out);
        Assert.Contains("[2/2] standard-lora/bob: skipped, results exist", again.Out);
        Assert.Contains("standard-lora: 0 evaluated, 2 skipped (results existed), 0 failed", again.Out);
        Assert.DoesNotContain("standard LoRA:", again.Out);    // nothing trained
        Assert.Equal(before, File.ReadAllText(Path.Combine(output, "standard-lora", "bob", "result.json")));
        Assert.Equal(lines, File.ReadAllLines(Path.Combine(output, "results.csv")));
    }

    [Fact]
    public void AFailingIdentityIsReportedSkippedAndListedAndTheNextRunEvaluatesOnlyIt()
    {
        string models = Path.Combine(dir, "models"), data = WriteData("ann", "ben", "cal"), output = Path.Combine(dir, "eval");
        ModelsFolder.WriteTiny(models);
        string loras = WriteLoras("ann", "ben", "cal");
        string broken = Path.Combine(data, "ben", "side.png");
        byte[] good = File.ReadAllBytes(broken);
        File.WriteAllText(broken, "not a png");
        string prompts = WritePrompts("a photo of {trigger} [man/woman]");
        string[] args = ["evaluate", "--data", data, "--out", output, "--models", models, "--model", Model, "--loras", loras, "--label", "given",
                         "--prompts", prompts, "--seeds", "2", "--steps", "1", "--size", "32", "--no-clip", "--plot", "facesim"];
        var run = Run(args);
        Assert.Equal(1, run.Code);
        Assert.Matches(@"\[2/3\] given/ben: failed: .*side\.png.*; skipped", run.Err);
        Assert.Contains("given: 2 evaluated, 0 skipped (results existed), 1 failed (ben)", run.Out);
        Assert.False(File.Exists(Path.Combine(output, "given", "ben", "result.json")));
        var rows = Csv(Path.Combine(output, "results.csv"));
        Assert.Equal(["ann", "cal"], rows.Where(r => r[0] == "identity").Select(r => r[2]));
        Assert.Equal("2", rows.Single(r => r[0] == "method")[4]);
        Assert.All(rows, r => Assert.Equal("", r[6]));                            // --no-clip: no CLIP-T
        Assert.All(rows.Where(r => r[0] == "identity"), r => Assert.InRange(Value(r[8]), -100, 100));
        string md = File.ReadAllText(Path.Combine(output, "results.md"));
        Assert.Contains("## Failed", md);
        Assert.Contains("- given/ben: ", md);

        File.WriteAllBytes(broken, good);
        var rerun = Run(args);
        Assert.True(rerun.Code == 0, rerun.Err + rerun.Out);
        Assert.Contains("[1/3] given/ann: skipped, results exist", rerun.Out);
        Assert.Matches(@"\[2/3\] given/ben: CLIP-T n/a  FaceSim -?\d+\.\d\d  R-FaceSim -?\d+\.\d\d \(2 images", rerun.Out);
        Assert.Contains("[3/3] given/cal: skipped, results exist", rerun.Out);
        Assert.Equal(3, Csv(Path.Combine(output, "results.csv")).Count(r => r[0] == "identity"));
        Assert.DoesNotContain("## Failed", File.ReadAllText(Path.Combine(output, "results.md")));
    }

    [Fact]
    public void ASecondRunIntoTheSameMethodFolderIsRefusedNamingTheFirst()
    {
        string data = WriteData("ann"), output = Path.Combine(dir, "eval"), loras = WriteLoras("ann");
        using var first = RunLock.Acquire(Path.Combine(output, "given"), [], _ => { });
        var run = Run("evaluate", "--data", data, "--out", output, "--models", Path.Combine(dir, "no-models"), "--loras", loras, "--label", "given");
        Assert.True(run.Code == 2, run.Err);
        Assert.Contains("another run holds", run.Err);
        Assert.Contains(first.Path, run.Err);
        Assert.False(Directory.Exists(Path.Combine(output, "given")));   // nothing written into the held folder
    }

    [Fact]
    public void BadInputIsRefusedBeforeAnyModelIsLoaded()
    {
        string data = WriteData("ann"), output = Path.Combine(dir, "eval");
        string prompts = WritePrompts("a photo of {trigger} person", "a plain photo");
        (string[] Args, string Expected)[] cases =
        [
            (["--loras", dir, "--standard"], "--loras: evaluates the given LoRAs without training"),
            (["--standard", "--label", "a/b"], "--label"),
            (["--standard", "--caption", "a photo of a person"], "--caption"),
            (["--standard", "--prompts", prompts], "line 2"),
            (["--loras", Path.Combine(dir, "none")], "--loras"),
            ([], "--down"),
        ];
        foreach (var (extra, expected) in cases)
        {
            var run = Run(["evaluate", "--data", data, "--out", output, "--models", Path.Combine(dir, "no-models"), .. extra]);
            Assert.True(run.Code == 2, string.Join(' ', extra) + ": " + run.Err);
            Assert.Contains(expected, run.Err);
        }
        Assert.False(Directory.Exists(output));
    }

    [Fact]
    public void EvaluateHelpDescribesEveryOption()
    {
        var command = EvaluateCommand.Create();
        Assert.False(string.IsNullOrWhiteSpace(command.Description));
        foreach (var o in command.Options) Assert.False(string.IsNullOrWhiteSpace(o.Description), o.Name);
        Assert.Contains(command.Options, o => o.Name == "--trigger" && o.Description!.Contains(PaperPrompts.TriggerPlaceholder));
        Assert.DoesNotContain(command.Options, o => o.Name == "--state");
    }
}
