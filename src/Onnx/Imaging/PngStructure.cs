// Walks a PNG's chunk list before ImageSharp sees it (ImageSharp 2.1 inflates every zTXt/iTXt chunk into a List<byte>
// four bytes at a time, even in Image.Identify, and fills missing rows with zeros without a word).
// - Only the chunks that shape pixels are kept for the decoder: IHDR, PLTE, tRNS, IDAT, IEND. Text (tEXt, zTXt,
//   iTXt), ICC (iCCP) and every other ancillary chunk are skipped by seeking past them, unread and uninflated.
// - eXIf is read (up to MaxExifBytes) for the orientation only.
// - Every kept chunk must lie inside the file with a correct CRC; a critical chunk we do not know is an error.
// - The concatenated IDAT payloads must inflate to exactly the bytes the header declares: height x (1 + stride)
//   for a plain image, the sum over the seven Adam7 passes for an interlaced one. Inflation stops one buffer past
//   that size, so an IDAT bomb is bounded too.
using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;

namespace MetaLoraNative.Onnx.Imaging;

static class PngStructure
{
    /// <summary>Largest eXIf chunk read for its orientation; a camera's EXIF is under 64 KiB.</summary>
    const int MaxExifBytes = 1 << 20;

    static ReadOnlySpan<byte> Signature => [0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A];

    public static bool Matches(ReadOnlySpan<byte> head) => head.StartsWith(Signature);

    public static ImageStructure Read(Stream stream, string label)
    {
        var r = new ByteReader(stream);
        Span<byte> header = stackalloc byte[13];
        if (!r.TryRead(header[..8]) || !header[..8].SequenceEqual(Signature))
            throw ImageLoadException.Corrupt(label, "no PNG signature");

        var kept = new List<(long, long)> { (0, 8) };
        var idat = new List<(long, long)>();    // payloads only, in file order
        byte[]? exif = null;
        int width = 0, height = 0, bitsPerPixel = 0;
        bool interlaced = false, idatEnded = false;
        string? previous = null;

        while (true)
        {
            long at = r.Position;
            if (!r.TryRead(header[..8]))
                throw ImageLoadException.Truncated(label, r.Remaining == 0
                    ? $"the file ends at byte {at} without an IEND chunk"
                    : $"the file ends inside a chunk header at byte {at}");
            uint length = BinaryPrimitives.ReadUInt32BigEndian(header);
            string type = ChunkType(header[4..8], label, at);
            if (length > int.MaxValue) throw ImageLoadException.Corrupt(label, $"chunk {type} at byte {at} declares {length} bytes (over 2^31 - 1)");
            if (length + 4L > r.Remaining)
                throw ImageLoadException.Truncated(label,
                    $"chunk {type} at byte {at} declares {length} bytes, but the file ends {r.Remaining} bytes later");
            if (previous is null && type != "IHDR") throw ImageLoadException.Corrupt(label, $"the first chunk is {type}, not IHDR");

            long data = at + 8;
            switch (type)
            {
                case "IHDR":
                    if (previous is not null) throw ImageLoadException.Corrupt(label, "a second IHDR chunk");
                    if (length != 13) throw ImageLoadException.Corrupt(label, $"IHDR is {length} bytes, not 13");
                    ReadChecked(r, length, header, type, label, at);
                    (width, height, bitsPerPixel, interlaced) = ParseHeader(header, label);
                    break;
                case "PLTE" or "tRNS" or "IEND":
                    // A palette is at most 768 bytes and its alpha 256; anything larger is not one (and would be held whole).
                    if (length > 1024) throw ImageLoadException.Corrupt(label, $"chunk {type} at byte {at} is {length} bytes (at most 768 is valid)");
                    ReadChecked(r, length, [], type, label, at);
                    break;
                case "IDAT":
                    if (idatEnded) throw ImageLoadException.Corrupt(label, $"IDAT chunk at byte {at} after another chunk ended the image data");
                    ReadChecked(r, length, [], type, label, at);
                    idat.Add((data, length));
                    break;
                case "eXIf" when exif is null && length <= MaxExifBytes:
                    var bytes = new byte[length];
                    ReadChecked(r, length, bytes, type, label, at);
                    exif = bytes;
                    break;
                default:
                    if (char.IsAsciiLetterUpper(type[0]))
                        throw ImageLoadException.Corrupt(label, $"unknown critical chunk {type} at byte {at}");
                    r.Skip(length + 4L);    // ancillary: data and CRC passed over unread
                    break;
            }
            if (type is "IHDR" or "PLTE" or "tRNS" or "IDAT" or "IEND") kept.Add((at, length + 12L));
            if (idat.Count > 0 && type != "IDAT") idatEnded = true;
            previous = type;
            if (type == "IEND") break;
        }
        if (idat.Count == 0) throw ImageLoadException.Corrupt(label, "no image data (IDAT chunk)");

        long expected = interlaced ? Adam7Bytes(width, height, bitsPerPixel) : height * RowBytes(width, bitsPerPixel);
        long inflated = InflatedLength(stream, idat, expected, label);
        if (inflated < expected)
            throw ImageLoadException.Truncated(label,
                $"its image data inflates to {inflated} of the {expected} bytes that {width}x{height} needs" +
                (interlaced ? "" : $" (rows {inflated / RowBytes(width, bitsPerPixel)} to {height - 1} are missing)"));
        if (inflated > expected)
            throw ImageLoadException.Corrupt(label, $"its image data inflates to more than the {expected} bytes that {width}x{height} needs");
        return new ImageStructure(width, height, kept, exif);
    }

    static string ChunkType(ReadOnlySpan<byte> b, string label, long at)
    {
        foreach (byte c in b)
            if (!char.IsAsciiLetter((char)c))
                throw ImageLoadException.Corrupt(label, $"bytes at {at} are not a chunk header (type {Convert.ToHexString(b)})");
        return Encoding.ASCII.GetString(b);
    }

    /// <summary>Width, height, bits per pixel and interlacing from the 13 IHDR bytes, each value checked.</summary>
    static (int Width, int Height, int BitsPerPixel, bool Interlaced) ParseHeader(ReadOnlySpan<byte> h, string label)
    {
        uint w = BinaryPrimitives.ReadUInt32BigEndian(h), hh = BinaryPrimitives.ReadUInt32BigEndian(h[4..]);
        if (w > int.MaxValue || hh > int.MaxValue) throw ImageLoadException.Corrupt(label, $"IHDR declares {w}x{hh} pixels");
        ImageIO.CheckSize((int)w, (int)hh, label);
        byte depth = h[8], colour = h[9];
        int samples = colour switch { 0 => 1, 2 => 3, 3 => 1, 4 => 2, 6 => 4, _ => 0 };
        bool depthOk = colour switch
        {
            0 => depth is 1 or 2 or 4 or 8 or 16,
            3 => depth is 1 or 2 or 4 or 8,
            2 or 4 or 6 => depth is 8 or 16,
            _ => false,
        };
        if (samples == 0 || !depthOk) throw ImageLoadException.Corrupt(label, $"IHDR has colour type {colour} with bit depth {depth}");
        if (h[10] != 0 || h[11] != 0) throw ImageLoadException.Corrupt(label, $"IHDR has compression {h[10]} / filter {h[11]} (only 0 exists)");
        if (h[12] > 1) throw ImageLoadException.Corrupt(label, $"IHDR has interlace method {h[12]} (0 or 1)");
        return ((int)w, (int)hh, samples * depth, h[12] == 1);
    }

    /// <summary>One filtered row: the filter-type byte, then the packed samples.</summary>
    static long RowBytes(long width, int bitsPerPixel) => 1 + (width * bitsPerPixel + 7) / 8;

    static long Adam7Bytes(int width, int height, int bitsPerPixel)
    {
        ReadOnlySpan<int> x0 = [0, 4, 0, 2, 0, 1, 0], y0 = [0, 0, 4, 0, 2, 0, 1], dx = [8, 8, 4, 4, 2, 2, 1], dy = [8, 8, 8, 4, 4, 2, 2];
        long total = 0;
        for (int p = 0; p < 7; p++)
        {
            long w = (width - x0[p] + dx[p] - 1) / dx[p], h = (height - y0[p] + dy[p] - 1) / dy[p];
            if (w > 0 && h > 0) total += h * RowBytes(w, bitsPerPixel);
        }
        return total;
    }

    /// <summary>Bytes the IDAT zlib stream inflates to, counted up to one buffer past <paramref name="expected"/>.</summary>
    static long InflatedLength(Stream stream, List<(long, long)> idat, long expected, string label)
    {
        using var payload = new RangeStream(stream, idat);
        using var z = new ZLibStream(payload, CompressionMode.Decompress);
        var buffer = new byte[1 << 16];
        long total = 0;
        try
        {
            int n;
            while (total <= expected && (n = z.Read(buffer)) > 0) total += n;
        }
        catch (InvalidDataException e)
        {
            throw ImageLoadException.Corrupt(label, $"its image data does not inflate after {total} bytes ({e.Message})");
        }
        return total;
    }

    /// <summary>
    /// Reads a chunk's data and CRC and checks the CRC over type and data. The data lands in <paramref name="keep"/>
    /// when that is given (length bytes), else it is only summed through a small window.
    /// </summary>
    static void ReadChecked(ByteReader r, uint length, Span<byte> keep, string type, string label, long at)
    {
        Span<byte> window = stackalloc byte[4096];
        uint crc = Crc32.Update(Crc32.Start, [(byte)type[0], (byte)type[1], (byte)type[2], (byte)type[3]]);
        for (long done = 0; done < length;)
        {
            int n = (int)Math.Min(length - done, window.Length);
            var part = keep.IsEmpty ? window[..n] : keep.Slice((int)done, n);
            if (!r.TryRead(part)) throw ImageLoadException.Truncated(label, $"the file ends inside chunk {type} at byte {at}");
            crc = Crc32.Update(crc, part);
            done += n;
        }
        Span<byte> stored = stackalloc byte[4];
        if (!r.TryRead(stored)) throw ImageLoadException.Truncated(label, $"the file ends inside chunk {type} at byte {at}");
        if (Crc32.Finish(crc) != BinaryPrimitives.ReadUInt32BigEndian(stored))
            throw ImageLoadException.Corrupt(label, $"chunk {type} at byte {at} fails its CRC check");
    }

    /// <summary>The CRC-32 of PNG (ISO 3309, polynomial 0xEDB88320, reflected), one table lookup per byte.</summary>
    static class Crc32
    {
        public const uint Start = 0xFFFFFFFFu;
        static readonly uint[] Table = Build();

        public static uint Update(uint crc, ReadOnlySpan<byte> data)
        {
            foreach (byte b in data) crc = Table[(crc ^ b) & 0xFF] ^ (crc >> 8);
            return crc;
        }

        public static uint Finish(uint crc) => crc ^ 0xFFFFFFFFu;

        static uint[] Build()
        {
            var t = new uint[256];
            for (uint n = 0; n < 256; n++)
            {
                uint c = n;
                for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
                t[n] = c;
            }
            return t;
        }
    }
}
