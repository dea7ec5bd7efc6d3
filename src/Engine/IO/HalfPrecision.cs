using System.Buffers.Binary;
using System.Runtime.InteropServices;

namespace MetaLoraNative.Engine.IO;

/// <summary>
/// Scalar and span conversions between fp32 and the narrow float formats found in checkpoints.
/// Used by the safetensors reader and writer, the GPU upload and download paths and the GPU's bf16 emulation: the
/// one host copy of the bf16 rounding, identical to the kernels' f2bf (kernels/common.cuh). They must agree bit for
/// bit with PyTorch: bf16 rounds to nearest, ties to even; F16 goes through <see cref="Half"/> (also
/// round-to-nearest-even); F8_E4M3 is the OCP "E4M3FN" variant PyTorch calls float8_e4m3fn (bias 7, no infinities,
/// S.1111.111 is NaN).
/// </summary>
public static class HalfPrecision
{
    /// <summary>fp32 → bf16 bits, round-to-nearest-even; NaN stays NaN (forced quiet so it cannot become ±inf).</summary>
    public static ushort FloatToBFloat16(float f)
    {
        uint bits = BitConverter.SingleToUInt32Bits(f);
        if ((bits & 0x7FFF_FFFFu) > 0x7F80_0000u)
            // Truncating a NaN whose payload sits only in the low 16 bits would leave an infinity; set the quiet bit.
            return (ushort)((bits >> 16) | 0x0040u);
        // Adding 0x7FFF plus the lowest kept bit rounds ties towards the even result; overflow into the exponent
        // is correct (it rounds up to the next binade or to infinity, as IEEE requires).
        uint lsb = (bits >> 16) & 1u;
        return (ushort)((bits + 0x7FFFu + lsb) >> 16);
    }

    /// <summary>bf16 bits → fp32; exact (bf16 is the top half of an fp32).</summary>
    public static float BFloat16ToFloat(ushort b) => BitConverter.UInt32BitsToSingle((uint)b << 16);

    /// <summary>The bf16 value nearest to f (ties to even), as an fp32: what a bf16 store keeps of f.</summary>
    public static float RoundToBFloat16(float f) => BFloat16ToFloat(FloatToBFloat16(f));

    /// <summary>fp32 → IEEE half bits via <see cref="Half"/> (round-to-nearest-even, overflow to ±inf).</summary>
    public static ushort FloatToHalfBits(float f) => BitConverter.HalfToUInt16Bits((Half)f);

    /// <summary>IEEE half bits → fp32; exact.</summary>
    public static float HalfBitsToFloat(ushort h) => (float)BitConverter.UInt16BitsToHalf(h);

    /// <summary>The largest finite E4M3FN magnitude, 1.75 · 2^8 (0x7E).</summary>
    public const float Float8E4M3Max = 448f;

    /// <summary>OCP E4M3FN byte → fp32; exact. 0x38 = 1, 0x7E = 448 (the largest), 0x01 = 2^-9 (the smallest subnormal).</summary>
    public static float Float8E4M3ToFloat(byte b) => E4M3Table[b];

    /// <summary>
    /// fp32 → OCP E4M3FN byte: round to nearest, ties to even, saturating (the OCP spec's conversion with
    /// saturation): finite values beyond ±448 and ±infinity become ±448, NaN becomes S.1111.111 with its sign, and
    /// magnitudes up to half the smallest subnormal (2^-10) become ±0. The fp32 input is the only rounding step.
    /// </summary>
    public static byte FloatToFloat8E4M3(float f)
    {
        uint bits = BitConverter.SingleToUInt32Bits(f);
        uint sign = (bits >> 24) & 0x80u, abs = bits & 0x7FFF_FFFFu;
        if (abs > 0x7F80_0000u) return (byte)(sign | 0x7Fu);               // NaN
        if (abs >= 0x43E0_0000u) return (byte)(sign | 0x7Eu);              // ≥ 448 or infinite: saturate
        int exponent = (int)(abs >> 23) - 127;                              // fp32's unbiased exponent
        if (exponent < -6)
        {
            // E4M3's subnormal range (and zero): the value in units of 2^-9, rounded to an integer 0..8. Scaling
            // by 2^9 is exact in fp32, and 8 units is the smallest normal, 0x08, so the carry needs no special case.
            float units = BitConverter.UInt32BitsToSingle(abs) * 512f;
            return (byte)(sign | (uint)MathF.Round(units, MidpointRounding.ToEven));
        }
        // Normal: keep the top 3 of fp32's 23 mantissa bits and round the other 20 to nearest, ties to even. A carry
        // out of the mantissa moves into the exponent, which the addition does by itself. The largest code reachable
        // below 448 is 0x7E (447.99 rounds to 448), so the NaN pattern 0x7F never comes out of here.
        uint mantissa = abs & 0x7F_FFFFu, kept = mantissa >> 20, rest = mantissa & 0xF_FFFFu;
        uint code = ((uint)(exponent + 7) << 3) | kept;
        if (rest > 0x8_0000u || (rest == 0x8_0000u && (kept & 1u) != 0)) code++;
        return (byte)(sign | code);
    }

    /// <summary>Converts a span of fp32 to E4M3FN bytes (<see cref="FloatToFloat8E4M3"/>: nearest-even, saturating).</summary>
    public static void FloatsToFloat8E4M3(ReadOnlySpan<float> source, Span<byte> destination)
    {
        if (destination.Length != source.Length)
            throw new ArgumentException($"destination holds {destination.Length} elements, source {source.Length}", nameof(destination));
        for (int i = 0; i < source.Length; i++) destination[i] = FloatToFloat8E4M3(source[i]);
    }

    // 256 entries is cheaper than branching per element when decoding whole tensors.
    private static readonly float[] E4M3Table = BuildE4M3Table();

    private static float[] BuildE4M3Table()
    {
        var table = new float[256];
        for (int i = 0; i < 256; i++)
        {
            int sign = i >> 7, exponent = (i >> 3) & 0xF, mantissa = i & 0x7;
            float magnitude;
            if (exponent == 0xF && mantissa == 0x7) magnitude = float.NaN;      // the only NaN encodings; no infinities
            else if (exponent == 0) magnitude = mantissa / 8f * MathF.Pow(2, -6); // subnormal: 0.m × 2^(1−bias)
            else magnitude = (1 + mantissa / 8f) * MathF.Pow(2, exponent - 7);
            table[i] = sign == 1 ? -magnitude : magnitude;
        }
        return table;
    }

    /// <summary>Converts a span of fp32 to bf16 bits (round-to-nearest-even).</summary>
    public static void FloatsToBFloat16(ReadOnlySpan<float> source, Span<ushort> destination)
    {
        if (destination.Length != source.Length)
            throw new ArgumentException($"destination holds {destination.Length} elements, source {source.Length}", nameof(destination));
        for (int i = 0; i < source.Length; i++) destination[i] = FloatToBFloat16(source[i]);
    }

    /// <summary>Converts a span of bf16 bits to fp32 (exact).</summary>
    public static void BFloat16ToFloats(ReadOnlySpan<ushort> source, Span<float> destination)
    {
        if (destination.Length != source.Length)
            throw new ArgumentException($"destination holds {destination.Length} elements, source {source.Length}", nameof(destination));
        for (int i = 0; i < source.Length; i++) destination[i] = BFloat16ToFloat(source[i]);
    }

    /// <summary>
    /// Decodes <paramref name="source"/> (little-endian elements of <paramref name="dtype"/>) into fp32.
    /// Integers convert with the usual rounding (large I64 values lose precision); BOOL is 0 or 1.
    /// The source may be unaligned: it usually points into a memory-mapped file at an arbitrary offset.
    /// </summary>
    public static void Decode(SafetensorsDType dtype, ReadOnlySpan<byte> source, Span<float> destination)
    {
        int size = SafetensorsDTypes.Size(dtype);
        if ((long)destination.Length * size != source.Length)
            throw new ArgumentException(
                $"{source.Length} bytes of {dtype} do not make {destination.Length} elements", nameof(destination));

        // The fast paths reinterpret bytes as little-endian words, so they are only valid on little-endian hosts.
        bool le = BitConverter.IsLittleEndian;
        switch (dtype)
        {
            case SafetensorsDType.F32 when le:
                source.CopyTo(MemoryMarshal.AsBytes(destination));
                break;
            case SafetensorsDType.BF16 when le:
            {
                var words = MemoryMarshal.Cast<byte, ushort>(source);
                for (int i = 0; i < words.Length; i++) destination[i] = BitConverter.UInt32BitsToSingle((uint)words[i] << 16);
                break;
            }
            case SafetensorsDType.F16 when le:
            {
                var halves = MemoryMarshal.Cast<byte, Half>(source);
                for (int i = 0; i < halves.Length; i++) destination[i] = (float)halves[i];
                break;
            }
            case SafetensorsDType.F8_E4M3:
                for (int i = 0; i < source.Length; i++) destination[i] = E4M3Table[source[i]];
                break;
            case SafetensorsDType.U8:
                for (int i = 0; i < source.Length; i++) destination[i] = source[i];
                break;
            case SafetensorsDType.BOOL:
                for (int i = 0; i < source.Length; i++) destination[i] = source[i] != 0 ? 1f : 0f;
                break;
            default:
                DecodePortable(dtype, source, destination);
                break;
        }
    }

    private static void DecodePortable(SafetensorsDType dtype, ReadOnlySpan<byte> s, Span<float> d)
    {
        switch (dtype)
        {
            case SafetensorsDType.F64:
                for (int i = 0; i < d.Length; i++) d[i] = (float)BinaryPrimitives.ReadDoubleLittleEndian(s.Slice(i * 8));
                break;
            case SafetensorsDType.F32:
                for (int i = 0; i < d.Length; i++) d[i] = BinaryPrimitives.ReadSingleLittleEndian(s.Slice(i * 4));
                break;
            case SafetensorsDType.F16:
                for (int i = 0; i < d.Length; i++) d[i] = (float)BinaryPrimitives.ReadHalfLittleEndian(s.Slice(i * 2));
                break;
            case SafetensorsDType.BF16:
                for (int i = 0; i < d.Length; i++) d[i] = BFloat16ToFloat(BinaryPrimitives.ReadUInt16LittleEndian(s.Slice(i * 2)));
                break;
            case SafetensorsDType.I64:
                for (int i = 0; i < d.Length; i++) d[i] = BinaryPrimitives.ReadInt64LittleEndian(s.Slice(i * 8));
                break;
            case SafetensorsDType.I32:
                for (int i = 0; i < d.Length; i++) d[i] = BinaryPrimitives.ReadInt32LittleEndian(s.Slice(i * 4));
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "not a safetensors dtype");
        }
    }
}
