using MetaLoraNative.Onnx.Export;
using MetaLoraNative.Onnx.Imaging;
using Microsoft.ML.OnnxRuntime;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace MetaLoraNative.Tests.Onnx;

public class GeometryTests
{
    [Fact]
    public void SimilarityFitRecoversAKnownTransform()
    {
        // from = R(30°) * 2 * to + (10, -5): the fitted inverse map must send each template point back onto its source.
        double a = Math.PI / 6;
        PointF[] to = [new(38, 52), new(74, 51), new(56, 72), new(56, 92)];
        var from = to.Select(p => new PointF(
            (float)(2 * (Math.Cos(a) * p.X - Math.Sin(a) * p.Y) + 10),
            (float)(2 * (Math.Sin(a) * p.X + Math.Cos(a) * p.Y) - 5))).ToArray();
        var map = Affine.SimilarityInverse(from, to);
        for (int i = 0; i < to.Length; i++)
        {
            var q = map.Apply(to[i]);
            Assert.Equal(from[i].X, q.X, 2);
            Assert.Equal(from[i].Y, q.Y, 2);
        }
    }

    [Fact]
    public void WarpOfAnIdentityRectCopiesPixels()
    {
        using var img = new Image<Rgb24>(4, 3);
        for (int y = 0; y < 3; y++)
            for (int x = 0; x < 4; x++)
                img[x, y] = new Rgb24((byte)(10 * x), (byte)(50 * y), 7);
        var chw = Warp.ToChw(img, Affine.FromRect(new RectangleF(0, 0, 4, 3), 4, 3), 4, 3, mean: 0, std: 1);
        Assert.Equal(20f, chw[0 * 12 + 1 * 4 + 2], 3);   // R at (2, 1)
        Assert.Equal(50f, chw[1 * 12 + 1 * 4 + 2], 3);   // G at (2, 1)
        Assert.Equal(7f, chw[2 * 12 + 2 * 4 + 3], 3);    // B at (3, 2)
        // BGR order swaps the outer planes.
        var bgr = Warp.ToChw(img, Affine.FromRect(new RectangleF(0, 0, 4, 3), 4, 3), 4, 3, 0, 1, bgr: true);
        Assert.Equal(7f, bgr[1 * 4 + 2], 3);
    }

    [SkippableFact]
    public void HeaderReaderAgreesWithOnnxRuntime()
    {
        TestAssets.Require(TestAssets.BlazeFace, TestAssets.FacePluginEmbedder);
        foreach (var path in new[] { TestAssets.BlazeFace, TestAssets.FacePluginEmbedder })
        {
            var (inputs, outputs) = OnnxHeaderReader.Read(path);
            using var s = new InferenceSession(path);
            Assert.Equal(s.InputMetadata.Keys, inputs.Select(i => i.Name));
            Assert.Equal(s.OutputMetadata.Keys.Order(), outputs.Select(o => o.Name).Order());
            foreach (var o in outputs) Assert.Equal(s.OutputMetadata[o.Name].Dimensions, o.Dims);
            foreach (var i in inputs) Assert.Equal(s.InputMetadata[i.Name].ElementDataType, i.ElementType);
        }
    }
}
