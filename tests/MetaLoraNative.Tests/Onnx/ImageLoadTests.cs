using MetaLoraNative.Onnx.Imaging;

namespace MetaLoraNative.Tests.Onnx;

public class ImageLoadTests
{
    [Fact]
    public void GarbageIsNotAnImage()
    {
        var bytes = new byte[4096];
        new Random(1).NextBytes(bytes);
        var e = Assert.Throws<ImageLoadException>(() => ImageIO.Decode(bytes, "noise.bin"));
        Assert.Contains("noise.bin", e.Message);
    }

    [Fact]
    public void EmptyAndMissingFiles()
    {
        string dir = TestAssets.TempDir("img");
        string empty = Path.Combine(dir, "empty.png");
        File.WriteAllBytes(empty, []);
        Assert.Contains("empty", Assert.Throws<ImageLoadException>(() => ImageIO.LoadRgb(empty)).Message);
        Assert.Contains("not found", Assert.Throws<ImageLoadException>(() => ImageIO.LoadRgb(Path.Combine(dir, "nope.jpg"))).Message);
    }

    [Fact]
    public void EnormousDeclaredSizeIsRefusedBeforeDecoding()
    {
        // A 54-byte BMP header claiming 60000 x 60000 pixels (10.8 GB as RGB) followed by nothing.
        var bmp = new byte[64];
        bmp[0] = (byte)'B'; bmp[1] = (byte)'M';
        BitConverter.TryWriteBytes(bmp.AsSpan(2), 64);          // file size
        BitConverter.TryWriteBytes(bmp.AsSpan(10), 54);         // pixel data offset
        BitConverter.TryWriteBytes(bmp.AsSpan(14), 40);         // BITMAPINFOHEADER
        BitConverter.TryWriteBytes(bmp.AsSpan(18), 60000);      // width
        BitConverter.TryWriteBytes(bmp.AsSpan(22), 60000);      // height
        BitConverter.TryWriteBytes(bmp.AsSpan(26), (short)1);   // planes
        BitConverter.TryWriteBytes(bmp.AsSpan(28), (short)24);  // bits per pixel
        var e = Assert.Throws<ImageLoadException>(() => ImageIO.Decode(bmp, "bomb.bmp"));
        Assert.Contains("bomb.bmp", e.Message);
        Assert.Contains("60000x60000", e.Message);
    }

    [SkippableFact]
    public void TruncatedPhotoIsAClearError()
    {
        TestAssets.Require(TestAssets.Astronaut);
        var bytes = File.ReadAllBytes(TestAssets.Astronaut);
        var cut = bytes[..(bytes.Length / 3)];
        var e = Assert.Throws<ImageLoadException>(() => ImageIO.Decode(cut, "astronaut-cut.png"));
        Assert.Contains("astronaut-cut.png", e.Message);
    }

    [SkippableFact]
    public void CorruptedHeaderIsAClearError()
    {
        TestAssets.Require(TestAssets.GraceHopper);
        var bytes = File.ReadAllBytes(TestAssets.GraceHopper);
        // Keep the JPEG signature, scramble the segment headers after it.
        for (int i = 2; i < 600; i++) bytes[i] = (byte)(bytes[i] * 31 + 7);
        var e = Assert.Throws<ImageLoadException>(() => ImageIO.Decode(bytes, "hopper-bad.jpg"));
        Assert.Contains("hopper-bad.jpg", e.Message);
    }
}
