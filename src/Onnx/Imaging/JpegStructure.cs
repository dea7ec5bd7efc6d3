// Walks a JPEG's segments before ImageSharp sees it (ImageSharp 2.1 concatenates every APP1/APP2 profile block it
// meets, and pads a scan whose data ends early with zeros, reporting success).
// - Kept for the decoder: every segment except APP1..APP13, APP15 and COM. APP0 (JFIF) and APP14 (Adobe) stay: they
//   decide the colour transform. Skipped segments are seeked past, unread, however many there are.
// - The first APP1 "Exif" block (at most 64 KiB by the format) is read for the orientation only.
// - Huffman-coded baseline, extended (SOF0, SOF1) and progressive (SOF2) files are walked; the others (lossless,
//   hierarchical, arithmetic) are refused here with their name.
// - Every scan is entropy-decoded far enough to count its blocks (JpegScanDecoder) and must deliver all of them
//   before its data ends; at EOI every component must be complete: sequential, coded in a scan; progressive, every
//   coefficient 0..63 refined down to bit 0. A file cut short, with or without an EOI appended, fails one of these.
using System.Buffers.Binary;

namespace MetaLoraNative.Onnx.Imaging;

static class JpegStructure
{
    /// <summary>SOI, as ImageSharp's own detector tests it, so no file it would take for a JPEG bypasses this walk.</summary>
    public static bool Matches(ReadOnlySpan<byte> head) => head.Length >= 2 && head[0] == 0xFF && head[1] == 0xD8;

    public static ImageStructure Read(Stream stream, string label)
    {
        var r = new ByteReader(stream);
        if (r.ReadByte() != 0xFF || r.ReadByte() != 0xD8) throw ImageLoadException.Corrupt(label, "no JPEG start-of-image marker");

        var kept = new List<(long, long)>();
        long runStart = 0;          // start of the kept run that the next skipped segment closes
        var segment = new byte[ushort.MaxValue];
        var tables = new JpegHuffmanTable?[8];      // DC 0..3, AC 4..7
        JpegFrame? frame = null;
        byte[]? exif = null;
        int restartInterval = 0, scans = 0;

        while (true)
        {
            (int marker, long at) = NextMarker(r);
            if (marker < 0) throw ImageLoadException.Truncated(label, $"the file ends at byte {r.Length} without an end-of-image marker");
            if (marker == 0xD9)
            {
                kept.Add((runStart, r.Position - runStart));
                break;
            }
            if (marker is (>= 0xD0 and <= 0xD8) or 0x01) continue;     // standalone markers (RSTn, a stray SOI, TEM): no length

            int hi = r.ReadByte(), lo = r.ReadByte();
            if (lo < 0) throw ImageLoadException.Truncated(label, $"the file ends inside the {Name(marker)} marker at byte {at}");
            int length = (hi << 8) | lo;
            if (length < 2) throw ImageLoadException.Corrupt(label, $"segment {Name(marker)} at byte {at} declares length {length}");
            int n = length - 2;
            if (n > r.Remaining)
                throw ImageLoadException.Truncated(label,
                    $"segment {Name(marker)} at byte {at} declares {length} bytes, but the file ends {r.Remaining} bytes later");

            long end = r.Position + n;
            if (marker is (>= 0xE1 and <= 0xED) or 0xEF or 0xFE)
            {
                if (marker == 0xE1 && exif is null && n > 6)
                {
                    var block = segment.AsSpan(0, n);
                    if (!r.TryRead(block)) throw ImageLoadException.Truncated(label, $"the file ends inside segment APP1 at byte {at}");
                    if (block.StartsWith("Exif\0\0"u8)) exif = block[6..].ToArray();
                }
                if (at > runStart) kept.Add((runStart, at - runStart));
                runStart = end;
                r.Seek(end);
                continue;
            }

            var body = segment.AsSpan(0, n);
            if (!r.TryRead(body)) throw ImageLoadException.Truncated(label, $"the file ends inside segment {Name(marker)} at byte {at}");
            switch (marker)
            {
                case 0xC0 or 0xC1 or 0xC2:
                    if (frame is not null) throw ImageLoadException.Corrupt(label, $"a second frame header ({Name(marker)}) at byte {at}");
                    frame = JpegFrame.Parse(body, progressive: marker == 0xC2, label);
                    break;
                case 0xC3 or 0xC7 or 0xCB or 0xCF:
                    throw new ImageLoadException($"image {label} is a lossless JPEG ({Name(marker)}), which is not supported");
                case 0xC5 or 0xC6 or 0xCD or 0xCE:
                    throw new ImageLoadException($"image {label} is a hierarchical JPEG ({Name(marker)}), which is not supported");
                case 0xC9 or 0xCA or 0xCC:
                    throw new ImageLoadException($"image {label} uses arithmetic JPEG coding ({Name(marker)}), which is not supported");
                case 0xC4:
                    JpegHuffmanTable.ParseSegment(body, tables, label, at);
                    break;
                case 0xDD:
                    if (n < 2) throw ImageLoadException.Corrupt(label, $"DRI segment at byte {at} is {n} bytes");
                    restartInterval = BinaryPrimitives.ReadUInt16BigEndian(body);
                    break;
                case 0xDA:
                    if (frame is null) throw ImageLoadException.Corrupt(label, $"a scan at byte {at} before any frame header (SOF)");
                    scans++;
                    var scan = JpegScan.Parse(body, frame, tables, scans, label);
                    JpegScanDecoder.Run(r, frame, scan, restartInterval, label);   // leaves r at the marker after the scan data
                    break;
            }
        }
        if (frame is null) throw ImageLoadException.Corrupt(label, "no frame header (SOF) before the end-of-image marker");
        if (scans == 0) throw ImageLoadException.Truncated(label, "no scan data before the end-of-image marker");
        frame.CheckComplete(label);
        return new ImageStructure(frame.Width, frame.Height, kept, exif);
    }

    /// <summary>The next marker code and the offset of its 0xFF, passing fill bytes and stray data; (-1, end) at the end.</summary>
    static (int Marker, long At) NextMarker(ByteReader r)
    {
        while (true)
        {
            int b = r.ReadByte();
            if (b < 0) return (-1, r.Length);
            if (b != 0xFF) continue;
            long at = r.Position - 1;
            do b = r.ReadByte(); while (b == 0xFF);
            if (b < 0) return (-1, r.Length);
            if (b != 0x00) return (b, at);
        }
    }

    internal static string Name(int marker) => marker switch
    {
        >= 0xC0 and <= 0xCF and not 0xC4 and not 0xC8 and not 0xCC => $"SOF{marker - 0xC0}",
        0xC4 => "DHT", 0xCC => "DAC", 0xDA => "SOS", 0xDB => "DQT", 0xDD => "DRI", 0xFE => "COM",
        >= 0xE0 and <= 0xEF => $"APP{marker - 0xE0}",
        _ => $"0xFF{marker:X2}",
    };
}

/// <summary>The frame header (SOFn): size and components with their sampling, and per component the coding progress.</summary>
sealed class JpegFrame
{
    public required int Width, Height;
    public required bool Progressive;
    public required JpegComponent[] Components;
    public int McusWide, McusHigh;

    public static JpegFrame Parse(ReadOnlySpan<byte> b, bool progressive, string label)
    {
        if (b.Length < 6) throw ImageLoadException.Corrupt(label, $"frame header is {b.Length} bytes");
        int precision = b[0], height = BinaryPrimitives.ReadUInt16BigEndian(b[1..]), width = BinaryPrimitives.ReadUInt16BigEndian(b[3..]), count = b[5];
        if (precision is not (8 or 12)) throw ImageLoadException.Corrupt(label, $"frame header has {precision}-bit samples (8 or 12)");
        if (height == 0) throw new ImageLoadException($"image {label} declares its height later (DNL marker), which is not supported");
        ImageIO.CheckSize(width, height, label);
        if (count is < 1 or > 4 || b.Length != 6 + 3 * count)
            throw ImageLoadException.Corrupt(label, $"frame header lists {count} components in {b.Length} bytes");
        var components = new JpegComponent[count];
        for (int i = 0; i < count; i++)
        {
            int id = b[6 + 3 * i], h = b[7 + 3 * i] >> 4, v = b[7 + 3 * i] & 15;
            if (h is < 1 or > 4 || v is < 1 or > 4) throw ImageLoadException.Corrupt(label, $"component {id} has sampling {h}x{v} (1 to 4 each)");
            if (components.Take(i).Any(c => c.Id == id)) throw ImageLoadException.Corrupt(label, $"component id {id} appears twice in the frame header");
            components[i] = new JpegComponent { Id = id, H = h, V = v };
        }
        int hMax = components.Max(c => c.H), vMax = components.Max(c => c.V);
        foreach (var c in components)
        {
            // Blocks that carry samples: ceil(ceil(width * H / Hmax) / 8), likewise down; a one-component scan codes these.
            c.BlocksWide = (int)(((long)width * c.H + hMax - 1) / hMax + 7) / 8;
            c.BlocksHigh = (int)(((long)height * c.V + vMax - 1) / vMax + 7) / 8;
        }
        return new JpegFrame
        {
            Width = width, Height = height, Progressive = progressive, Components = components,
            McusWide = (width + 8 * hMax - 1) / (8 * hMax), McusHigh = (height + 8 * vMax - 1) / (8 * vMax),
        };
    }

    /// <summary>At EOI: every component coded, every coefficient at full precision.</summary>
    public void CheckComplete(string label)
    {
        for (int i = 0; i < Components.Length; i++)
        {
            var c = Components[i];
            if (c.LowBit.All(bit => bit < 0))
                throw ImageLoadException.Truncated(label, $"component {i + 1} of {Components.Length} never appears in a scan");
            int k = Array.FindIndex(c.LowBit, bit => bit != 0);
            if (k >= 0)
                throw ImageLoadException.Truncated(label, c.LowBit[k] < 0
                    ? $"component {i + 1}'s coefficient {k} is never coded (progressive scans are missing)"
                    : $"component {i + 1}'s coefficient {k} stops at bit {c.LowBit[k]} (refinement scans are missing)");
        }
    }
}

sealed class JpegComponent
{
    public required int Id, H, V;
    public int BlocksWide, BlocksHigh;
    /// <summary>Per zig-zag coefficient: the lowest bit coded so far (-1: not yet); 0 everywhere when complete.</summary>
    public readonly int[] LowBit = Enumerable.Repeat(-1, 64).ToArray();
    /// <summary>Progressive only, (BlocksHigh * BlocksWide): bit k set when coefficient k of that block is nonzero.</summary>
    public ulong[]? NonZero;
}

/// <summary>A start-of-scan header: which components, which tables, which coefficients and bits.</summary>
sealed class JpegScan
{
    public required int Index;
    public required JpegComponent[] Components;
    public required JpegHuffmanTable?[] Dc, Ac;     // per scan component
    public required int Ss, Se, Ah, Al;

    public static JpegScan Parse(ReadOnlySpan<byte> b, JpegFrame frame, JpegHuffmanTable?[] tables, int index, string label)
    {
        int count = b.Length > 0 ? b[0] : 0;
        if (count is < 1 or > 4 || b.Length != 4 + 2 * count)
            throw ImageLoadException.Corrupt(label, $"scan {index} lists {count} components in {b.Length} bytes");
        var components = new JpegComponent[count];
        var dc = new JpegHuffmanTable?[count];
        var ac = new JpegHuffmanTable?[count];
        for (int i = 0; i < count; i++)
        {
            int id = b[1 + 2 * i];
            components[i] = Array.Find(frame.Components, c => c.Id == id)
                ?? throw ImageLoadException.Corrupt(label, $"scan {index} names component {id}, which the frame does not have");
            if (components.Take(i).Contains(components[i])) throw ImageLoadException.Corrupt(label, $"scan {index} names component {id} twice");
            int td = b[2 + 2 * i] >> 4, ta = b[2 + 2 * i] & 15;
            if (td > 3 || ta > 3) throw ImageLoadException.Corrupt(label, $"scan {index} selects Huffman tables {td}/{ta} (0 to 3)");
            dc[i] = tables[td];
            ac[i] = tables[4 + ta];
        }
        int at = 1 + 2 * count;
        int ss = b[at], se = b[at + 1], ah = b[at + 2] >> 4, al = b[at + 2] & 15;
        if (!frame.Progressive) (ss, se, ah, al) = (0, 63, 0, 0);     // sequential: whole blocks, whatever the fields say (as libjpeg)
        else if (ss > se || se > 63 || (ss == 0 && se != 0) || (ss > 0 && count != 1) || ah > 13 || al > 13)
            throw ImageLoadException.Corrupt(label, $"progressive scan {index} has coefficients {ss}..{se}, bits {ah}/{al} for {count} components");
        var scan = new JpegScan { Index = index, Components = components, Dc = dc, Ac = ac, Ss = ss, Se = se, Ah = ah, Al = al };
        if (ss == 0 && ah == 0) scan.Require(dc, "DC", label);
        if (se > 0) scan.Require(ac, "AC", label);
        return scan;
    }

    void Require(JpegHuffmanTable?[] selected, string kind, string label)
    {
        for (int i = 0; i < selected.Length; i++)
            if (selected[i] is null)
                throw ImageLoadException.Corrupt(label, $"scan {Index} uses a {kind} Huffman table for component {Components[i].Id} that no DHT segment defined");
    }
}
