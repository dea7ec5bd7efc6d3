namespace MetaLoraNative.Engine.Flux;

/// <summary>
/// BFL's LastLayer (the model's final_layer): adaLN (shift, scale) from silu(vec), LayerNorm without affine
/// (norm_final), linear C → out channels. Not a LoRA target; its backward only carries the gradient to the
/// transformer output (vec is not trained). Shapes: B batch, L image tokens, C hidden.
/// </summary>
public sealed class LastLayer(FluxWeights w)
{
    public Linear AdaLnModulation { get; } = Linear.From(w, "final_layer.adaLN_modulation.1");
    public Linear Linear { get; } = Linear.From(w, "final_layer.linear");

    /// <summary>What the layer keeps for its backward.</summary>
    public sealed class LayerActivations : Activations
    {
        public required Tensor X { get; init; }        // (B, L, C) layer input: borrowed (the model state's)
        public required Tensor Scale { get; init; }    // (B, C) adaLN scale (the shift needs nothing kept)
        public required Tensor Stats { get; init; }    // (B·L, 2) mean, rstd of LayerNorm(x)
        public required Tensor Normed { get; init; }   // (B, L, C) (1 + scale)·LN(x) + shift, the linear input

        protected override IEnumerable<IDisposable?> Owned() => [Scale, Stats, Normed];
    }

    /// <summary>x (B, L, C), siluVec (B, C) → (B, L, out).</summary>
    public Tensor Forward(Tensor x, Tensor siluVec, out LayerActivations saved)
    {
        var be = x.Backend;
        int C = x.Dim(-1);
        using var mod = AdaLnModulation.Forward(siluVec, null);                // (B, 2C): shift, scale
        using var shift = be.Narrow(mod, -1, 0, C);
        var scale = be.Narrow(mod, -1, C, C);
        var normed = be.LayerNormModulate(x, shift, scale, FluxConfig.NormEps, out var stats);
        saved = new LayerActivations { X = x, Scale = scale, Stats = stats, Normed = normed };
        return Linear.Forward(normed, null);
    }

    /// <summary>dy (B, L, out) → dx (B, L, C).</summary>
    public Tensor Backward(LayerActivations s, Tensor dy)
    {
        using var dNormed = Linear.Backward(s.Normed, dy, null);
        var (dx, dShift, dScale) = dy.Backend.LayerNormModulateBackward(dNormed, s.X, s.Scale, s.Stats);
        dShift.Dispose();
        dScale.Dispose();
        return dx;
    }
}
