namespace MetaLoraNative.Engine.Quantization;

/// <summary>How the frozen transformer base is held on the backend.</summary>
public enum BaseDType
{
    /// <summary>Every weight in the backend's compute type: bf16 on CUDA, the element type (fp32/fp64) on the CPU.</summary>
    Bf16,
    /// <summary>
    /// The block linears in E4M3 with one fp32 scale per output channel (W8A16, <see cref="QuantizedWeight"/>); the
    /// embedders, the final layer, biases and norm scales as in <see cref="Bf16"/>.
    /// </summary>
    Fp8,
}

/// <summary>Names, parsing and the quantisation rule of <see cref="BaseDType"/>.</summary>
public static class BaseDTypes
{
    /// <summary>The spellings the command line takes, "auto" meaning "let the memory planner choose".</summary>
    public static IReadOnlyList<string> Choices { get; } = ["auto", "bf16", "fp8"];

    public static string Name(BaseDType d) => d == BaseDType.Fp8 ? "fp8" : "bf16";

    /// <summary>"bf16" or "fp8" → the dtype, "auto" → null; anything else fails naming the flag.</summary>
    public static BaseDType? Parse(string text, string flag = "--base-dtype") => text switch
    {
        "bf16" => BaseDType.Bf16,
        "fp8" => BaseDType.Fp8,
        "auto" => null,
        _ => throw new InputException(flag, $"'{text}' is not a base dtype; use {string.Join(", ", Choices)}"),
    };

    /// <summary>
    /// Whether an fp8 base holds this checkpoint tensor in E4M3: the weights of the linears inside the double and
    /// single blocks (qkv, proj, MLPs, linear1/2 and the modulation linears: 99.5% of FLUX.1-dev's parameters).
    /// The embedders (img_in, txt_in, time/vector/guidance MLPs) and the final layer stay in the compute type: they
    /// are 0.5% of the bytes, they meet the raw inputs and the prediction directly, and vec feeds every block's
    /// modulation, so their rounding would reach every layer instead of averaging out inside one. Biases and norm
    /// scales are vectors and stay too.
    /// </summary>
    public static bool Quantizes(string name) =>
        (name.StartsWith("double_blocks.", StringComparison.Ordinal) || name.StartsWith("single_blocks.", StringComparison.Ordinal))
        && name.EndsWith(".weight", StringComparison.Ordinal);
}
