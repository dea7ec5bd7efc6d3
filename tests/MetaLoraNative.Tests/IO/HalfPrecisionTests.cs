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
}
