using MetaLoraNative.Engine.Lora;

namespace MetaLoraNative.Engine.Flux;

/// <summary>
/// Double-stream block: image and text keep separate weights and meet only inside one joint attention.
/// Names follow BFL's DoubleStreamBlock (img_mod, img_attn.qkv, img_attn.norm, img_attn.proj, img_mlp.0/2, txt_*).
/// </summary>
public sealed class DoubleBlock
{
    readonly int heads;

    public DoubleBlock(FluxWeights w, int index)
    {
        string p = $"double_blocks.{index}";
        heads = w.Config.NumHeads;
        Img = new StreamWeights(w, $"{p}.img");
        Txt = new StreamWeights(w, $"{p}.txt");
    }

    /// <summary>The weights of one stream (img or txt).</summary>
    public sealed class StreamWeights(FluxWeights w, string p)
    {
        public Modulation Mod { get; } = new(Linear.From(w, $"{p}_mod.lin"), 6);
        public Linear Qkv { get; } = Linear.From(w, $"{p}_attn.qkv");
        public Tensor QueryNorm { get; } = w[$"{p}_attn.norm.query_norm.scale"];
        public Tensor KeyNorm { get; } = w[$"{p}_attn.norm.key_norm.scale"];
        public Linear Proj { get; } = Linear.From(w, $"{p}_attn.proj");
        public Linear Mlp0 { get; } = Linear.From(w, $"{p}_mlp.0");
        public Linear Mlp2 { get; } = Linear.From(w, $"{p}_mlp.2");
    }

    public StreamWeights Img { get; }
    public StreamWeights Txt { get; }

    /// <summary>What one stream keeps between forward and backward.</summary>
    public sealed class StreamState : Activations
    {
        public Tensor[] Mod = null!;                 // shift1, scale1, gate1, shift2, scale2, gate2: (B, C)
        public Tensor X = null!, Stats1 = null!, Modulated1 = null!;
        public QkvAttention.Stream Attn = null!;
        public Tensor AttnOut = null!, Proj = null!, X1 = null!, Stats2 = null!, Modulated2 = null!, Hidden = null!, Act = null!, Mlp = null!;
    }

    public sealed class State : IDisposable
    {
        public StreamState Img = new(), Txt = new();
        public QkvAttention.Joint Joint = null!;
        public void Dispose() { Img.Dispose(); Txt.Dispose(); Joint.Dispose(); Img.Attn.Dispose(); Txt.Attn.Dispose(); }
    }

    /// <summary>img (B, L_img, C), txt (B, L_txt, C), siluVec (B, C), pe (B, L_txt + L_img, D/2, 2) → new img, txt.</summary>
    public (Tensor Img, Tensor Txt) Forward(Tensor img, Tensor txt, Tensor siluVec, Tensor pe, LoraBinding? lora, out State s)
    {
        var be = img.Backend;
        s = new State();
        int lt = txt.Dim(1), li = img.Dim(1);

        // prepare image and text for attention
        var si = PrepareAttention(Img, img, siluVec, heads, lora, s.Img);
        var st = PrepareAttention(Txt, txt, siluVec, heads, lora, s.Txt);

        // run actual attention on the joint sequence, text first
        using var q = be.Concat(2, st.QNorm, si.QNorm);
        using var k = be.Concat(2, st.KNorm, si.KNorm);
        var v = s.Img.Keep(be.Concat(2, st.V, si.V));
        var attn = QkvAttention.Forward(q, k, v, pe, out s.Joint);           // (B, L, C), owned by s.Joint
        var txtAttn = s.Txt.Keep(be.Narrow(attn, 1, 0, lt));
        var imgAttn = s.Img.Keep(be.Narrow(attn, 1, lt, li));

        // calculate the img and txt blocks
        var imgOut = Finish(Img, img, imgAttn, lora, s.Img);
        var txtOut = Finish(Txt, txt, txtAttn, lora, s.Txt);
        return (imgOut, txtOut);
    }

    static QkvAttention.Stream PrepareAttention(StreamWeights w, Tensor x, Tensor siluVec, int heads, LoraBinding? lora, StreamState s)
    {
        var be = x.Backend;
        s.Mod = w.Mod.Forward(siluVec, lora).Select(s.Keep).ToArray();
        s.X = x;
        s.Modulated1 = s.Keep(be.LayerNormModulate(x, s.Mod[0], s.Mod[1], FluxConfig.NormEps, out var stats1));
        s.Stats1 = s.Keep(stats1);
        using var qkv = w.Qkv.Forward(s.Modulated1, lora);                    // (B, L, 3C)
        s.Attn = QkvAttention.Split(qkv, heads, w.QueryNorm, w.KeyNorm);
        return s.Attn;
    }

    static Tensor Finish(StreamWeights w, Tensor x, Tensor attnOut, LoraBinding? lora, StreamState s)
    {
        var be = x.Backend;
        s.AttnOut = attnOut;
        s.Proj = s.Keep(w.Proj.Forward(attnOut, lora));
        s.X1 = s.Keep(be.GatedResidual(x, s.Mod[2], s.Proj));
        s.Modulated2 = s.Keep(be.LayerNormModulate(s.X1, s.Mod[3], s.Mod[4], FluxConfig.NormEps, out var stats2));
        s.Stats2 = s.Keep(stats2);
        s.Hidden = s.Keep(w.Mlp0.Forward(s.Modulated2, lora));
        s.Act = s.Keep(be.GeluTanh(s.Hidden));
        s.Mlp = s.Keep(w.Mlp2.Forward(s.Act, lora));
        return be.GatedResidual(s.X1, s.Mod[5], s.Mlp);
    }

    /// <summary>
    /// Mirrors <see cref="Forward"/>: d img_out, d txt_out → d img, d txt (d txt null when not needed: the first block's
    /// text input comes from txt_in, which nothing trains). Accumulates every LoRA gradient of the block.
    /// </summary>
    public (Tensor DImg, Tensor? DTxt) Backward(State s, Tensor dImgOut, Tensor dTxtOut, Tensor siluVec, Tensor pe, LoraBinding? lora, bool needTxtGrad)
    {
        var be = dImgOut.Backend;
        var dMi = new Tensor[6];
        var dMt = new Tensor[6];
        // the MLP halves and the attention projections, per stream
        var (dImg, dImgAttn) = FinishBackward(Img, s.Img, dImgOut, lora, dMi);
        var (dTxt, dTxtAttn) = FinishBackward(Txt, s.Txt, dTxtOut, lora, dMt);

        // back through the joint attention
        using var dAttn = be.Concat(1, dTxtAttn, dImgAttn);
        dImgAttn.Dispose();
        dTxtAttn.Dispose();
        var (dq, dk, dv) = QkvAttention.Backward(s.Joint, dAttn, pe);
        int lt = s.Txt.X.Dim(1), li = s.Img.X.Dim(1);
        PrepareBackward(Img, s.Img, dq, dk, dv, lt, li, dImg, lora, dMi, siluVec, needInput: true);
        PrepareBackward(Txt, s.Txt, dq, dk, dv, 0, lt, dTxt, lora, dMt, siluVec, needInput: needTxtGrad);
        dq.Dispose(); dk.Dispose(); dv.Dispose();
        if (!needTxtGrad) { dTxt.Dispose(); return (dImg, null); }
        return (dImg, dTxt);
    }

    /// <summary>Returns (d x, d attention output) and fills the gate/shift/scale gradients of the second half.</summary>
    static (Tensor Dx, Tensor DAttn) FinishBackward(StreamWeights w, StreamState s, Tensor dOut, LoraBinding? lora, Tensor[] dMod)
    {
        var be = dOut.Backend;
        // x_out = x1 + gate2 · mlp(LNmod(x1))
        var (dMlp, dGate2) = be.GatedResidualBackward(dOut, s.Mod[5], s.Mlp);
        dMod[5] = dGate2;
        var dx1 = be.Zeros(dOut.Shape);
        be.AddInPlace(dx1, dOut);
        using (var dAct = w.Mlp2.Backward(s.Act, dMlp, lora)!)
        using (var dHidden = be.GeluTanhBackward(s.Hidden, dAct))
        using (var dMod2 = w.Mlp0.Backward(s.Modulated2, dHidden, lora)!)
        {
            var (dxn, dShift2, dScale2) = be.LayerNormModulateBackward(dMod2, s.X1, s.Mod[4], s.Stats2);
            be.AddInPlace(dx1, dxn);
            dxn.Dispose();
            dMod[3] = dShift2;
            dMod[4] = dScale2;
        }
        dMlp.Dispose();
        // x1 = x + gate1 · proj(attn)
        var (dProj, dGate1) = be.GatedResidualBackward(dx1, s.Mod[2], s.Proj);
        dMod[2] = dGate1;
        var dAttn = w.Proj.Backward(s.AttnOut, dProj, lora)!;
        dProj.Dispose();
        return (dx1, dAttn);   // dx1 is also d x through the residual; the first half adds to it
    }

    /// <summary>Back through q/k norm, qkv and the first modulated LayerNorm of one stream; adds into dx.</summary>
    static void PrepareBackward(StreamWeights w, StreamState s, Tensor dq, Tensor dk, Tensor dv, int start, int length,
                                Tensor dx, LoraBinding? lora, Tensor[] dMod, Tensor siluVec, bool needInput)
    {
        var be = dx.Backend;
        using var dqs = be.Narrow(dq, 2, start, length);
        using var dks = be.Narrow(dk, 2, start, length);
        using var dvs = be.Narrow(dv, 2, start, length);
        using var dQkv = QkvAttention.SplitBackward(s.Attn, dqs, dks, dvs);
        using var dModulated1 = w.Qkv.Backward(s.Modulated1, dQkv, lora)!;
        var (dxn, dShift1, dScale1) = be.LayerNormModulateBackward(dModulated1, s.X, s.Mod[1], s.Stats1);
        if (needInput) be.AddInPlace(dx, dxn);
        dxn.Dispose();
        dMod[0] = dShift1;
        dMod[1] = dScale1;
        w.Mod.Backward(siluVec, dMod, lora);
        foreach (var t in dMod) t.Dispose();
    }
}
