using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Quantization;

namespace MetaLoraNative.Engine.Flux;

/// <summary>
/// A frozen linear W0 (+ bias) under its BFL name, with whatever LoRA targets the bound adapter places in its
/// output rows (q, k and v are three targets inside one fused qkv linear). y = x·W0ᵀ + b + Σ deltas.
/// W0 is a tensor in the compute type, or, on an fp8 base, a <see cref="QuantizedWeight"/> that the products
/// dequantise on the fly; the model reads the same either way. W0 and the bias get no gradient; the LoRA factors
/// accumulate theirs with +=.
/// </summary>
public sealed class Linear
{
    public Linear(string name, Tensor weight, Tensor? bias)
    {
        Name = name;
        Weight = weight;
        Bias = bias;
    }

    public Linear(string name, QuantizedWeight weight, Tensor? bias)
    {
        Name = name;
        Quantized = weight;
        Bias = bias;
    }

    /// <summary>BFL module name, e.g. double_blocks.3.img_attn.qkv.</summary>
    public string Name { get; }
    public Tensor? Weight { get; }                // (d_out, d_in), or null when the weight is quantised
    public QuantizedWeight? Quantized { get; }    // (d_out, d_in) E4M3 with a scale per row, or null
    public Tensor? Bias { get; }                  // (d_out)

    /// <summary>
    /// On an fp8 weight, whether the forward product quantises x too (W8A8, <see cref="IBackend.LinearQuantizedW8A8"/>)
    /// instead of dequantising the weight (W8A16). The backward is W8A16's either way: dx = dy·W0 through the
    /// dequantised weight, the activation rounding taken as the identity (straight-through). The model sets it
    /// (<see cref="FluxModel.Fp8Matmul"/>); it means nothing on a bf16 weight.
    /// </summary>
    public bool QuantizeActivations { get; set; }

    IBackend Backend => Weight?.Backend ?? Quantized!.Backend;

    public static Linear From(FluxWeights w, string name) =>
        w.Quantized(name + ".weight") is { } q ? new(name, q, w.TryGet(name + ".bias"))
            : new(name, w[name + ".weight"], w.TryGet(name + ".bias"));

    /// <summary>x (.., d_in) → (.., d_out).</summary>
    public Tensor Forward(Tensor x, LoraBinding? lora)
    {
        var y = Weight is { } w ? Backend.Linear(x, w, Bias)
            : QuantizeActivations ? Backend.LinearQuantizedW8A8(x, Quantized!, Bias)
            : Backend.LinearQuantized(x, Quantized!, Bias);
        lora?.AddDelta(Name, x, y);
        return y;
    }

    /// <summary>x (.., d_in), dy (.., d_out) → dx (.., d_in), through W0 and the LoRA deltas; accumulates the LoRA gradients.</summary>
    public Tensor Backward(Tensor x, Tensor dy, LoraBinding? lora)
    {
        var dx = Weight is { } w ? Backend.LinearBackward(dy, w) : Backend.LinearQuantizedBackward(dy, Quantized!);
        lora?.Backward(Name, x, dy, dx);
        return dx;
    }

    /// <summary>
    /// Only the LoRA gradients, no dx: for the modulation linears, whose input silu(vec) feeds nothing trained.
    /// </summary>
    public void AccumulateLoraGradients(Tensor x, Tensor dy, LoraBinding lora) => lora.Backward(Name, x, dy, null);
}
