namespace MetaLoraNative.Engine.Flux;

/// <summary>BFL's MLPEmbedder: in_layer → SiLU → out_layer. No LoRA targets; vec is not differentiated.</summary>
public sealed class MlpEmbedder(FluxWeights w, string name)
{
    public Linear InLayer { get; } = Linear.From(w, $"{name}.in_layer");
    public Linear OutLayer { get; } = Linear.From(w, $"{name}.out_layer");

    /// <summary>x (B, d_in) → (B, C).</summary>
    public Tensor Forward(Tensor x)
    {
        using var h = InLayer.Forward(x, null);
        using var a = h.Backend.Silu(h);
        return OutLayer.Forward(a, null);
    }
}
