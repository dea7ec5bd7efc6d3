using System.CommandLine;
using MetaLoraNative.Cli.Commands;
using MetaLoraNative.Onnx.Datasets;
using MetaLoraNative.Onnx.Imaging;
using MetaLoraNative.Onnx.Models;
using MetaLoraNative.Onnx.Scoring;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using SixLabors.ImageSharp.Processing;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Onnx;

public class ScoreAndCliTests(ITestOutputHelper output)
{
    [Fact]
    public void PaperPromptsAreComplete()
    {
        foreach (var set in PaperPrompts.SetNames)
            foreach (var cls in new[] { SubjectClass.Man, SubjectClass.Woman })
            {
                var list = PaperPrompts.Set(set, cls);
                Assert.Equal(set == "clip-t" ? 20 : 10, list.Count);
                Assert.All(list, p => Assert.DoesNotContain("[", p));
                Assert.Equal(list.Count, list.Distinct().Count());
            }
        Assert.StartsWith("A man in a casual outfit", PaperPrompts.Set("facesim", SubjectClass.Man)[1]);
        Assert.Contains("as she looks at the camera", PaperPrompts.Set("facesim", SubjectClass.Woman)[8]);
        Assert.All(PaperPrompts.Set("clip-t", SubjectClass.Man), p => Assert.DoesNotContain("woman", p));
    }

    [Fact]
    public void AugmentAndScoreHelpDescribeEveryOptionAndArgument()
    {
        foreach (var command in new[] { AugmentCommand.Create(), ScoreCommand.Create() })
        {
            Assert.False(string.IsNullOrWhiteSpace(command.Description));
            foreach (var o in command.Options) Assert.False(string.IsNullOrWhiteSpace(o.Description), $"{command.Name} {o.Name}");
            foreach (var a in command.Arguments) Assert.False(string.IsNullOrWhiteSpace(a.Description), $"{command.Name} {a.Name}");
        }
    }

    [SkippableFact]
    public void AugmentCommandWritesCropsAndContactSheet()
    {
        TestAssets.Require(TestAssets.BlazeFace, TestAssets.Astronaut);
        string outDir = TestAssets.TempDir("augment-cli");
        int rc = AugmentCommand.Create().Parse(
            [TestAssets.Astronaut, "--out", outDir, "--detector", TestAssets.BlazeFace, "--resolution", "512", "--seed", "3"]).Invoke();
        Assert.Equal(0, rc);
        var crops = Directory.GetFiles(outDir, "crop_*.png");
        Assert.Equal(23, crops.Length);
        Assert.True(File.Exists(Path.Combine(outDir, "contact_sheet.png")));
        Assert.Contains("\"fLong\"", File.ReadAllText(Path.Combine(outDir, "crops.json")));
        using var one = Image.Load<Rgb24>(crops.Single(c => Path.GetFileName(c).StartsWith("crop_10_1x1_x1.5")));
        Assert.Equal((512, 512), (one.Width, one.Height));
        // A file that is not an image: exit code 1 and no stack trace.
        string bad = Path.Combine(outDir, "bad.png");
        File.WriteAllText(bad, "hello");
        Assert.Equal(1, AugmentCommand.Create().Parse([bad, "--out", outDir, "--detector", TestAssets.BlazeFace]).Invoke());
        Directory.Delete(outDir, true);
    }

    /// <summary>
    /// Real detector and embedder, tiny CLIP: two real people; the "good method" generated images are edited copies
    /// of each person, the "swapped method" puts each person's edits under the other identity.
    /// </summary>
    [SkippableFact]
    public void ScoreRanksAGoodMethodAboveASwappedOne()
    {
        TestAssets.Require(TestAssets.BlazeFace, TestAssets.FacePluginEmbedder, TestAssets.Astronaut, TestAssets.GraceHopper);
        string root = TestAssets.TempDir("score");
        string models = Path.Combine(root, "models");
        ModelsFolder.WriteTiny(models);
        File.Copy(TestAssets.BlazeFace, Path.Combine(models, "blazeface.onnx"));
        File.Copy(TestAssets.FacePluginEmbedder, Path.Combine(models, "fr_feature.onnx"));
        var manifest = ModelsFolder.ReadManifest(models);
        manifest.Components[ModelsFolder.FaceDetector] = new ComponentEntry { Model = "blazeface.onnx", Kind = "blazeface" };
        manifest.Components[ModelsFolder.FaceEmbedder] = new ComponentEntry { Model = "fr_feature.onnx", Kind = "aligned112" };
        ModelsFolder.WriteManifest(models, manifest);
        var problems = ModelsFolder.Check(models);
        Assert.True(problems.Count == 0, string.Join("\n", problems));

        var people = new[] { ("astronaut", TestAssets.Astronaut), ("hopper", TestAssets.GraceHopper) };
        foreach (var (name, path) in people)
        {
            using var photo = ImageIO.LoadRgb(path);
            string dir = Directory.CreateDirectory(Path.Combine(root, "ids", name)).FullName;
            photo.SaveAsPng(Path.Combine(dir, "ref.png"));
            using (var m = photo.Clone(c => c.Flip(FlipMode.Horizontal))) m.SaveAsPng(Path.Combine(dir, "mirror.png"));
            using (var s = photo.Clone(c => c.Crop(new Rectangle(photo.Width / 8, 0, photo.Width * 3 / 4, photo.Height * 3 / 4))))
                s.SaveAsPng(Path.Combine(dir, "crop.png"));
            for (int p = 1; p <= 2; p++)
            {
                using var g = photo.Clone(c => c.Brightness(1f + 0.1f * p).Rotate(3 * p).Resize(photo.Width, photo.Height));
                g.SaveAsPng(Path.Combine(Directory.CreateDirectory(Path.Combine(root, "good", name)).FullName, $"{p:00}_seed0.png"));
                string other = name == "astronaut" ? "hopper" : "astronaut";
                g.SaveAsPng(Path.Combine(Directory.CreateDirectory(Path.Combine(root, "swapped", other)).FullName, $"{p:00}_seed0.png"));
            }
        }

        double Score(string method)
        {
            string outDir = Path.Combine(root, "out-" + method);
            int rc = ScoreCommand.Create().Parse(["--identities", Path.Combine(root, "ids"), "--generated", Path.Combine(root, method),
                "--models", models, "--out", outDir, "--label", method]).Invoke();
            Assert.Equal(0, rc);
            var md = File.ReadAllText(Path.Combine(outDir, "scores.md"));
            output.WriteLine(md);
            Assert.True(File.Exists(Path.Combine(outDir, "scatter.png")));
            var json = System.Text.Json.JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "scores.json")));
            Assert.Equal(4, json.RootElement.GetProperty("images").GetInt32());
            // the overall CLIP-T is the mean over every scored image
            var perImage = json.RootElement.GetProperty("identities").EnumerateArray()
                .SelectMany(i => i.GetProperty("images").EnumerateArray()).Select(i => i.GetProperty("clipT").GetDouble()).ToList();
            Assert.Equal(4, perImage.Count);
            Assert.Equal(perImage.Average(), json.RootElement.GetProperty("clipT").GetDouble(), 12);
            return json.RootElement.GetProperty("rFaceSim").GetDouble();
        }

        double good = Score("good"), swapped = Score("swapped");
        output.WriteLine($"R-FaceSim good {good:0.000}, swapped {swapped:0.000}");
        Assert.True(good > 0.8, $"good {good}");
        Assert.True(swapped < 0.4, $"swapped {swapped}");
        // METALORA_KEEP_TEST_FILES=1 keeps the reports (scatter.png, scores.md) for a look.
        if (Environment.GetEnvironmentVariable("METALORA_KEEP_TEST_FILES") != "1") Directory.Delete(root, true);
        else output.WriteLine($"kept {root}");
    }
}
