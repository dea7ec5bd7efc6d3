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

/// <summary>
/// BFL's LastLayer: adaLN (shift, scale) from silu(vec), LayerNorm without affine, Linear C → out channels.
/// Not a LoRA target; its backward only carries the gradient to the transformer output.
/// </summary>
public sealed class FinalLayer(FluxWeights w)
{
    public Linear AdaLn { get; } = Linear.From(w, "final_layer.adaLN_modulation.1");
    public Linear Proj { get; } = Linear.From(w, "final_layer.linear");

    public sealed class State : Activations
    {
        public Tensor X = null!, Scale = null!, Stats = null!, Normed = null!;
    }

    /// <summary>x (B, L_img, C), siluVec (B, C) → (B, L_img, out).</summary>
    public Tensor Forward(Tensor x, Tensor siluVec, out State s)
    {
        var be = x.Backend;
        s = new State { X = x };
        using var mod = AdaLn.Forward(siluVec, null);                 // (B, 2C): shift, scale
        int C = x.Dim(-1);
        using var shift = be.Narrow(mod, -1, 0, C);
        s.Scale = s.Keep(be.Narrow(mod, -1, C, C));
        s.Normed = s.Keep(be.LayerNormModulate(x, shift, s.Scale, FluxConfig.NormEps, out var stats));
        s.Stats = s.Keep(stats);
        return Proj.Forward(s.Normed, null);
    }

    public Tensor Backward(State s, Tensor dy)
    {
        using var dNormed = Proj.Backward(s.Normed, dy, null)!;
        var (dx, dShift, dScale) = dy.Backend.LayerNormModulateBackward(dNormed, s.X, s.Scale, s.Stats);
        dShift.Dispose();
        dScale.Dispose();
        return dx;
    }
}
