// Every photo enters the product here. A load
// 1. bounds the file and, before any pixel is allocated, the declared size (a header can claim 60000 x 60000 pixels
//    in a few bytes);
// 2. walks a PNG's chunks or a JPEG's segments (PngStructure, JpegStructure): text, ICC, XMP, EXIF and comments are
//    passed over unread, so no chunk is ever inflated, and an image whose data ends before its last row (cut off,
//    with or without an end marker appended) is an error instead of being padded;
// 3. decodes only the kept bytes, metadata ignored by every decoder, and strips what metadata is left, so crops,
//    contact sheets and caches made from the image carry none;
// 4. applies the EXIF orientation (1..8) read in step 2, before anyone looks at the pixels.
// Other formats (BMP, GIF, PBM, TGA, WebP, TIFF) get steps 1 and 3 (GIF and TIFF: the first frame only).
// Every failure names the file.
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.Formats.Bmp;
using SixLabors.ImageSharp.Formats.Gif;
using SixLabors.ImageSharp.Formats.Jpeg;
using SixLabors.ImageSharp.Formats.Pbm;
using SixLabors.ImageSharp.Formats.Png;
using SixLabors.ImageSharp.Formats.Tga;
using SixLabors.ImageSharp.Formats.Tiff;
using SixLabors.ImageSharp.Formats.Webp;
using SixLabors.ImageSharp.Metadata;
using SixLabors.ImageSharp.PixelFormats;

namespace MetaLoraNative.Onnx.Imaging;

public static class ImageIO
{
    /// <summary>Longest side we accept (a 16k panorama still passes).</summary>
    public static int MaxDimension { get; set; } = 16384;
    /// <summary>Most pixels we accept: 100 MP is ~300 MB as Rgb24.</summary>
    public static long MaxPixels { get; set; } = 100_000_000;
    /// <summary>Largest file we read at all.</summary>
    public static long MaxFileBytes { get; set; } = 512L << 20;

    /// <summary>ImageSharp with every decoder told to ignore metadata, and only the first frame of GIF and TIFF.</summary>
    static readonly Configuration Decoding = CreateDecoding();

    public static Image<Rgb24> LoadRgb(string path)
    {
        if (!File.Exists(path)) throw new ImageLoadException($"image not found: {path}");
        using var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 0);
        return Decode(file, path);
    }

    /// <summary>Decodes <paramref name="bytes"/>; <paramref name="label"/> names the source in errors.</summary>
    public static Image<Rgb24> Decode(byte[] bytes, string label)
    {
        using var memory = new MemoryStream(bytes, writable: false);
        return Decode(memory, label);
    }

    static Image<Rgb24> Decode(Stream stream, string label)
    {
        long length = stream.Length;
        if (length == 0) throw new ImageLoadException($"image {label} is empty (0 bytes)");
        if (length > MaxFileBytes) throw new ImageLoadException($"image {label} is {length} bytes, over the {MaxFileBytes}-byte limit");

        Span<byte> head = stackalloc byte[8];
        stream.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
        stream.Position = 0;
        var structure = PngStructure.Matches(head) ? PngStructure.Read(stream, label)
                      : JpegStructure.Matches(head) ? JpegStructure.Read(stream, label)
                      : null;

        Image<Rgb24> image;
        if (structure is not null)
        {
            using var kept = new RangeStream(stream, structure.Kept);
            image = Load(kept, label);
        }
        else
        {
            var info = Guard(label, "has a corrupt header", () => Image.Identify(Decoding, stream))
                ?? throw new ImageLoadException($"image {label} is not in a known image format (PNG, JPEG, BMP, GIF, PBM, TGA, WebP, TIFF)");
            CheckSize(info.Width, info.Height, label);
            stream.Position = 0;
            image = Load(stream, label);
        }
        Strip(image);
        Orientation.Apply(image, Orientation.FromExif(structure?.Exif));
        return image;
    }

    /// <summary>Refuses an empty size, or one over <see cref="MaxDimension"/> or <see cref="MaxPixels"/>, before anything is allocated.</summary>
    internal static void CheckSize(int width, int height, string label)
    {
        if (width <= 0 || height <= 0) throw new ImageLoadException($"image {label} declares an empty size {width}x{height}");
        if (width > MaxDimension || height > MaxDimension || (long)width * height > MaxPixels)
            throw new ImageLoadException(
                $"image {label} declares {width}x{height} pixels, over the limit ({MaxDimension} per side, {MaxPixels} in all)");
    }

    static Image<Rgb24> Load(Stream stream, string label) =>
        Guard(label, "is corrupt", () => Image.Load<Rgb24>(Decoding, stream));

    /// <summary>Runs an ImageSharp call, turning its failures into an <see cref="ImageLoadException"/> naming the file.</summary>
    static T Guard<T>(string label, string what, Func<T> decode)
    {
        try
        {
            return decode();
        }
        // ImageSharp 2.1's decoders also answer some malformed files with IndexOutOfRange or NullReference.
        catch (Exception e) when (e is ImageFormatException or NotSupportedException or InvalidOperationException
                                       or ArgumentException or IndexOutOfRangeException or NullReferenceException
                                       or IOException or OutOfMemoryException)
        {
            throw new ImageLoadException($"image {label} {what}: {e.Message}", e);
        }
    }

    /// <summary>Drops every profile and text the decoders may still have attached, on the image and each frame.</summary>
    static void Strip(Image image)
    {
        ImageMetadata m = image.Metadata;
        m.ExifProfile = null;
        m.IccProfile = null;
        m.IptcProfile = null;
        m.XmpProfile = null;
        m.GetPngMetadata().TextData.Clear();
        m.GetGifMetadata().Comments.Clear();
        foreach (var frame in image.Frames)
        {
            frame.Metadata.ExifProfile = null;
            frame.Metadata.IccProfile = null;
            frame.Metadata.IptcProfile = null;
            frame.Metadata.XmpProfile = null;
        }
    }

    static Configuration CreateDecoding()
    {
        // A configuration of its own: Configuration.Clone() shares the format manager, and Default must stay as it is.
        var c = new Configuration(
            new PngConfigurationModule(), new JpegConfigurationModule(), new GifConfigurationModule(), new BmpConfigurationModule(),
            new PbmConfigurationModule(), new TgaConfigurationModule(), new TiffConfigurationModule(), new WebpConfigurationModule());
        c.ImageFormatsManager.SetDecoder(PngFormat.Instance, new PngDecoder { IgnoreMetadata = true });
        c.ImageFormatsManager.SetDecoder(JpegFormat.Instance, new JpegDecoder { IgnoreMetadata = true });
        c.ImageFormatsManager.SetDecoder(GifFormat.Instance, new GifDecoder { IgnoreMetadata = true, DecodingMode = FrameDecodingMode.First });
        c.ImageFormatsManager.SetDecoder(TiffFormat.Instance, new TiffDecoder { IgnoreMetadata = true, DecodingMode = FrameDecodingMode.First });
        c.ImageFormatsManager.SetDecoder(WebpFormat.Instance, new WebpDecoder { IgnoreMetadata = true });
        return c;
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
