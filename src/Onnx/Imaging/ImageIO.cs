// Decoding with limits. A photo header can claim 60000 x 60000 pixels in a few hundred bytes; decoding that would
// allocate ~10 GiB. So every load first reads only the header (Image.Identify), rejects sizes beyond the limits, and
// only then decodes. Every failure names the file.
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace MetaLoraNative.Onnx.Imaging;

public sealed class ImageLoadException : Exception
{
    public ImageLoadException(string message, Exception? inner = null) : base(message, inner) { }
}

public static class ImageIO
{
    /// <summary>Longest side we accept (a 16k panorama still passes).</summary>
    public static int MaxDimension { get; set; } = 16384;
    /// <summary>Most pixels we accept: 100 MP is ~300 MB as Rgb24.</summary>
    public static long MaxPixels { get; set; } = 100_000_000;
    /// <summary>Largest file we read at all.</summary>
    public static long MaxFileBytes { get; set; } = 512L << 20;

    public static Image<Rgb24> LoadRgb(string path)
    {
        if (!File.Exists(path)) throw new ImageLoadException($"image not found: {path}");
        long length = new FileInfo(path).Length;
        if (length == 0) throw new ImageLoadException($"image {path} is empty (0 bytes)");
        if (length > MaxFileBytes) throw new ImageLoadException($"image {path} is {length} bytes, over the {MaxFileBytes}-byte limit");
        byte[] bytes = File.ReadAllBytes(path);
        return Decode(bytes, path);
    }

    /// <summary>Decodes <paramref name="bytes"/>; <paramref name="label"/> names the source in errors.</summary>
    public static Image<Rgb24> Decode(byte[] bytes, string label)
    {
        IImageInfo? info;
        SixLabors.ImageSharp.Formats.IImageFormat? format;
        try
        {
            info = Image.Identify(bytes, out format);
        }
        catch (Exception e) when (e is ImageFormatException or NotSupportedException or InvalidOperationException
                                       or ArgumentException or IndexOutOfRangeException or IOException)
        {
            throw new ImageLoadException($"image {label} has a corrupt header: {e.Message}", e);
        }
        if (info is null) throw new ImageLoadException($"image {label} is not in a known image format (PNG, JPEG, BMP, GIF, TGA, WebP, TIFF)");
        if (info.Width <= 0 || info.Height <= 0)
            throw new ImageLoadException($"image {label} declares an empty size {info.Width}x{info.Height}");
        if (info.Width > MaxDimension || info.Height > MaxDimension || (long)info.Width * info.Height > MaxPixels)
            throw new ImageLoadException(
                $"image {label} declares {info.Width}x{info.Height} pixels, over the limit ({MaxDimension} per side, {MaxPixels} in all)");
        // ImageSharp fills a cut-off PNG or JPEG with grey and reports success; a training photo must be whole.
        if (MissingEnd(bytes, format?.Name) is { } missing)
            throw new ImageLoadException($"image {label} is truncated: {missing}");
        try
        {
            var img = Image.Load<Rgb24>(bytes);
            return img;
        }
        catch (Exception e) when (e is ImageFormatException or NotSupportedException or InvalidOperationException
                                       or ArgumentException or IndexOutOfRangeException or IOException
                                       or OutOfMemoryException)
        {
            throw new ImageLoadException($"image {label} is corrupt or truncated: {e.Message}", e);
        }
    }

    static string? MissingEnd(byte[] b, string? format)
    {
        if (format == "PNG")
        {
            // The IEND chunk: length 0, "IEND", CRC; anything may follow, so look near the end.
            int from = Math.Max(0, b.Length - 1024);
            return b.AsSpan(from).IndexOf("IEND"u8) >= 0 ? null : "no IEND chunk";
        }
        if (format == "JPEG")
        {
            int from = Math.Max(0, b.Length - 64 * 1024);
            return b.AsSpan(from).IndexOf((ReadOnlySpan<byte>)[0xFF, 0xD9]) >= 0 ? null : "no end-of-image marker";
        }
        return null;
    }

    /// <summary>Planar float tensor (1, 3, H, W) from an image: value = (pixel - mean[c]) / std[c] with pixel in [0, 255].</summary>
    public static float[] ToChw(Image<Rgb24> img, ReadOnlySpan<float> mean, ReadOnlySpan<float> std)
    {
        int w = img.Width, h = img.Height, plane = w * h;
        var data = new float[3 * plane];
        float m0 = mean[0], m1 = mean[1], m2 = mean[2], s0 = 1f / std[0], s1 = 1f / std[1], s2 = 1f / std[2];
        img.ProcessPixelRows(rows =>
        {
            for (int y = 0; y < h; y++)
            {
                var row = rows.GetRowSpan(y);
                for (int x = 0; x < w; x++)
                {
                    int i = y * w + x;
                    data[i] = (row[x].R - m0) * s0;
                    data[plane + i] = (row[x].G - m1) * s1;
                    data[2 * plane + i] = (row[x].B - m2) * s2;
                }
            }
        });
        return data;
    }

    /// <summary>Image from a planar (3, H, W) tensor with values in [-1, 1] (the VAE's range), clamped.</summary>
    public static Image<Rgb24> FromChwSigned(ReadOnlySpan<float> chw, int width, int height)
    {
        var img = new Image<Rgb24>(width, height);
        int plane = width * height;
        for (int y = 0; y < height; y++)
            for (int x = 0; x < width; x++)
            {
                int i = y * width + x;
                img[x, y] = new Rgb24(ToByte(chw[i]), ToByte(chw[plane + i]), ToByte(chw[2 * plane + i]));
            }
        return img;

        static byte ToByte(float v) => (byte)Math.Clamp(MathF.Round((v + 1f) * 127.5f), 0f, 255f);
    }
}
