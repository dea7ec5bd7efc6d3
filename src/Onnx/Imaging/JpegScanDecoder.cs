// Decodes a JPEG scan's Huffman-coded data only as far as needed to count its blocks: symbols and the bit lengths they
// announce, no coefficient values, no dequantisation, no IDCT. The data ends at the first marker that is not a
// stuffed 0xFF00 (or at the end of the file); asking for a bit past that end means the scan is short, and that is
// reported with how far it got. Restart markers must come every DRI units. Progressive refinement scans read one
// correction bit per already-nonzero coefficient, so a one-bit-per-coefficient map (ulong per block) is kept for AC.
// Procedures follow ITU-T T.81 Annex F (sequential) and G.1.2 (progressive); unit order follows A.2.
namespace MetaLoraNative.Onnx.Imaging;

static class JpegScanDecoder
{
    public static void Run(ByteReader r, JpegFrame frame, JpegScan scan, int restartInterval, string label)
    {
        var bits = new ScanBits(r);
        bool interleaved = scan.Components.Length > 1;
        var only = scan.Components[0];
        long units = interleaved ? (long)frame.McusWide * frame.McusHigh : (long)only.BlocksWide * only.BlocksHigh;
        if (frame.Progressive && scan.Ss > 0) only.NonZero ??= new ulong[(long)only.BlocksWide * only.BlocksHigh];
        int eobRun = 0;
        long unit = 0;
        try
        {
            for (; unit < units; unit++)
            {
                if (restartInterval > 0 && unit > 0 && unit % restartInterval == 0)
                {
                    if (!bits.Restart()) throw new ScanEnded();
                    eobRun = 0;
                }
                if (!interleaved) DecodeBlock(bits, scan, 0, unit, ref eobRun, label);
                else
                    for (int i = 0; i < scan.Components.Length; i++)
                        for (int b = scan.Components[i].H * scan.Components[i].V; b > 0; b--)
                            DecodeBlock(bits, scan, i, -1, ref eobRun, label);
            }
        }
        catch (ScanEnded)
        {
            throw ImageLoadException.Truncated(label,
                $"scan {scan.Index} ends after {unit} of its {units} {(interleaved ? "MCUs" : "blocks")}");
        }
        bits.End();

        foreach (var c in scan.Components)
            for (int k = scan.Ss; k <= scan.Se; k++) c.LowBit[k] = scan.Al;
    }

    /// <summary>One 8x8 block of scan component <paramref name="i"/>; <paramref name="block"/> indexes NonZero (AC scans).</summary>
    static void DecodeBlock(ScanBits bits, JpegScan scan, int i, long block, ref int eobRun, string label)
    {
        if (scan.Ss == 0)
        {
            if (scan.Ah > 0) { bits.Skip(1); return; }                      // DC refinement: one bit
            int s = Symbol(bits, scan.Dc[i]!, label);                        // DC: magnitude category, then that many bits
            if (s > 16) throw ImageLoadException.Corrupt(label, $"scan {scan.Index} has a DC category of {s}");
            bits.Skip(s);
            if (scan.Se == 0) return;
            for (int k = 1; k < 64; k++)                                     // sequential: AC 1..63 follow
            {
                int rs = Symbol(bits, scan.Ac[i]!, label), run = rs >> 4, size = rs & 15;
                if (size == 0)
                {
                    if (run != 15) break;                                    // EOB
                    k += 15;                                                 // ZRL: sixteen zeros
                    continue;
                }
                k += run;
                bits.Skip(size);
            }
            return;
        }

        var table = scan.Ac[i]!;
        ref ulong nonZero = ref scan.Components[i].NonZero![block];
        if (scan.Ah == 0)
        {
            // AC first pass (G.1.2.2): runs of zeros, new coefficients, and end-of-band runs spanning blocks.
            if (eobRun > 0) { eobRun--; return; }
            for (int k = scan.Ss; k <= scan.Se; k++)
            {
                int rs = Symbol(bits, table, label), run = rs >> 4, size = rs & 15;
                if (size == 0)
                {
                    if (run < 15) { eobRun = (1 << run) - 1 + (run > 0 ? bits.Read(run) : 0); return; }
                    k += 15;
                    continue;
                }
                k += run;
                bits.Skip(size);
                if (k <= 63) nonZero |= 1UL << k;
            }
            return;
        }

        // AC refinement (G.1.2.3): a correction bit for every coefficient already nonzero that is passed over.
        int at = scan.Ss;
        if (eobRun == 0)
        {
            for (; at <= scan.Se; at++)
            {
                int rs = Symbol(bits, table, label), run = rs >> 4, size = rs & 15;
                if (size != 0) bits.Skip(1);                                 // sign of the one new coefficient
                else if (run != 15)
                {
                    eobRun = (1 << run) + (run > 0 ? bits.Read(run) : 0);
                    break;
                }
                for (; at <= scan.Se; at++)                                  // pass nonzero ones and `run` zero ones
                {
                    if ((nonZero >> at & 1) != 0) bits.Skip(1);
                    else if (run-- == 0) break;
                }
                if (size != 0 && at <= scan.Se) nonZero |= 1UL << at;
            }
        }
        if (eobRun > 0)
        {
            for (; at <= scan.Se; at++)
                if ((nonZero >> at & 1) != 0) bits.Skip(1);
            eobRun--;
        }
    }

    static int Symbol(ScanBits bits, JpegHuffmanTable t, string label)
    {
        int peek = bits.Peek(16);
        int hit = t.Lookup[peek >> (16 - JpegHuffmanTable.LookupBits)];
        if (hit != 0)
        {
            bits.Skip(hit >> 8);
            return hit & 0xFF;
        }
        for (int length = JpegHuffmanTable.LookupBits + 1; length <= 16; length++)
        {
            int code = peek >> (16 - length);
            if (code <= t.MaxCode[length])
            {
                bits.Skip(length);
                return t.Symbols[t.ValueOffset[length] + code - t.MinCode[length]];
            }
        }
        if (bits.NearEnd) throw new ScanEnded();
        throw ImageLoadException.Corrupt(label, "a scan holds a bit pattern that is no Huffman code of its table");
    }

    sealed class ScanEnded : Exception;

    /// <summary>Bits of one scan's entropy-coded data, most significant first, with 0xFF00 unstuffed.</summary>
    sealed class ScanBits(ByteReader r)
    {
        ulong _acc;         // the low _count bits are unread data
        int _count;
        int _marker = -2;   // the marker that ended the data: -2 none yet, -1 end of file
        long _markerAt;     // offset of its first 0xFF

        /// <summary>Fewer than 16 real bits are left and no more will come: a failed lookup read padding.</summary>
        public bool NearEnd => _marker != -2 && _count < 16;

        /// <summary>The next <paramref name="n"/> (at most 16) bits without consuming them; zeros past the data's end.</summary>
        public int Peek(int n)
        {
            if (_count < n) Fill();
            return _count >= n ? (int)(_acc >> (_count - n)) & ((1 << n) - 1) : (int)(_acc << (n - _count)) & ((1 << n) - 1);
        }

        public void Skip(int n)
        {
            if (_count < n) Fill();
            if (_count < n) throw new ScanEnded();
            _count -= n;
        }

        public int Read(int n)
        {
            int v = Peek(n);
            Skip(n);
            return v;
        }

        /// <summary>At a restart boundary: drop the padding bits and pass the RSTn marker; false when another marker (or the end) is there.</summary>
        public bool Restart()
        {
            ToMarker();
            if (_marker is < 0xD0 or > 0xD7) return false;
            _marker = -2;
            return true;
        }

        /// <summary>After the last unit: leaves the reader on the marker that follows the data (trailing RSTn passed).</summary>
        public void End()
        {
            ToMarker();
            while (_marker is >= 0xD0 and <= 0xD7)
            {
                _marker = -2;
                ToMarker();
            }
            r.Seek(_markerAt);
        }

        void ToMarker()
        {
            _count = 0;
            while (_marker == -2)
            {
                _count = 0;
                Fill();
            }
            _count = 0;
            _acc = 0;
        }

        void Fill()
        {
            while (_count <= 48 && _marker == -2)
            {
                int b = r.ReadByte();
                if (b < 0) { (_marker, _markerAt) = (-1, r.Length); return; }
                if (b == 0xFF)
                {
                    long at = r.Position - 1;
                    int next;
                    do next = r.ReadByte(); while (next == 0xFF);
                    if (next < 0) { (_marker, _markerAt) = (-1, r.Length); return; }
                    if (next != 0) { (_marker, _markerAt) = (next, at); return; }
                }
                _acc = (_acc << 8) | (uint)b;
                _count += 8;
            }
        }
    }
}

/// <summary>One Huffman table from a DHT segment, as T.81 C.2 builds it, with a lookup for codes up to 9 bits.</summary>
sealed class JpegHuffmanTable
{
    public const int LookupBits = 9;
    public readonly ushort[] Lookup = new ushort[1 << LookupBits];      // (length << 8) | symbol; 0 for a longer code
    public readonly int[] MaxCode = new int[17], MinCode = new int[17], ValueOffset = new int[17];
    public required byte[] Symbols;

    /// <summary>Every table in one DHT segment into <paramref name="tables"/> (DC 0..3, AC 4..7).</summary>
    public static void ParseSegment(ReadOnlySpan<byte> b, JpegHuffmanTable?[] tables, string label, long at)
    {
        while (b.Length > 0)
        {
            if (b.Length < 17) throw ImageLoadException.Corrupt(label, $"DHT segment at byte {at} ends inside a table header");
            int tc = b[0] >> 4, th = b[0] & 15;
            if (tc > 1 || th > 3) throw ImageLoadException.Corrupt(label, $"DHT segment at byte {at} defines table class {tc} id {th}");
            var counts = b.Slice(1, 16);
            int total = 0;
            foreach (byte c in counts) total += c;
            if (total > 256 || b.Length < 17 + total)
                throw ImageLoadException.Corrupt(label, $"DHT segment at byte {at} lists {total} codes in {b.Length - 17} bytes");
            var t = new JpegHuffmanTable { Symbols = b.Slice(17, total).ToArray() };
            int code = 0, k = 0;
            for (int length = 1; length <= 16; length++)
            {
                int n = counts[length - 1];
                if (code + n > 1 << length) throw ImageLoadException.Corrupt(label, $"DHT segment at byte {at}: table {tc}/{th} has more codes than fit");
                t.ValueOffset[length] = k;
                t.MinCode[length] = code;
                t.MaxCode[length] = n > 0 ? code + n - 1 : -1;
                for (int j = 0; j < n && length <= LookupBits; j++)
                {
                    int shift = LookupBits - length, first = (code + j) << shift;
                    ushort entry = (ushort)((length << 8) | t.Symbols[k + j]);
                    t.Lookup.AsSpan(first, 1 << shift).Fill(entry);
                }
                code += n;
                k += n;
                code <<= 1;
            }
            tables[tc * 4 + th] = t;
            b = b[(17 + total)..];
        }
    }
}
