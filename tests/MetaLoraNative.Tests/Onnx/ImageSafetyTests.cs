// Hostile and damaged photos: metadata bombs, EXIF orientation, truncated files. Memory is measured two ways, both
// as a rise over the start of the load: managed bytes allocated (GC.GetTotalAllocatedBytes(precise), all threads),
// and the process's resident set, sampled every millisecond (ImageSharp keeps pixel buffers in unmanaged pools, which
// only the resident set sees). The class runs alone so that other tests do not move the resident set.
using System.Buffers.Binary;
using System.Diagnostics;
using System.IO.Compression;
using System.Text;
using MetaLoraNative.Onnx.Imaging;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.Formats.Jpeg;
using SixLabors.ImageSharp.Formats.Png;
using SixLabors.ImageSharp.Metadata.Profiles.Exif;
using SixLabors.ImageSharp.PixelFormats;
using SixLabors.ImageSharp.Processing;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Onnx;

[CollectionDefinition(nameof(ImageSafetyTests), DisableParallelization = true)]
public sealed class ImageSafetyCollection;

[Collection(nameof(ImageSafetyTests))]
public class ImageSafetyTests(ITestOutputHelper output)
{
    const long MemoryLimit = 300L << 20;
    static readonly TimeSpan TimeLimit = TimeSpan.FromSeconds(5);

    // ---- metadata bombs ----

    [Fact]
    public void ZtxtBombIsNeverInflated()
    {
        var (photo, name) = File.Exists(TestAssets.Astronaut)
            ? (File.ReadAllBytes(TestAssets.Astronaut), "astronaut.png")
            : (EncodeGradient(320, 240, new PngEncoder()), "gradient.png");

        // A zTXt chunk of 1 GiB of zeros, compressed to about 1 MiB, right after IHDR; an iTXt bomb and a large iCCP too.
        const long inflated = 1L << 30;
        byte[] zlib = ZlibOfZeros(inflated);
        Assert.True(zlib.Length < 4 << 20, $"the bomb is {zlib.Length} bytes");
        Assert.Equal(inflated, InflatedLength(zlib));
        byte[] ztxt = [.. "Comment"u8, 0, 0, .. zlib];
        byte[] itxt = [.. "Description"u8, 0, 1, 0, 0, 0, .. zlib];
        byte[] iccp = [.. "icc"u8, 0, 0, .. zlib];
        byte[] bomb = InsertPngChunks(photo, ("zTXt", ztxt), ("iTXt", itxt), ("iCCP", iccp));
        string path = Path.Combine(TestAssets.TempDir("bomb"), name);
        File.WriteAllBytes(path, bomb);

        AssertLoadsCheaply(path, photo);
    }

    [Fact]
    public void ThreeHundredMibOfJpegCommentsAndProfilesAreSkipped()
    {
        var (photo, name) = File.Exists(TestAssets.Sample(1))
            ? (File.ReadAllBytes(TestAssets.Sample(1)), "sample1.jpg")
            : (EncodeGradient(320, 240, new JpegEncoder { Quality = 90 }), "gradient.jpg");

        // 300 MiB of 64 KiB segments after SOI: COM comments, APP2 ICC chunks and APP1 XMP blocks (ImageSharp joins the
        // profile blocks it reads, copying the whole so far each time).
        string path = Path.Combine(TestAssets.TempDir("comment"), name);
        using (var f = File.Create(path))
        {
            f.Write(photo.AsSpan(0, 2));
            var payload = new byte[65533];
            for (int i = 0; i < payload.Length; i++) payload[i] = (byte)('a' + i % 26);
            ReadOnlySpan<byte> icc = "ICC_PROFILE\0"u8, xmp = "http://ns.adobe.com/xap/1.0/\0"u8;
            for (int i = 0; i < 300 * 16; i++)
            {
                int kind = i % 3;
                Span<byte> head = [0xFF, kind == 0 ? (byte)0xFE : kind == 1 ? (byte)0xE2 : (byte)0xE1, 0xFF, 0xFF];
                f.Write(head);
                if (kind == 1) { icc.CopyTo(payload); payload[12] = (byte)(1 + i / 3 % 255); payload[13] = 255; }
                if (kind == 2) xmp.CopyTo(payload);
                f.Write(payload);
            }
            f.Write(photo.AsSpan(2));
        }
        try
        {
            Assert.True(new FileInfo(path).Length > 300L << 20);
            AssertLoadsCheaply(path, photo);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void MetadataIsStrippedSoCropsCarryNone()
    {
        // A photo with EXIF, XMP and text: none of it survives the load, so a crop (which clones metadata) has none.
        using var source = Gradient(64, 48);
        source.Metadata.ExifProfile = new ExifProfile();
        source.Metadata.ExifProfile.SetValue(ExifTag.Software, new string('x', 60000));
        source.Metadata.XmpProfile = new SixLabors.ImageSharp.Metadata.Profiles.Xmp.XmpProfile(
            Encoding.UTF8.GetBytes("<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"></x:xmpmeta>"));
        source.Metadata.GetPngMetadata().TextData.Add(new PngTextData("Comment", new string('y', 100000), "", ""));
        foreach (var (bytes, label) in new[]
                 {
                     (Encode(source, new PngEncoder()), "meta.png"),
                     (Encode(source, new JpegEncoder()), "meta.jpg"),
                 })
        {
            using (var direct = Image.Load<Rgb24>(bytes))
                Assert.NotNull(direct.Metadata.ExifProfile);     // the file really carries metadata
            using var loaded = ImageIO.Decode(bytes, label);
            AssertNoMetadata(loaded);
            using var crop = loaded.Clone(c => c.Crop(new Rectangle(8, 8, 32, 24)));
            AssertNoMetadata(crop);
        }
    }

    // ---- EXIF orientation ----

    [Theory]
    [InlineData(1)] [InlineData(2)] [InlineData(3)] [InlineData(4)] [InlineData(5)] [InlineData(6)] [InlineData(7)] [InlineData(8)]
    public void ExifOrientationIsApplied(int orientation)
    {
        // PNG: an asymmetric per-pixel pattern, stored turned as `orientation` says; the load must give back the pattern.
        using var upright = Gradient(48, 32);
        using var storedPng = Stored(upright, orientation);
        byte[] png = WithOrientation(storedPng, orientation, new PngEncoder());
        using (var loaded = ImageIO.Decode(png, $"turned{orientation}.png"))
        {
            AssertSamePixels(upright, loaded);
            AssertNoMetadata(loaded);
        }

        // JPEG: cells of 16 x 16 (whole MCUs either way up). The load must equal ImageSharp's own decode of the stored
        // file turned by the tag's definition, and each cell must keep its colour.
        using var cells = Cells(48, 32);
        using var storedJpeg = Stored(cells, orientation);
        byte[] jpeg = WithOrientation(storedJpeg, orientation, new JpegEncoder { Quality = 100 });
        using var decoded = Image.Load<Rgb24>(jpeg);
        using var expected = Upright(decoded, orientation);
        using var loadedJpeg = ImageIO.Decode(jpeg, $"turned{orientation}.jpg");
        AssertSamePixels(expected, loadedJpeg);
        for (int y = 8; y < 32; y += 16)
            for (int x = 8; x < 48; x += 16)
            {
                Rgb24 want = cells[x, y], got = loadedJpeg[x, y];
                Assert.True(Math.Abs(want.R - got.R) <= 8 && Math.Abs(want.G - got.G) <= 8 && Math.Abs(want.B - got.B) <= 8,
                    $"orientation {orientation}: cell at ({x}, {y}) is {got}, want {want}");
            }
    }

    // ---- truncation ----

    [Fact]
    public void TruncatedPngsAreErrors()
    {
        var cases = new List<(byte[] Bytes, string Name)>
        {
            (EncodeGradient(200, 150, new PngEncoder()), "plain.png"),
            (EncodeGradient(200, 150, new PngEncoder { InterlaceMethod = PngInterlaceMode.Adam7 }), "interlaced.png"),
            (EncodeGradient(200, 150, new PngEncoder { ColorType = PngColorType.Palette }), "palette.png"),
        };
        if (File.Exists(TestAssets.Astronaut)) cases.Add((File.ReadAllBytes(TestAssets.Astronaut), "astronaut.png"));
        byte[] iend = [0, 0, 0, 0, .. "IEND"u8, 0xAE, 0x42, 0x60, 0x82];
        foreach (var (bytes, name) in cases)
        {
            using (var whole = ImageIO.Decode(bytes, name)) Assert.True(whole.Width > 0);
            var chunks = PngChunkOffsets(bytes);
            int lastIdatEnd = chunks.Last(c => c.Type == "IDAT").End, firstIdat = chunks.First(c => c.Type == "IDAT").Start;
            var cuts = new List<int> { bytes.Length / 3, bytes.Length / 2, lastIdatEnd - 100, lastIdatEnd - 1 };
            // Whole chunks dropped from the end of the image data (the zlib stream then ends early), when there are several.
            var idatEnds = chunks.Where(c => c.Type == "IDAT").Select(c => c.End).ToList();
            if (idatEnds.Count > 1) cuts.Add(idatEnds[idatEnds.Count / 2]);
            foreach (int cut in cuts.Where(c => c > firstIdat))
            {
                AssertBroken(bytes[..cut], $"{name}-cut{cut}");
                AssertBroken([.. bytes.AsSpan(0, cut), .. iend], $"{name}-cut{cut}+IEND");
            }
        }
    }

    [Fact]
    public void TruncatedJpegsAreErrors()
    {
        var cases = new List<(byte[] Bytes, string Name)>
        {
            (EncodeGradient(200, 150, new JpegEncoder { Quality = 90 }), "baseline420.jpg"),
            (EncodeGradient(200, 150, new JpegEncoder { Quality = 90, ColorType = JpegColorType.YCbCrRatio444 }), "baseline444.jpg"),
            (Convert.FromBase64String(Progressive420), "progressive420.jpg"),
            (Convert.FromBase64String(Progressive444Restart), "progressive444-restart.jpg"),
            (Convert.FromBase64String(ProgressiveGray), "progressive-gray.jpg"),
        };
        foreach (string p in new[] { TestAssets.GraceHopper }.Concat(Enumerable.Range(1, 6).Select(TestAssets.Sample)).Where(File.Exists))
            cases.Add((File.ReadAllBytes(p), Path.GetFileName(p)));
        foreach (var (bytes, name) in cases)
        {
            using (var whole = ImageIO.Decode(bytes, name)) Assert.True(whole.Width > 0);
            var sos = JpegMarkerOffsets(bytes, 0xDA);
            int dataStart = sos[0] + 14;
            var cuts = new List<int> { dataStart + (bytes.Length - dataStart) / 3, dataStart + (bytes.Length - dataStart) / 2, bytes.Length - 40, bytes.Length - 3 };
            cuts.AddRange(sos.Skip(1));   // progressive: cut just before a later scan, so every remaining scan is whole
            foreach (int cut in cuts)
            {
                AssertBroken(bytes[..cut], $"{name}-cut{cut}");
                AssertBroken([.. bytes.AsSpan(0, cut), 0xFF, 0xD9], $"{name}-cut{cut}+EOI");
            }
        }
    }

    [Fact]
    public void OverfullHuffmanTableIsCorrupt()
    {
        // Three codes of length 1 (only two exist), the segment's symbol count kept: refused as corrupt, not a crash.
        byte[] jpeg = EncodeGradient(32, 32, new JpegEncoder());
        int counts = JpegMarkerOffsets(jpeg, 0xC4)[0] + 5;
        int j = Enumerable.Range(1, 15).First(i => jpeg[counts + i] >= 3);
        jpeg[counts + j] -= 3;
        jpeg[counts] += 3;
        var e = Assert.Throws<ImageLoadException>(() => ImageIO.Decode(jpeg, "overfull.jpg"));
        Assert.Contains("overfull.jpg", e.Message);
        Assert.Contains("corrupt", e.Message);
    }

    // ---- unchanged pixels ----

    [Fact]
    public void NormalImagesLoadWithTheSamePixelsAsImageSharp()
    {
        var cases = new List<(byte[] Bytes, string Name)>
        {
            (EncodeGradient(123, 77, new PngEncoder()), "rgb.png"),
            (EncodeGradient(123, 77, new PngEncoder { InterlaceMethod = PngInterlaceMode.Adam7 }), "interlaced.png"),
            (EncodeGradient(123, 77, new PngEncoder { ColorType = PngColorType.Palette, BitDepth = PngBitDepth.Bit4 }), "palette4.png"),
            (EncodeGradient(123, 77, new PngEncoder { ColorType = PngColorType.RgbWithAlpha, BitDepth = PngBitDepth.Bit16 }), "rgba16.png"),
            (EncodeGradient(123, 77, new PngEncoder { ColorType = PngColorType.Grayscale, BitDepth = PngBitDepth.Bit1 }), "gray1.png"),
            (EncodeGradient(123, 77, new JpegEncoder { Quality = 75 }), "baseline.jpg"),
            (EncodeGradient(123, 77, new JpegEncoder { ColorType = JpegColorType.Luminance }), "gray.jpg"),
            (Convert.FromBase64String(Progressive420), "progressive420.jpg"),
            (Convert.FromBase64String(Progressive444Restart), "progressive444-restart.jpg"),
            (Convert.FromBase64String(ProgressiveGray), "progressive-gray.jpg"),
        };
        foreach (string p in new[] { TestAssets.Astronaut, TestAssets.GraceHopper }.Concat(Enumerable.Range(1, 6).Select(TestAssets.Sample)).Where(File.Exists))
            cases.Add((File.ReadAllBytes(p), Path.GetFileName(p)));
        foreach (var (bytes, name) in cases)
        {
            using var direct = Image.Load<Rgb24>(bytes);
            int orientation = direct.Metadata.ExifProfile?.GetValue(ExifTag.Orientation)?.Value ?? 1;
            using var expected = Upright(direct, orientation is >= 1 and <= 8 ? orientation : 1);
            using var loaded = ImageIO.Decode(bytes, name);
            AssertSamePixels(expected, loaded);
        }
    }

    // ---- declared sizes ----

    [Fact]
    public void OversizedPngAndJpegHeadersAreRefusedBeforeDecoding()
    {
        // IHDR claiming 20000 x 20000 (1.2 GB as RGB) in a 60-byte file; a JPEG frame header claiming 20000 x 20000.
        byte[] ihdr = new byte[13];
        BinaryPrimitives.WriteUInt32BigEndian(ihdr, 20000);
        BinaryPrimitives.WriteUInt32BigEndian(ihdr.AsSpan(4), 20000);
        ihdr[8] = 8; ihdr[9] = 2;
        byte[] png = [.. PngSignature, .. PngChunk("IHDR", ihdr), .. PngChunk("IDAT", [0x78, 0x9C, 0x03, 0, 0, 0, 0, 1]), .. PngChunk("IEND", [])];
        byte[] jpeg = EncodeGradient(16, 16, new JpegEncoder());
        int sof = JpegMarkerOffsets(jpeg, 0xC0)[0];
        BinaryPrimitives.WriteUInt16BigEndian(jpeg.AsSpan(sof + 5), 20000);
        BinaryPrimitives.WriteUInt16BigEndian(jpeg.AsSpan(sof + 7), 20000);
        foreach (var (bytes, label) in new[] { (png, "huge.png"), (jpeg, "huge.jpg") })
        {
            ImageLoadException? e = null;
            var cost = Measure(() => e = Assert.Throws<ImageLoadException>(() => ImageIO.Decode(bytes, label)));
            Assert.Contains(label, e!.Message);
            Assert.Contains("20000x20000", e.Message);
            Assert.True(cost.Managed < 16 << 20, $"{label}: {cost.Managed} bytes allocated before refusing");
        }
    }

    // ---- helpers: checks ----

    static void AssertBroken(byte[] bytes, string label)
    {
        var e = Assert.Throws<ImageLoadException>(() => { using var _ = ImageIO.Decode(bytes, label); });
        Assert.Contains(label, e.Message);
        Assert.True(e.Message.Contains("truncated") || e.Message.Contains("corrupt"), e.Message);
    }

    /// <summary>The file at <paramref name="path"/> loads within the memory and time limits, with the pixels of <paramref name="original"/> and no metadata.</summary>
    void AssertLoadsCheaply(string path, byte[] original)
    {
        Image<Rgb24>? loaded = null;
        var cost = Measure(() => loaded = ImageIO.LoadRgb(path));
        using (loaded)
        {
            output.WriteLine($"{path}: {cost.Managed >> 20} MiB managed, resident +{cost.Resident >> 20} MiB, {cost.Time.TotalMilliseconds:F0} ms");
            Assert.True(cost.Managed < MemoryLimit, $"{path}: {cost.Managed >> 20} MiB managed allocations");
            Assert.True(cost.Resident < MemoryLimit, $"{path}: resident set rose by {cost.Resident >> 20} MiB");
            Assert.True(cost.Time < TimeLimit, $"{path}: took {cost.Time.TotalSeconds:F1} s");
            using var direct = Image.Load<Rgb24>(original);
            AssertSamePixels(direct, loaded!);
            AssertNoMetadata(loaded!);
        }
    }

    static void AssertNoMetadata(Image image)
    {
        Assert.Null(image.Metadata.ExifProfile);
        Assert.Null(image.Metadata.IccProfile);
        Assert.Null(image.Metadata.XmpProfile);
        Assert.Null(image.Metadata.IptcProfile);
        Assert.Empty(image.Metadata.GetPngMetadata().TextData);
    }

    static void AssertSamePixels(Image<Rgb24> expected, Image<Rgb24> actual)
    {
        Assert.Equal((expected.Width, expected.Height), (actual.Width, actual.Height));
        var want = new Rgb24[expected.Width * expected.Height];
        var got = new Rgb24[want.Length];
        expected.CopyPixelDataTo(want);
        actual.CopyPixelDataTo(got);
        int i = want.AsSpan().CommonPrefixLength(got);
        if (i < want.Length) Assert.Fail($"pixel ({i % expected.Width}, {i / expected.Width}) is {got[i]}, want {want[i]}");
    }

    /// <summary>Managed bytes allocated, rise of the sampled resident set, and time, for one call.</summary>
    static (long Managed, long Resident, TimeSpan Time) Measure(Action action)
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        long start = Environment.WorkingSet, peak = start;
        using var stop = new ManualResetEventSlim();
        var sampler = new Thread(() =>
        {
            while (!stop.IsSet)
            {
                peak = Math.Max(peak, Environment.WorkingSet);
                stop.Wait(1);
            }
        }) { IsBackground = true };
        sampler.Start();
        long managed = GC.GetTotalAllocatedBytes(precise: true);
        var clock = Stopwatch.StartNew();
        try
        {
            action();
        }
        finally
        {
            clock.Stop();
            stop.Set();
            sampler.Join();
        }
        managed = GC.GetTotalAllocatedBytes(precise: true) - managed;
        return (managed, Math.Max(peak, Environment.WorkingSet) - start, clock.Elapsed);
    }

    // ---- helpers: images ----

    /// <summary>Asymmetric under every flip and turn: each pixel's colour is a different function of x and y.</summary>
    static Image<Rgb24> Gradient(int w, int h)
    {
        var img = new Image<Rgb24>(w, h);
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                img[x, y] = new Rgb24((byte)(x * 255 / (w - 1)), (byte)(y * 255 / (h - 1)), (byte)((x * 7 + y * 13) % 256));
        return img;
    }

    /// <summary>Solid 16 x 16 cells, each its own colour.</summary>
    static Image<Rgb24> Cells(int w, int h)
    {
        var img = new Image<Rgb24>(w, h);
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
            {
                int cx = x / 16, cy = y / 16;
                img[x, y] = new Rgb24((byte)(40 + 70 * cx), (byte)(50 + 150 * cy), (byte)(220 - 60 * cx - 50 * cy));
            }
        return img;
    }

    /// <summary>
    /// The stored pixels of an upright W x H picture under an EXIF orientation, from the tag's definition (where row 0
    /// and column 0 of the stored image face): displayed (x, y) is stored
    /// 1 (x, y), 2 (W-1-x, y), 3 (W-1-x, H-1-y), 4 (x, H-1-y), 5 (y, x), 6 (y, W-1-x), 7 (H-1-y, W-1-x), 8 (H-1-y, x).
    /// </summary>
    static (int X, int Y) StoredAt(int x, int y, int w, int h, int orientation) => orientation switch
    {
        1 => (x, y), 2 => (w - 1 - x, y), 3 => (w - 1 - x, h - 1 - y), 4 => (x, h - 1 - y),
        5 => (y, x), 6 => (y, w - 1 - x), 7 => (h - 1 - y, w - 1 - x), 8 => (h - 1 - y, x),
        _ => throw new ArgumentOutOfRangeException(nameof(orientation)),
    };

    static Image<Rgb24> Stored(Image<Rgb24> upright, int orientation)
    {
        int w = upright.Width, h = upright.Height;
        var stored = orientation >= 5 ? new Image<Rgb24>(h, w) : new Image<Rgb24>(w, h);
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
            {
                var (sx, sy) = StoredAt(x, y, w, h, orientation);
                stored[sx, sy] = upright[x, y];
            }
        return stored;
    }

    static Image<Rgb24> Upright(Image<Rgb24> stored, int orientation)
    {
        int w = orientation >= 5 ? stored.Height : stored.Width, h = orientation >= 5 ? stored.Width : stored.Height;
        var upright = new Image<Rgb24>(w, h);
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
            {
                var (sx, sy) = StoredAt(x, y, w, h, orientation);
                upright[x, y] = stored[sx, sy];
            }
        return upright;
    }

    static byte[] WithOrientation(Image<Rgb24> stored, int orientation, SixLabors.ImageSharp.Formats.IImageEncoder encoder)
    {
        stored.Metadata.ExifProfile = new ExifProfile();
        stored.Metadata.ExifProfile.SetValue(ExifTag.Orientation, (ushort)orientation);
        byte[] bytes = Encode(stored, encoder);
        using var check = Image.Load<Rgb24>(bytes);
        Assert.Equal(orientation, (int)check.Metadata.ExifProfile!.GetValue(ExifTag.Orientation)!.Value);   // the tag is in the file
        return bytes;
    }

    static byte[] EncodeGradient(int w, int h, SixLabors.ImageSharp.Formats.IImageEncoder encoder)
    {
        using var image = Gradient(w, h);
        return Encode(image, encoder);
    }

    static byte[] Encode(Image image, SixLabors.ImageSharp.Formats.IImageEncoder encoder)
    {
        using var ms = new MemoryStream();
        image.Save(ms, encoder);
        return ms.ToArray();
    }

    // ---- helpers: PNG and JPEG bytes ----

    static readonly byte[] PngSignature = [0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A];

    static byte[] PngChunk(string type, ReadOnlySpan<byte> data)
    {
        var chunk = new byte[12 + data.Length];
        BinaryPrimitives.WriteUInt32BigEndian(chunk, (uint)data.Length);
        Encoding.ASCII.GetBytes(type, chunk.AsSpan(4));
        data.CopyTo(chunk.AsSpan(8));
        BinaryPrimitives.WriteUInt32BigEndian(chunk.AsSpan(8 + data.Length), Crc32(chunk.AsSpan(4, 4 + data.Length)));
        return chunk;
    }

    /// <summary>PNG's CRC-32 (reflected 0xEDB88320), bit by bit: the test's own, independent of the loader's table.</summary>
    static uint Crc32(ReadOnlySpan<byte> data)
    {
        uint c = 0xFFFFFFFF;
        foreach (byte b in data)
        {
            c ^= b;
            for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320 & (uint)-(int)(c & 1));
        }
        return ~c;
    }

    static byte[] InsertPngChunks(byte[] png, params (string Type, byte[] Data)[] chunks)
    {
        int afterHeader = 8 + 12 + 13;
        var output = new MemoryStream();
        output.Write(png, 0, afterHeader);
        foreach (var (type, data) in chunks) output.Write(PngChunk(type, data));
        output.Write(png, afterHeader, png.Length - afterHeader);
        return output.ToArray();
    }

    static List<(string Type, int Start, int End)> PngChunkOffsets(byte[] png)
    {
        var list = new List<(string, int, int)>();
        for (int at = 8; at + 12 <= png.Length;)
        {
            int length = (int)BinaryPrimitives.ReadUInt32BigEndian(png.AsSpan(at));
            list.Add((Encoding.ASCII.GetString(png, at + 4, 4), at, at + 12 + length));
            at += 12 + length;
        }
        return list;
    }

    /// <summary>Offsets of every marker <paramref name="code"/> in the segment chain (scan data is passed over).</summary>
    static List<int> JpegMarkerOffsets(byte[] jpeg, byte code)
    {
        var list = new List<int>();
        for (int at = 2; at + 4 <= jpeg.Length;)
        {
            byte m = jpeg[at + 1];
            if (m == 0xD9) break;
            if (m == code) list.Add(at);
            at += 2 + BinaryPrimitives.ReadUInt16BigEndian(jpeg.AsSpan(at + 2));
            if (m == 0xDA)
                while (at + 1 < jpeg.Length && !(jpeg[at] == 0xFF && jpeg[at + 1] != 0 && jpeg[at + 1] is < 0xD0 or > 0xD7)) at++;
        }
        return list;
    }

    static byte[] ZlibOfZeros(long count)
    {
        var output = new MemoryStream();
        using (var z = new ZLibStream(output, CompressionLevel.SmallestSize, leaveOpen: true))
        {
            var zeros = new byte[1 << 20];
            for (long left = count; left > 0; left -= zeros.Length) z.Write(zeros, 0, (int)Math.Min(left, zeros.Length));
        }
        return output.ToArray();
    }

    static long InflatedLength(byte[] zlib)
    {
        using var z = new ZLibStream(new MemoryStream(zlib), CompressionMode.Decompress);
        var buffer = new byte[1 << 20];
        long total = 0;
        for (int n; (n = z.Read(buffer)) > 0;) total += n;
        return total;
    }

    // ---- fixtures: progressive JPEGs of a 40 x 24 pattern (cells and ramps), made with libjpeg-turbo's cjpeg ----
    // (ImageSharp 2.1 writes only baseline). -progressive -quality 90 -sample 2x2; the same with -sample 1x1
    // -restart 1; -grayscale -quality 85. Each has the standard ten- (or six-) scan script down to bit 0.

    const string Progressive420 =
        "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAMCAgMCAgMDAwMEAwMEBQgFBQQEBQoHBwYIDAoMDAsKCwsNDhIQDQ4RDgsLEBYQERMU" +
        "FRUVDA8XGBYUGBIUFRT/2wBDAQMEBAUEBQkFBQkUDQsNFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQU" +
        "FBQUFBQUFBT/wgARCAAYACgDASIAAhEBAxEB/8QAFwABAQEBAAAAAAAAAAAAAAAAAAYHCP/EABgBAQEAAwAAAAAAAAAAAAAAAAcF" +
        "AwQG/9oADAMBAAIQAxAAAAHmek0Ck0p2fUeg0dFa5YbIRByYozk8tHRlBbz0I43/AP/EABgQAAMBAQAAAAAAAAAAAAAAAAACAwYB" +
        "/9oACAEBAAEFAlgLAWByIsBYixFiLEWIu9F3ou9F3ou9P//EAB8RAAEDBQADAAAAAAAAAAAAAAUAAqEhIiMx0REyM//aAAgBAwEB" +
        "PwEea3bKHGt2ymGqesocBG1xS7qHARtcUu6mARvj5S7q/8QAIBEAAQMDBQEAAAAAAAAAAAAAAAECBAWh0RUhIzFDU//aAAgBAgEB" +
        "PwFkoSV2LKG0eDvx3XI2jwfndcmjwV87rk//xAAYEAADAQEAAAAAAAAAAAAAAAAANaPiMP/aAAgBAQAGPwLkvtkX2yL7ZF9si+2T" +
        "/8QAGBABAQADAAAAAAAAAAAAAAAAAGEgITH/2gAIAQEAAT8hkggmgiii46RyIBBGf//aAAwDAQACAAMAAAAQq7/d8B//xAAbEQAC" +
        "AwADAAAAAAAAAAAAAAAAoWGRsRHR8P/aAAgBAwEBPxBVqBBqDxOikONKceEF/8QAGxEAAgMAAwAAAAAAAAAAAAAAAAERIVExcZH/" +
        "2gAIAQIBAT8QUk6wXCRgmeCKCt9PcJyxv//EABwQAAIDAQADAAAAAAAAAAAAAAABESExURCBof/aAAgBAQABPxBMJv4Fciqp7Qlp" +
        "V3gk1rw0iQtDEVoWJpOSljossSX/2Q==";

    const string Progressive444Restart =
        "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAMCAgMCAgMDAwMEAwMEBQgFBQQEBQoHBwYIDAoMDAsKCwsNDhIQDQ4RDgsLEBYQERMU" +
        "FRUVDA8XGBYUGBIUFRT/2wBDAQMEBAUEBQkFBQkUDQsNFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQU" +
        "FBQUFBQUFBT/wgARCAAYACgDAREAAhEBAxEB/8QAFgABAQEAAAAAAAAAAAAAAAAABgcI/8QAGQEAAwEBAQAAAAAAAAAAAAAAAwYH" +
        "BAIF/90ABAAF/9oADAMBAAIQAxAAAAHM4hpNbaj0NqM7dPKFAf/QF+DNEmltR6G1GdtnlCgX/9EXzNEeptRnbkZ22e0OA//EABgQ" +
        "AAMBAQAAAAAAAAAAAAAAAAACAwYB/9oACAEBAAEFAlgLAWByIsD/0FiLEWIsRYn/0V3ou9F3ou9F3p//xAAaEQACAgMAAAAAAAAA" +
        "AAAAAAAAAgMGZKLi/9oACAEDAQE/AUlElElElElP/9BJRJRJBJBJT//RSp5GvQlTyNehKnka9CVPI16EqeRr0f/EACERAAIABgID" +
        "AQAAAAAAAAAAAAABAgMGY6LhESESExYz/9oACAECAQE/AVEuOWOJDiRHGmhtI//Q9nR5jmDmdjmH/9H5zr9sdjpy9jsdO3sdkVOX" +
        "sdjp29js/8QAGBAAAwEBAAAAAAAAAAAAAAAAADWj4iD/2gAIAQEABj8C5//Q5//RX2yL7ZF9si+2RfbJ/8QAGBABAQADAAAAAAAA" +
        "AAAAAAAAAGEgITH/2gAIAQEAAT8hkggmg//Qiii46Rf/0cSAQRn/2gAMAwEAAgADAAAAEMvv/9CDP//Rd1f/xAAXEQEBAQEAAAAA" +
        "AAAAAAAAAABhABAg/9oACAEDAQE/EEmyaa//0MJ97//R5lCEpf/EACARAAEEAgIDAQAAAAAAAAAAAAEAESHwMUFxwVFhobH/2gAI" +
        "AQIBAT8QQEqFpMmQAxdOgZf/0IBKMcpwTb+4yoj3PSJ5t7X/0YcCRGaXzpHJc2v2SnGGz/C7NqvK/8QAHBAAAgMBAAMAAAAAAAAA" +
        "AAAAAAERITFREIGh/9oACAEBAAE/EEwm/gVyKqntCWlXeCT/AP/QrXhpEhaGI//RrQsTSclLHRZYkv/Z";

    const string ProgressiveGray =
        "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAUDBAQEAwUEBAQFBQUGBwwIBwcHBw8LCwkMEQ8SEhEPERETFhwXExQaFRERGCEYGh0d" +
        "Hx8fExciJCIeJBweHx7/wgALCAAYACgBAREA/8QAFgABAQEAAAAAAAAAAAAAAAAABQYH/9oACAEBAAAAAckVVVl6VVVWXIVVVl//" +
        "xAAXEAADAQAAAAAAAAAAAAAAAAAAAQIF/9oACAEBAAEFAlAoFAoFAoFAoFAoFvC3hbwt4W8f/8QAGBAAAwEBAAAAAAAAAAAAAAAA" +
        "ADSj4TD/2gAIAQEABj8C5J0wTpgnTBOmCdMP/8QAFxABAQEBAAAAAAAAAAAAAAAAYQAQMP/aAAgBAQABPyE444YdsuAaUpWv/9oA" +
        "CAEBAAAAEHvB/8QAGRAAAgMBAAAAAAAAAAAAAAAAACEBEDFh/9oACAEBAAE/EEMQUCI6IgmEcKT4RzElzq9zLiX/2Q==";
}
