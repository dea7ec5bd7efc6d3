using MetaLoraNative.Onnx.Faces;
using MetaLoraNative.Onnx.Imaging;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Onnx;

public class BlazeFaceTests(ITestOutputHelper output)
{
    internal static readonly Lazy<BlazeFaceDetector?> Shared = new(() =>
        File.Exists(TestAssets.BlazeFace) ? new BlazeFaceDetector(TestAssets.BlazeFace) : null);

    internal static BlazeFaceDetector Require()
    {
        TestAssets.Require(TestAssets.BlazeFace);
        return Shared.Value!;
    }

    // Face regions read off the photos by eye (forehead hairline to chin, ear to ear), in pixels.
    [SkippableTheory]
    [InlineData("astronaut.png", 225, 128, 80, 140)]    // 512x512; face spans about x 175-275, y 75-185
    [InlineData("grace_hopper.jpg", 267, 236, 150, 240)] // 512x600; face spans about x 170-365, y 140-330 (below the cap)
    public void FindsExactlyOneFaceOnThePortrait(string file, float cx, float cy, float minSide, float maxSide)
    {
        var det = Require();
        string path = Path.Combine(TestAssets.Root, "photos", file);
        TestAssets.Require(path);
        using var img = ImageIO.LoadRgb(path);
        var faces = det.Detect(img);
        foreach (var f in faces) output.WriteLine($"{file}: box {f.Box} score {f.Score:0.00}");
        var face = Assert.Single(faces);
        Assert.InRange(face.Center.X, cx - 25, cx + 25);
        Assert.InRange(face.Center.Y, cy - 25, cy + 25);
        Assert.InRange(face.Box.Width, minSide, maxSide);
        Assert.InRange(face.Box.Height, minSide, maxSide);
        // Eyes lie inside the box, in the upper half, image-left eye first.
        Assert.True(face.Landmarks[0].X < face.Landmarks[1].X);
        foreach (var eye in face.Landmarks[..2])
        {
            Assert.InRange(eye.X, face.Box.Left, face.Box.Right);
            Assert.InRange(eye.Y, face.Box.Top, face.Box.Top + face.Box.Height / 2);
        }
    }

    [SkippableFact]
    public void FindsSeveralFacesInGroupPhotos()
    {
        var det = Require();
        // sample2.jpg: three women on a sofa, the middle one looking down with her face half hidden by hair.
        TestAssets.Require(TestAssets.Sample(2), TestAssets.Sample(6));
        using (var img = ImageIO.LoadRgb(TestAssets.Sample(2))) Assert.InRange(det.Detect(img).Count, 2, 3);
        using (var img = ImageIO.LoadRgb(TestAssets.Sample(6))) Assert.InRange(det.Detect(img).Count, 3, 5);
    }

    [Fact]
    public void WeightedNmsMergesOverlapsAndKeepsSeparateFaces()
    {
        var pts = new SixLabors.ImageSharp.PointF[6];
        var a = new FaceDetection(new(0, 0, 10, 10), 0.9f, pts);
        var b = new FaceDetection(new(2, 0, 10, 10), 0.6f, pts);       // IoU 0.67 with a: merged
        var c = new FaceDetection(new(50, 50, 10, 10), 0.8f, pts);     // separate
        var merged = BlazeFaceDetector.WeightedNms([a, b, c], 0.3f);
        Assert.Equal(2, merged.Count);
        Assert.Equal(0.9f, merged[0].Score);
        Assert.Equal(0.6f / 1.5f * 2f, merged[0].Box.X, 4);     // score-weighted left edge
        Assert.Equal(2, BlazeFaceDetector.RegularNms([a, b, c], 0.3f).Count);
        Assert.Equal(3, BlazeFaceDetector.RegularNms([a, b, c], 0.9f).Count);
    }
}
