using MetaLoraNative.Engine.Lora;

namespace MetaLoraNative.Engine.Flux;

/// <summary>
/// A frozen linear W0 (+ bias) under its BFL name, with whatever LoRA targets the bound adapter places in its
/// output rows (q, k and v are three targets inside one fused qkv linear). y = x·W0ᵀ + b + Σ deltas.
/// W0 and the bias get no gradient; the LoRA factors accumulate theirs with +=.
/// </summary>
public sealed class Linear(string name, Tensor weight, Tensor? bias)
{
    /// <summary>BFL module name, e.g. double_blocks.3.img_attn.qkv.</summary>
    public string Name { get; } = name;
    public Tensor Weight { get; } = weight;   // (d_out, d_in)
    public Tensor? Bias { get; } = bias;      // (d_out)

    public static Linear From(FluxWeights w, string name) =>
        new(name, w[name + ".weight"], w.TryGet(name + ".bias"));

    /// <summary>x (.., d_in) → (.., d_out).</summary>
    public Tensor Forward(Tensor x, LoraBinding? lora)
    {
        var y = Weight.Backend.Linear(x, Weight, Bias);
        lora?.AddDelta(Name, x, y);
        return y;
    }

    /// <summary>x (.., d_in), dy (.., d_out) → dx (.., d_in), through W0 and the LoRA deltas; accumulates the LoRA gradients.</summary>
    public Tensor Backward(Tensor x, Tensor dy, LoraBinding? lora)
    {
        var dx = Weight.Backend.LinearBackward(dy, Weight);
        lora?.Backward(Name, x, dy, dx);
        return dx;
    }

    /// <summary>
    /// Only the LoRA gradients, no dx: for the modulation linears, whose input silu(vec) feeds nothing trained.
    /// </summary>
    public void AccumulateLoraGradients(Tensor x, Tensor dy, LoraBinding lora) => lora.Backward(Name, x, dy, null);
}
