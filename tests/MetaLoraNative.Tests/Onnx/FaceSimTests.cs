using MetaLoraNative.Onnx.Faces;
using MetaLoraNative.Onnx.Imaging;
using MetaLoraNative.Onnx.Scoring;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using SixLabors.ImageSharp.Processing;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Onnx;

public class FaceSimTests(ITestOutputHelper output)
{
    [Fact]
    public void RFaceSimFollowsAlgorithm3()
    {
        float[] e(params float[] v) => FaceMath.Normalize(v);
        var others = new Dictionary<string, IReadOnlyList<float[]>>
        {
            ["ann"] = [e(1, 0), e(0, 1)],
            ["bob"] = [e(-1, 0)],
        };
        var gen = new[]
        {
            new GeneratedEmbedding("ann", "p1", e(1, 0)),      // cos 1 and 0 -> 0.5
            new GeneratedEmbedding("ann", "p2", e(1, 1)),      // 0.707 and 0.707 -> 0.707
            new GeneratedEmbedding("bob", "p1", e(-1, 0)),     // 1
            new GeneratedEmbedding("bob", "p1", e(0, 1)),      // 0: same (identity, prompt) -> averaged with the line above
        };
        var r = FaceMetrics.RFaceSim(gen, others);
        Assert.Equal(0.5, r.PerIdentityPrompt[("ann", "p1")], 6);
        Assert.Equal(Math.Sqrt(0.5), r.PerIdentityPrompt[("ann", "p2")], 6);
        Assert.Equal(0.5, r.PerIdentityPrompt[("bob", "p1")], 6);
        Assert.Equal((0.5 + Math.Sqrt(0.5) + 0.5) / 3, r.Mean, 6);
        Assert.Throws<MetaLoraNative.Engine.InputException>(() => FaceMetrics.RFaceSim([new GeneratedEmbedding("cy", "p", e(1, 0))], others));
    }

    // Identities built from real photos: each face is one person; its "other real images" are a shifted crop,
    // a mirror image and a downscaled copy of the photo, and its "generated" image is a brightened, slightly rotated
    // copy. A working embedder must rank every same-person comparison above the cross-person ones.
    [SkippableFact]
    public void RealEmbedderRanksSameIdentityAboveOthers()
    {
        var det = BlazeFaceTests.Require();
        TestAssets.Require(TestAssets.FacePluginEmbedder, TestAssets.Astronaut, TestAssets.GraceHopper, TestAssets.Sample(6));
        using var embedder = new AlignedFaceEmbedder(TestAssets.FacePluginEmbedder);

        var people = new List<(string Name, Image<Rgb24> Photo, FaceDetection Face)>();
        var astronaut = ImageIO.LoadRgb(TestAssets.Astronaut);
        people.Add(("astronaut", astronaut, det.Detect(astronaut).Single()));
        var hopper = ImageIO.LoadRgb(TestAssets.GraceHopper);
        people.Add(("hopper", hopper, det.Detect(hopper).Single()));
        var group = ImageIO.LoadRgb(TestAssets.Sample(6));
        foreach (var (f, k) in det.Detect(group).Select((f, k) => (f, k)))
        {
            // Each person of the group photo becomes a portrait of their own.
            var r = Rectangle.Intersect(Rectangle.Round(new RectangleF(f.Box.X - f.Box.Width, f.Box.Y - f.Box.Height, 3 * f.Box.Width, 3 * f.Box.Height)), group.Bounds());
            var portrait = group.Clone(c => c.Crop(r));
            var face = det.Detect(portrait).OrderByDescending(x => x.Area).FirstOrDefault();
            if (face is not null) people.Add(($"group6-{k}", portrait, face));
        }
        Assert.True(people.Count >= 5, $"only {people.Count} identities");

        float[] EmbedLargest(Image<Rgb24> img) => embedder.Embed(img, det.Detect(img).MaxBy(f => f.Area)!);

        var others = new Dictionary<string, IReadOnlyList<float[]>>();
        var generated = new Dictionary<string, float[]>();
        foreach (var (name, photo, face) in people)
        {
            var b = face.Box;
            var shift = Rectangle.Intersect(Rectangle.Round(new RectangleF(b.X - 0.8f * b.Width, b.Y - 0.6f * b.Height, 2.2f * b.Width, 2.4f * b.Height)), photo.Bounds());
            using var shifted = photo.Clone(c => c.Crop(shift));
            using var mirrored = photo.Clone(c => c.Flip(FlipMode.Horizontal));
            using var small = photo.Clone(c => c.Resize(photo.Width * 7 / 10, photo.Height * 7 / 10));
            using var gen = photo.Clone(c => c.Brightness(1.15f).Rotate(4f).Resize(photo.Width, photo.Height));
            others[name] = [EmbedLargest(shifted), EmbedLargest(mirrored), EmbedLargest(small)];
            generated[name] = EmbedLargest(gen);
        }

        // Own identity vs every other identity's real images, through the R-FaceSim routine itself.
        double worstMargin = double.MaxValue;
        foreach (var (name, _, _) in people)
        {
            var own = FaceMetrics.RFaceSim([new GeneratedEmbedding(name, "p", generated[name])], others).Mean;
            var cross = people.Where(p => p.Name != name)
                .Select(p => FaceMetrics.RFaceSim([new GeneratedEmbedding(p.Name, "p", generated[name])], others).Mean)
                .ToList();
            output.WriteLine($"{name}: same {own:0.000}, other identities max {cross.Max():0.000} mean {cross.Average():0.000}");
            worstMargin = Math.Min(worstMargin, own - cross.Max());
            Assert.True(own > cross.Max(), $"{name}: same-identity {own:0.000} not above cross-identity {cross.Max():0.000}");
        }
        output.WriteLine($"smallest margin {worstMargin:0.000}");
        foreach (var p in people) p.Photo.Dispose();
        group.Dispose();
    }
}
