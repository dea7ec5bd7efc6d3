using MetaLoraNative.Onnx.Augment;
using MetaLoraNative.Onnx.Faces;
using MetaLoraNative.Onnx.Imaging;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Onnx;

public class AugmentTests(ITestOutputHelper output)
{
    // The expected crop sizes, written independently of FaceAugmenter.PlanCrops: a crop of aspect a:b is k units of
    // (a, b) pixels; the paper asks for k = f_long * m / min(a, b); the image holds at most k = min(W / a, H / b).
    static List<(int W, int H)> ExpectedSizes(int width, int height, float fLong)
    {
        var sizes = new List<(int, int)>();
        foreach (var (a, b) in new[] { (16, 9), (4, 3), (1, 1), (3, 4), (9, 16) })
            foreach (var m in new[] { 1.5, 2, 2.5, 3.5, 4.5 })
            {
                double k = Math.Min(fLong * m / Math.Min(a, b), Math.Min((double)width / a, (double)height / b));
                var size = ((int)Math.Round(a * k), (int)Math.Round(b * k));
                if (!sizes.Contains(size)) sizes.Add(size);
            }
        return sizes;
    }

    [Fact]
    public void PlanMatchesPaperOnSyntheticGeometry()
    {
        // 1000x800 image, 100x120 face at the centre: f_long = 120.
        var plan = FaceAugmenter.PlanCrops(1000, 800, new RectangleF(450, 340, 100, 120));
        var expected = ExpectedSizes(1000, 800, 120);
        Assert.Equal(expected, plan.Select(p => (p.Crop.Width, p.Crop.Height)).ToList());
        // 1:1 at 1.5 is 180x180 centred on the face centre (500, 400).
        var square = plan.Single(p => p.Aspect.Name == "1:1" && p.Multiplier == 1.5);
        Assert.Equal(new Rectangle(410, 310, 180, 180), square.Crop);
        foreach (var p in plan)
        {
            Assert.True(p.Crop.Left >= 0 && p.Crop.Top >= 0 && p.Crop.Right <= 1000 && p.Crop.Bottom <= 800);
            Assert.True(p.Crop.Contains(500, 400));
        }
    }

    [Fact]
    public void FaceNearTheEdgeShiftsTheCropInside()
    {
        var plan = FaceAugmenter.PlanCrops(1000, 800, new RectangleF(0, 0, 100, 100));
        var square = plan.Single(p => p.Aspect.Name == "1:1" && p.Multiplier == 2);
        Assert.Equal(new Rectangle(0, 0, 200, 200), square.Crop);
    }

    [Theory]
    [InlineData(1.0, 512, 512, 512)]
    [InlineData(16.0 / 9, 512, 688, 384)]
    [InlineData(9.0 / 16, 1024, 768, 1360)]
    [InlineData(4.0 / 3, 1024, 1184, 880)]
    public void BucketsAreMultiplesOf16NearTheArea(double aspect, int resolution, int w, int h)
    {
        Assert.Equal((w, h), FaceAugmenter.Bucket(aspect, resolution));
        Assert.InRange((double)w * h / (resolution * resolution), 0.95, 1.05);
    }

    [SkippableTheory]
    [InlineData("astronaut.png")]
    [InlineData("grace_hopper.jpg")]
    public void RealPhotoYieldsTheExpectedCropSet(string file)
    {
        var det = BlazeFaceTests.Require();
        string path = Path.Combine(TestAssets.Root, "photos", file);
        TestAssets.Require(path);
        using var img = ImageIO.LoadRgb(path);
        var face = Assert.Single(det.Detect(img));
        var crops = FaceAugmenter.Augment(img, det, new AugmentOptions { Resolution = 512, Seed = 7 }, path);
        try
        {
            var expected = ExpectedSizes(img.Width, img.Height, face.LongSide);
            output.WriteLine($"{file}: f_long {face.LongSide:0.0}, {crops.Count} crops: " +
                string.Join(" ", crops.Select(c => $"{c.Aspect.Name}x{c.Multiplier}={c.Crop.Width}x{c.Crop.Height}{(c.Flipped ? "F" : "")}")));
            Assert.Equal(expected, crops.Select(c => (c.Crop.Width, c.Crop.Height)).ToList());
            Assert.InRange(crops.Count, 10, 25);   // astronaut 23 (small face), Grace Hopper 12 (face fills the frame)
            Assert.Contains(crops, c => c.Flipped);
            Assert.Contains(crops, c => !c.Flipped);
            foreach (var c in crops)
            {
                Assert.Equal(0, c.Image.Width % 16);
                Assert.Equal(0, c.Image.Height % 16);
                Assert.InRange((double)c.Image.Width * c.Image.Height / (512 * 512), 0.9, 1.1);
                Assert.True(c.Crop.Contains((int)face.Center.X, (int)face.Center.Y));
            }
            // Same seed, same flips; the pixel content of an unflipped crop is the source region.
            var again = FaceAugmenter.Augment(img, face.Box, new AugmentOptions { Resolution = 512, Seed = 7 });
            Assert.Equal(crops.Select(c => c.Flipped), again.Select(c => c.Flipped));
            again.ForEach(c => c.Dispose());
        }
        finally
        {
            crops.ForEach(c => c.Dispose());
        }
    }

    [SkippableFact]
    public void MaxLimitsTheCount()
    {
        var det = BlazeFaceTests.Require();
        TestAssets.Require(TestAssets.Astronaut);
        using var img = ImageIO.LoadRgb(TestAssets.Astronaut);
        var crops = FaceAugmenter.Augment(img, det, new AugmentOptions { Resolution = 256, MaxImages = 3 }, "astronaut");
        Assert.Equal(3, crops.Count);
        crops.ForEach(c => c.Dispose());
    }

    [SkippableFact]
    public void NoFaceIsAClearErrorNamingTheFile()
    {
        var det = BlazeFaceTests.Require();
        using var blank = new Image<Rgb24>(300, 200, new Rgb24(90, 120, 200));
        var e = Assert.Throws<NoFaceException>(() => FaceAugmenter.Augment(blank, det, new AugmentOptions(), "/photos/empty-sky.png"));
        Assert.Contains("/photos/empty-sky.png", e.Message);
    }

    [SkippableFact]
    public void SeveralFacesTakeTheLargestAndWarn()
    {
        var det = BlazeFaceTests.Require();
        TestAssets.Require(TestAssets.Sample(1));
        using var img = ImageIO.LoadRgb(TestAssets.Sample(1));
        var warnings = new List<string>();
        var faces = det.Detect(img);
        var crops = FaceAugmenter.Augment(img, det, new AugmentOptions { Resolution = 256, MaxImages = 2 }, "sample1.jpg", warnings.Add);
        var largest = faces.MaxBy(f => f.Area)!;
        Assert.True(crops[0].Crop.Contains((int)largest.Center.X, (int)largest.Center.Y));
        var w = Assert.Single(warnings);
        Assert.Contains("sample1.jpg", w);
        Assert.Contains($"{faces.Count} faces", w);
        crops.ForEach(c => c.Dispose());
    }
}
