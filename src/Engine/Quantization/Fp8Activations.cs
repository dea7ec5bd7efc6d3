using MetaLoraNative.Engine.IO;

namespace MetaLoraNative.Engine.Quantization;

/// <summary>
/// The activation side of the W8A8 forward product (<see cref="IBackend.LinearQuantizedW8A8"/>): x quantised to OCP
/// E4M3 with one per-tensor scale s_x = amax(|x|) / 448, so x's largest magnitude maps to ±448 and nothing saturates.
/// The rule every backend follows, bit for bit (kernels/dev/quant/02_fp8_activations.cu on CUDA):
/// <list type="bullet">
/// <item>amax = max |x| over the whole tensor, as an fp32 (x's values are exact in fp32 on the GPU, bf16);</item>
/// <item>s_x = amax / 448 in fp32; 1 when amax = 0 (an all-zero x quantises to zeros); NaN when amax is NaN or
/// infinite, i.e. when any x is: every code is then NaN and so is every output, so a diverged activation stays a
/// NaN loss instead of being hidden by saturation;</item>
/// <item>q = e4m3(x / s_x), the division in fp32, then <see cref="HalfPrecision.FloatToFloat8E4M3"/>
/// (nearest-even, saturating to ±448; only a rounding of the division can reach past 448, and it saturates).</item>
/// </list>
/// E4M3 keeps 4 significant bits: each quantised activation is within half an ulp, 2^-4 of its magnitude, in the
/// normal range (|x| ≥ 2^-6 · s_x), and within 2^-10 · s_x below it.
/// </summary>
public static class Fp8Activations
{
    /// <summary>The per-tensor scale for an amax (fp32, as the device computes it).</summary>
    public static float Scale(float amax)
    {
        if (!float.IsFinite(amax)) return float.NaN;
        return amax > 0f ? amax / HalfPrecision.Float8E4M3Max : 1f;
    }

    /// <summary>
    /// max |v| with NaN winning over everything and +inf over every finite value: the order of |v|'s fp32 bits, which
    /// is what the device's atomicMax over those bits computes.
    /// </summary>
    public static float Amax(ReadOnlySpan<float> values)
    {
        uint m = 0;
        foreach (float v in values) m = Math.Max(m, BitConverter.SingleToUInt32Bits(v) & 0x7FFF_FFFFu);
        return BitConverter.UInt32BitsToSingle(m);
    }

    /// <summary>The E4M3 code of one activation under scale s.</summary>
    public static byte Quantize(float x, float scale) => HalfPrecision.FloatToFloat8E4M3(x / scale);

    /// <summary>METALORA_FP8_MATMUL=1 (or true/on) asks for W8A8 forward products on an fp8 base; unset or 0 for W8A16.</summary>
    public static bool FromEnvironment() => Parse(Environment.GetEnvironmentVariable(EnvironmentVariable));

    public const string EnvironmentVariable = "METALORA_FP8_MATMUL";

    /// <summary>"1", "true", "on" → true; empty, "0", "false", "off" → false; anything else fails naming the variable.</summary>
    public static bool Parse(string? text) => text?.Trim().ToLowerInvariant() switch
    {
        null or "" or "0" or "false" or "off" => false,
        "1" or "true" or "on" => true,
        _ => throw new InputException(EnvironmentVariable, $"{EnvironmentVariable}={text}: expected 1 (W8A8 forward products on an fp8 base) or 0"),
    };
}
