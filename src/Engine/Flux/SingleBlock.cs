using MetaLoraNative.Engine.Lora;

namespace MetaLoraNative.Engine.Flux;

/// <summary>
/// Single-stream block on the joint sequence (text first): one fused linear1 makes q, k, v and the MLP input;
/// linear2 maps [attention, gelu(mlp)] back to C. Names follow BFL's SingleStreamBlock.
/// </summary>
public sealed class SingleBlock(FluxWeights w, int index)
{
    readonly int hidden = w.Config.HiddenSize, mlpHidden = w.Config.MlpHiddenDim, heads = w.Config.NumHeads;

    public Modulation Modulation { get; } = new(Linear.From(w, $"single_blocks.{index}.modulation.lin"), 3);
    public Linear Linear1 { get; } = Linear.From(w, $"single_blocks.{index}.linear1");
    public Linear Linear2 { get; } = Linear.From(w, $"single_blocks.{index}.linear2");
    public Tensor QueryNorm { get; } = w[$"single_blocks.{index}.norm.query_norm.scale"];
    public Tensor KeyNorm { get; } = w[$"single_blocks.{index}.norm.key_norm.scale"];

    public sealed class State : Activations
    {
        public Tensor[] Mod = null!;              // shift, scale, gate: (B, C)
        public Tensor X = null!, Stats = null!, Modulated = null!, MlpIn = null!, Cat = null!, Out = null!;
        public QkvAttention.Stream Attn = null!;
        public QkvAttention.Joint Joint = null!;
        public void DisposeAll() { Dispose(); Attn.Dispose(); Joint.Dispose(); }
    }

    /// <summary>x (B, L, C) joint sequence → x + gate · linear2([attn, gelu(mlp)]).</summary>
    public Tensor Forward(Tensor x, Tensor siluVec, Tensor pe, LoraBinding? lora, out State s)
    {
        var be = x.Backend;
        s = new State { X = x };
        s.Mod = Modulation.Forward(siluVec, lora).Select(s.Keep).ToArray();
        s.Modulated = s.Keep(be.LayerNormModulate(x, s.Mod[0], s.Mod[1], FluxConfig.NormEps, out var stats));
        s.Stats = s.Keep(stats);
        using var lin1 = Linear1.Forward(s.Modulated, lora);                  // (B, L, 3C + mlp)
        using var qkv = be.Narrow(lin1, -1, 0, 3 * hidden);
        s.MlpIn = s.Keep(be.Narrow(lin1, -1, 3 * hidden, mlpHidden));

        s.Attn = QkvAttention.Split(qkv, heads, QueryNorm, KeyNorm);
        var attn = QkvAttention.Forward(s.Attn.QNorm, s.Attn.KNorm, s.Attn.V, pe, out s.Joint);
        using var act = be.GeluTanh(s.MlpIn);
        s.Cat = s.Keep(be.Concat(-1, attn, act));                                // (B, L, C + mlp)
        s.Out = s.Keep(Linear2.Forward(s.Cat, lora));
        return be.GatedResidual(x, s.Mod[2], s.Out);
    }

    /// <summary>Mirrors <see cref="Forward"/>: dy (B, L, C) → dx; accumulates the block's LoRA gradients.</summary>
    public Tensor Backward(State s, Tensor dy, Tensor siluVec, Tensor pe, LoraBinding? lora)
    {
        var be = dy.Backend;
        var (dOut, dGate) = be.GatedResidualBackward(dy, s.Mod[2], s.Out);
        var dx = be.Zeros(dy.Shape);
        be.AddInPlace(dx, dy);                                                // residual path

        using var dCat = Linear2.Backward(s.Cat, dOut, lora)!;
        dOut.Dispose();
        using var dAttn = be.Narrow(dCat, -1, 0, hidden);
        using var dAct = be.Narrow(dCat, -1, hidden, mlpHidden);
        using var dMlpIn = be.GeluTanhBackward(s.MlpIn, dAct);

        var (dq, dk, dv) = QkvAttention.Backward(s.Joint, dAttn, pe);
        using var dQkv = QkvAttention.SplitBackward(s.Attn, dq, dk, dv);
        dq.Dispose(); dk.Dispose(); dv.Dispose();
        using var dLin1 = be.Concat(-1, dQkv, dMlpIn);                       // (B, L, 3C + mlp)
        using var dModulated = Linear1.Backward(s.Modulated, dLin1, lora)!;
        var (dxn, dShift, dScale) = be.LayerNormModulateBackward(dModulated, s.X, s.Mod[1], s.Stats);
        be.AddInPlace(dx, dxn);
        dxn.Dispose();
        var dMod = new[] { dShift, dScale, dGate };
        Modulation.Backward(siluVec, dMod, lora);
        foreach (var t in dMod) t.Dispose();
        return dx;
    }
}
