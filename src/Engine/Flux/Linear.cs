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
    /// As <see cref="Backward(Tensor, Tensor, LoraBinding?)"/>, dx (.., d_in) written into the given tensor (a view of a
    /// wider one: a stream's rows of the joint attention gradient), which the LoRA deltas then accumulate into.
    /// </summary>
    public void Backward(Tensor x, Tensor dy, LoraBinding? lora, Tensor dx)
    {
        if (Weight is { } w) Backend.Gemm(dy, false, w, false, dx);   // dx = dy·W0, the product LinearBackward forms
        else
        {
            using var d = Backend.LinearQuantizedBackward(dy, Quantized!);
            Backend.Copy(d, dx);
        }
        lora?.Backward(Name, x, dy, dx);
    }

    /// <summary>
    /// The forward with FLUX's GELU after it, fused (Fusions.GeluEpilogue, mlp.0): x (.., d_in) → pre (.., d_out), the
    /// value <see cref="Forward"/> returns, and act = gelu_tanh(pre). The LoRA deltas are formed first (c0, LoraBinding.Delta)
    /// and the frozen product accumulates onto them inside <see cref="IBackend.LinearGelu"/>, so the GELU sees
    /// x·W0ᵀ + b + Σ deltas as in the unfused form. An fp8 weight runs Forward and GeluTanh.
    /// </summary>
    public (Tensor Pre, Tensor Act) ForwardGelu(Tensor x, LoraBinding? lora)
    {
        if (Weight is not { } w)
        {
            var pre = Forward(x, lora);
            return (pre, Backend.GeluTanh(pre));
        }
        using var delta = lora?.Delta(Name, x, w.Dim(0));                     // (.., d_out) Σ deltas, or null
        return Backend.LinearGelu(x, w, Bias, delta);
    }

    /// <summary>
    /// The backward of a linear whose input is act = gelu_tanh(pre) (mlp.2 after mlp.0's <see cref="ForwardGelu"/>),
    /// through the GELU: x = act (.., d_in), pre (.., d_in), dy (.., d_out) → d pre = (dy·W0 + LoRA dx) ⊙ gelu'(pre).
    /// The LoRA part of dx is formed first (c0, LoraBinding.InputGradient: what <see cref="Backward"/> adds to dx) and the
    /// frozen product accumulates onto it inside <see cref="IBackend.LinearBackwardGelu"/>; the LoRA gradients accumulate as
    /// in Backward. An fp8 weight runs Backward and GeluTanhBackward.
    /// </summary>
    public Tensor BackwardGelu(Tensor x, Tensor pre, Tensor dy, LoraBinding? lora)
    {
        if (Weight is not { } w)
        {
            using var dAct = Backward(x, dy, lora);
            return Backend.GeluTanhBackward(pre, dAct);
        }
        using var loraDx = lora?.InputGradient(Name, x, dy);                  // (.., d_in) the LoRA part of d act, or null
        return Backend.LinearBackwardGelu(dy, w, pre, loraDx);
    }

    /// <summary>
    /// Only the LoRA gradients, no dx: for the modulation linears, whose input silu(vec) feeds nothing trained.
    /// </summary>
    public void AccumulateLoraGradients(Tensor x, Tensor dy, LoraBinding lora) => lora.Backward(Name, x, dy, null);
}
