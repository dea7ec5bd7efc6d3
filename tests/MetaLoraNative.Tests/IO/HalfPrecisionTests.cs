using MetaLoraNative.Engine.IO;

namespace MetaLoraNative.Tests.IO;

public class HalfPrecisionTests
{
    // Expected bits worked out by hand: bf16 keeps the top 16 bits; the low 16 decide rounding (ties to even).
    [Theory]
    [InlineData(0x3F80_0000u, (ushort)0x3F80)] // 1.0 exactly
    [InlineData(0x3F80_7FFFu, (ushort)0x3F80)] // just below half an ulp: down
    [InlineData(0x3F80_8000u, (ushort)0x3F80)] // exact tie, 0x3F80 is even: stays
    [InlineData(0x3F81_8000u, (ushort)0x3F82)] // exact tie, 0x3F81 is odd: up to even
    [InlineData(0x3F80_8001u, (ushort)0x3F81)] // just above half: up
    [InlineData(0x3F80_FFFFu, (ushort)0x3F81)]
    [InlineData(0x3FFF_FFFFu, (ushort)0x4000)] // carry into the exponent: 1.99999... rounds to 2.0
    [InlineData(0x7F7F_FFFFu, (ushort)0x7F80)] // float.MaxValue rounds to +inf, as in PyTorch
    [InlineData(0x7F80_0000u, (ushort)0x7F80)] // +inf
    [InlineData(0xFF80_0000u, (ushort)0xFF80)] // -inf
    [InlineData(0x8000_0000u, (ushort)0x8000)] // -0
    [InlineData(0xC049_0FDBu, (ushort)0xC049)] // -pi: low half 0x0FDB < 0x8000, down
    [InlineData(0x0000_0001u, (ushort)0x0000)] // smallest fp32 subnormal rounds to +0
    [InlineData(0x7FC0_0000u, (ushort)0x7FC0)] // quiet NaN
    [InlineData(0x7F80_0001u, (ushort)0x7FC0)] // NaN with payload only in the low bits must not become inf
    [InlineData(0xFFC1_2345u, (ushort)0xFFC1)] // negative NaN keeps sign and high payload
    public void FloatToBFloat16RoundsToNearestEven(uint floatBits, ushort expected)
    {
        ushort got = HalfPrecision.FloatToBFloat16(BitConverter.UInt32BitsToSingle(floatBits));
        Assert.Equal(expected, got);
    }

    [Fact]
    public void BFloat16ToFloatIsTheTopHalf()
    {
        Assert.Equal(1f, HalfPrecision.BFloat16ToFloat(0x3F80));
        Assert.Equal(-2f, HalfPrecision.BFloat16ToFloat(0xC000));
        Assert.Equal(float.PositiveInfinity, HalfPrecision.BFloat16ToFloat(0x7F80));
        Assert.True(float.IsNaN(HalfPrecision.BFloat16ToFloat(0x7FC0)));
        // Every bf16 value survives a round trip through fp32.
        for (int b = 0; b < 65536; b++)
        {
            float f = HalfPrecision.BFloat16ToFloat((ushort)b);
            if (!float.IsNaN(f)) Assert.Equal((ushort)b, HalfPrecision.FloatToBFloat16(f));
        }
    }

    /// <summary>The rounding every bf16 store uses (GPU uploads, the bf16 emulation, parity inputs), as an fp32.</summary>
    [Fact]
    public void RoundToBFloat16KeepsTheNearestEvenBf16Value()
    {
        Assert.Equal(1f, HalfPrecision.RoundToBFloat16(1f));
        Assert.Equal(1f, HalfPrecision.RoundToBFloat16(BitConverter.UInt32BitsToSingle(0x3f808000)));            // tie -> even (down)
        Assert.Equal(BitConverter.UInt32BitsToSingle(0x3f820000), HalfPrecision.RoundToBFloat16(BitConverter.UInt32BitsToSingle(0x3f818000)));   // tie -> even (up)
        Assert.Equal(BitConverter.UInt32BitsToSingle(0x3f810000), HalfPrecision.RoundToBFloat16(BitConverter.UInt32BitsToSingle(0x3f808001)));
        Assert.True(float.IsNaN(HalfPrecision.RoundToBFloat16(float.NaN)));
        Assert.Equal(float.PositiveInfinity, HalfPrecision.RoundToBFloat16(float.PositiveInfinity));
        Assert.Equal(0.010009765625f, HalfPrecision.RoundToBFloat16(0.01f));   // 0x3C24: 0x3C23D70A rounds up
    }

    [Fact]
    public void SpanConversionsMatchTheScalarOnesAndCheckLengths()
    {
        float[] f = [1f, -2.75f, 0.01f, float.NaN, 3.4e38f];
        var bits = new ushort[f.Length];
        HalfPrecision.FloatsToBFloat16(f, bits);
        Assert.Equal(f.Select(HalfPrecision.FloatToBFloat16), bits);
        var back = new float[f.Length];
        HalfPrecision.BFloat16ToFloats(bits, back);
        Assert.Equal(f.Select(HalfPrecision.RoundToBFloat16), back);
        Assert.Throws<ArgumentException>(() => HalfPrecision.BFloat16ToFloats(bits, new float[2]));
    }

    [Theory]
    [InlineData(0x00, 0f)]
    [InlineData(0x38, 1f)]          // 0.0111.000: 2^(7-7)
    [InlineData(0xB8, -1f)]
    [InlineData(0x3C, 1.5f)]        // mantissa 100 = 0.5
    [InlineData(0x30, 0.5f)]        // exponent 6
    [InlineData(0x40, 2f)]
    [InlineData(0x7E, 448f)]        // 0.1111.110: 2^8 * 1.75, the largest finite value
    [InlineData(0xFE, -448f)]
    [InlineData(0x78, 256f)]        // 0.1111.000 is a normal number in E4M3FN (no infinities)
    [InlineData(0x08, 0.015625f)]   // smallest normal: 2^-6
    [InlineData(0x01, 0.001953125f)] // smallest subnormal: 1/8 * 2^-6 = 2^-9
    [InlineData(0x04, 0.0078125f)]  // subnormal 4/8 * 2^-6
    [InlineData(0x07, 0.013671875f)] // largest subnormal 7/8 * 2^-6
    [InlineData(0x87, -0.013671875f)]
    public void Float8E4M3DecodesLikeOcpE4M3FN(int bits, float expected) =>
        Assert.Equal(expected, HalfPrecision.Float8E4M3ToFloat((byte)bits));

    [Fact]
    public void Float8E4M3NaNsAndNegativeZero()
    {
        Assert.True(float.IsNaN(HalfPrecision.Float8E4M3ToFloat(0x7F)));
        Assert.True(float.IsNaN(HalfPrecision.Float8E4M3ToFloat(0xFF)));
        float negZero = HalfPrecision.Float8E4M3ToFloat(0x80);
        Assert.Equal(0f, negZero);
        Assert.True(float.IsNegative(negZero));
        // Only the two NaN codes are non-finite; everything else is finite and within ±448.
        for (int b = 0; b < 256; b++)
        {
            float f = HalfPrecision.Float8E4M3ToFloat((byte)b);
            if ((b & 0x7F) == 0x7F) continue;
            Assert.True(float.IsFinite(f) && MathF.Abs(f) <= 448f, $"0x{b:X2} -> {f}");
        }
    }

    [Fact]
    public void HalfBitsRoundTrip()
    {
        Assert.Equal((ushort)0x3C00, HalfPrecision.FloatToHalfBits(1f));
        Assert.Equal((ushort)0x7C00, HalfPrecision.FloatToHalfBits(70000f)); // above 65504: +inf
        Assert.Equal(65504f, HalfPrecision.HalfBitsToFloat(0x7BFF));
    }

    // ---------------------------------------------------------------- E4M3FN encoder (saturating, nearest-even)

    /// <summary>
    /// The OCP FP8 E4M3 definition written out independently of the engine's table: sign, 4 exponent bits with
    /// bias 7, 3 mantissa bits; exponent 0 is subnormal (m/8 · 2^-6); S.1111.111 is NaN; no infinities.
    /// </summary>
    internal static double OcpE4M3(int code)
    {
        int sign = code >> 7, e = (code >> 3) & 15, m = code & 7;
        if (e == 15 && m == 7) return double.NaN;
        double magnitude = e == 0 ? Math.ScaleB(m / 8.0, -6) : Math.ScaleB(1 + m / 8.0, e - 7);
        return sign == 1 ? -magnitude : magnitude;
    }

    /// <summary>
    /// The specified conversion by brute force: the nearest finite code, ties to the even mantissa (code & 1 == 0),
    /// |x| beyond 448 saturating to ±448, NaN to S.1111.111; ±0 keeps the sign of x.
    /// </summary>
    static byte Nearest(float x)
    {
        int sign = float.IsNegative(x) ? 0x80 : 0;
        if (float.IsNaN(x)) return (byte)(sign | 0x7F);
        double a = Math.Abs((double)x);
        if (a >= 448) return (byte)(sign | 0x7E);
        int best = 0;
        double bestErr = double.PositiveInfinity;
        for (int c = 0; c <= 0x7E; c++)
        {
            double err = Math.Abs(OcpE4M3(c) - a);
            if (err < bestErr || (err == bestErr && (c & 1) == 0)) { best = c; bestErr = err; }
        }
        return (byte)(sign | best);
    }

    [Fact]
    public void Float8E4M3DecodesEveryCodeAsTheOcpDefinition()
    {
        for (int c = 0; c < 256; c++)
        {
            double expected = OcpE4M3(c);
            float actual = HalfPrecision.Float8E4M3ToFloat((byte)c);
            if (double.IsNaN(expected)) Assert.True(float.IsNaN(actual), $"0x{c:X2}");
            else Assert.True(BitConverter.SingleToUInt32Bits((float)expected) == BitConverter.SingleToUInt32Bits(actual), $"0x{c:X2}: {actual} vs {expected}");
        }
    }

    [Fact]
    public void Float8E4M3EncodesEveryCodeAndEveryTieAsTheOcpDefinition()
    {
        var probes = new List<float>();
        for (int c = 0; c <= 0x7E; c++)
        {
            float v = (float)OcpE4M3(c);
            probes.AddRange([v, MathF.BitIncrement(v), MathF.BitDecrement(v)]);
            if (c < 0x7E)
            {
                // The midpoint to the next code is exact in fp32: it decides ties to even, and one ulp either side decides direction.
                float mid = (float)((OcpE4M3(c) + OcpE4M3(c + 1)) / 2);
                probes.AddRange([mid, MathF.BitIncrement(mid), MathF.BitDecrement(mid)]);
            }
        }
        probes.AddRange([0f, 464f, 479.9f, 480f, 1e30f, float.MaxValue, float.PositiveInfinity, float.Epsilon, 0.0009765625f /* 2^-10: a tie to 0 */]);
        var rng = new Random(7);
        for (int i = 0; i < 20_000; i++) probes.Add((float)Math.ScaleB(rng.NextDouble(), rng.Next(-14, 10)));
        foreach (float p in probes)
            foreach (float x in new[] { p, -p })
                Assert.True(Nearest(x) == HalfPrecision.FloatToFloat8E4M3(x),
                    $"{x:R} (0x{BitConverter.SingleToUInt32Bits(x):X8}): expected 0x{Nearest(x):X2}, got 0x{HalfPrecision.FloatToFloat8E4M3(x):X2}");
    }

    [Fact]
    public void Float8E4M3SaturatesAndKeepsNaNAndSignedZero()
    {
        Assert.Equal(0x7E, HalfPrecision.FloatToFloat8E4M3(float.PositiveInfinity));
        Assert.Equal(0xFE, HalfPrecision.FloatToFloat8E4M3(float.NegativeInfinity));
        Assert.Equal(0xFE, HalfPrecision.FloatToFloat8E4M3(-1000f));
        Assert.Equal(0x7F, HalfPrecision.FloatToFloat8E4M3(BitConverter.UInt32BitsToSingle(0x7FC0_0000)));   // NaN keeps its sign
        Assert.Equal(0xFF, HalfPrecision.FloatToFloat8E4M3(BitConverter.UInt32BitsToSingle(0xFFC0_0001)));
        Assert.Equal(0x80, HalfPrecision.FloatToFloat8E4M3(-0f));
        Assert.Equal(0x80, HalfPrecision.FloatToFloat8E4M3(-1e-4f));   // below 2^-10: a signed zero
        // Every finite code survives a round trip (0x80 too: -0).
        for (int c = 0; c < 256; c++)
            if ((c & 0x7F) != 0x7F) Assert.Equal(c, HalfPrecision.FloatToFloat8E4M3(HalfPrecision.Float8E4M3ToFloat((byte)c)));
        var bytes = new byte[3];
        HalfPrecision.FloatsToFloat8E4M3([1f, 448f, 500f], bytes);
        Assert.Equal(new byte[] { 0x38, 0x7E, 0x7E }, bytes);
        Assert.Throws<ArgumentException>(() => HalfPrecision.FloatsToFloat8E4M3([1f], new byte[2]));
    }
}
