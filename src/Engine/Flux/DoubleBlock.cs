using MetaLoraNative.Engine.Lora;

namespace MetaLoraNative.Engine.Flux;

/// <summary>
/// Double-stream block: image and text keep separate weights and meet only inside one joint attention.
/// Names follow BFL's DoubleStreamBlock (img_mod, img_attn.qkv, img_attn.norm, img_attn.proj, img_mlp.0/2, txt_*).
/// Shapes: B batch, L this stream's tokens (L_img or L_txt), C hidden, H heads, D head dim.
/// </summary>
public sealed class DoubleBlock
{
    readonly int heads;
    readonly Fusions fusions;

    public DoubleBlock(FluxWeights w, int index, Fusions fusions = Fusions.None)
    {
        this.fusions = fusions;
        string p = $"double_blocks.{index}";
        heads = w.Config.NumHeads;
        Img = new StreamWeights(w, $"{p}.img");
        Txt = new StreamWeights(w, $"{p}.txt");
    }

    /// <summary>The weights of one stream (img or txt).</summary>
    public sealed class StreamWeights(FluxWeights w, string p)
    {
        public Modulation Mod { get; } = new(Linear.From(w, $"{p}_mod.lin"));
        public Linear Qkv { get; } = Linear.From(w, $"{p}_attn.qkv");
        public Tensor QueryNorm { get; } = w[$"{p}_attn.norm.query_norm.scale"];
        public Tensor KeyNorm { get; } = w[$"{p}_attn.norm.key_norm.scale"];
        public Linear Proj { get; } = Linear.From(w, $"{p}_attn.proj");
        public Linear Mlp0 { get; } = Linear.From(w, $"{p}_mlp.0");
        public Linear Mlp2 { get; } = Linear.From(w, $"{p}_mlp.2");
    }

    public StreamWeights Img { get; }
    public StreamWeights Txt { get; }

    /// <summary>
    /// What one stream keeps from "prepare for attention": modulation, modulated LayerNorm, q, k, v. Unfused: the
    /// stream's own q, k (before and after the norm) and v, per token 5C values + 2H fp32. Fused (Fusions.QkvNormRope):
    /// its qkv rows and the rstd, 3C + 2H. Both keep the joint roped q, k and v besides (3C per token, the block's
    /// Joint and V), so the fused block keeps 2C values per token fewer (12 KiB in bf16 at C = 3072).
    /// </summary>
    public sealed class PreparedStream : Activations
    {
        public required Tensor X { get; init; }                    // (B, L, C) stream input: borrowed (the model state's)
        public required ModulationOut Mod1 { get; init; }          // attention half: shift, scale, gate, each (B, C)
        public required ModulationOut Mod2 { get; init; }          // MLP half: shift, scale, gate, each (B, C)
        public required Tensor Stats1 { get; init; }               // (B·L, 2) mean, rstd of LayerNorm(x)
        public required Tensor Modulated1 { get; init; }           // (B, L, C) (1 + scale1)·LN(x) + shift1, the qkv input
        public QkvAttention.Stream? Qkv { get; init; }             // unfused: this stream's q, k (normalised), v
        public QkvAttention.FusedStream? Fused { get; init; }      // fused: this stream's qkv (B, L, 3C) and q/k rstd

        protected override IEnumerable<IDisposable?> Owned() => [Mod1, Mod2, Stats1, Modulated1, Qkv, Fused];
    }

    /// <summary>What one stream keeps: its prepared half, then "calculate the block" (projection and MLP).</summary>
    public sealed class StreamActivations : Activations
    {
        public required PreparedStream Prepared { get; init; }
        public required Tensor AttnOut { get; init; }              // (B, L, C) this stream's rows of the joint attention
        public required Tensor Proj { get; init; }                 // (B, L, C) attn.proj(AttnOut)
        public required Tensor X1 { get; init; }                   // (B, L, C) x + gate1·Proj
        public required Tensor Stats2 { get; init; }               // (B·L, 2) mean, rstd of LayerNorm(X1)
        public required Tensor Modulated2 { get; init; }           // (B, L, C) (1 + scale2)·LN(X1) + shift2, the MLP input
        public required Tensor Hidden { get; init; }               // (B, L, mlp) mlp.0 output
        public required Tensor Act { get; init; }                  // (B, L, mlp) gelu_tanh(Hidden)
        public required Tensor Mlp { get; init; }                  // (B, L, C) mlp.2 output

        protected override IEnumerable<IDisposable?> Owned() => [Prepared, AttnOut, Proj, X1, Stats2, Modulated2, Hidden, Act, Mlp];
    }

    /// <summary>What the block keeps for its backward.</summary>
    public sealed class BlockActivations : Activations
    {
        public required StreamActivations Img { get; init; }
        public required StreamActivations Txt { get; init; }
        public required Tensor V { get; init; }                    // (B, H, L_txt + L_img, D) joint v, read by Joint
        public required QkvAttention.Joint Joint { get; init; }    // the joint attention (text first); owns the roped q, k

        protected override IEnumerable<IDisposable?> Owned() => [Img, Txt, V, Joint];
    }

    /// <summary>img (B, L_img, C), txt (B, L_txt, C), siluVec (B, C), pe (B, L_txt + L_img, D/2, 2) → new img, txt.</summary>
    public (Tensor Img, Tensor Txt) Forward(Tensor img, Tensor txt, Tensor siluVec, Tensor pe, LoraBinding? lora, out BlockActivations saved)
    {
        var be = img.Backend;
        int lt = txt.Dim(1), li = img.Dim(1);
        // fused: the joint q, k, v, into which each stream writes its tokens (normalised, roped) as it is prepared
        QkvJoint? joint = fusions.HasFlag(Fusions.QkvNormRope) ? QkvAttention.NewJoint(be, img.Dim(0), heads, lt + li, img.Dim(2) / heads) : null;

        // prepare image and text for attention
        var imgPrepared = PrepareAttention(Img, img, siluVec, pe, joint, lt, lora);
        var txtPrepared = PrepareAttention(Txt, txt, siluVec, pe, joint, 0, lora);

        // run actual attention on the joint sequence, text first
        Tensor v, attn;
        QkvAttention.Joint jointSaved;
        if (joint is { } roped)
        {
            v = roped.V;
            attn = QkvAttention.Attend(roped, out jointSaved);                 // (B, L_txt + L_img, C), owned by jointSaved
        }
        else
        {
            using var q = be.Concat(2, txtPrepared.Qkv!.QNorm, imgPrepared.Qkv!.QNorm);
            using var k = be.Concat(2, txtPrepared.Qkv.KNorm, imgPrepared.Qkv.KNorm);
            v = be.Concat(2, txtPrepared.Qkv.V, imgPrepared.Qkv.V);
            attn = QkvAttention.Forward(q, k, v, pe, out jointSaved);           // (B, L_txt + L_img, C), owned by jointSaved
        }

        // calculate the img and txt blocks
        var imgOut = Finish(Img, imgPrepared, StreamRows(attn, lt, li), lora, out var imgSaved);
        var txtOut = Finish(Txt, txtPrepared, StreamRows(attn, 0, lt), lora, out var txtSaved);
        saved = new BlockActivations { Img = imgSaved, Txt = txtSaved, V = v, Joint = jointSaved };
        return (imgOut, txtOut);
    }

    /// <summary>
    /// With <see cref="Fusions.ResidualNorm"/> and B = 1 a stream's rows of the joint attention output and of its
    /// gradient are contiguous, so they are views (<see cref="Tensor.Slice"/>) of the joint tensor; for B &gt; 1 they are
    /// strided, and copies.
    /// </summary>
    bool JoinsAsViews(int batch) => fusions.HasFlag(Fusions.ResidualNorm) && batch == 1;

    /// <summary>Rows [start, start + length) of a joint (B, L_txt + L_img, C) tensor: a view or a copy (<see cref="JoinsAsViews"/>).</summary>
    Tensor StreamRows(Tensor joint, int start, int length) =>
        JoinsAsViews(joint.Dim(0)) ? joint.Slice((long)start * joint.Dim(2), 1, length, joint.Dim(2))
                                   : joint.Backend.Narrow(joint, 1, start, length);

    /// <summary>The forward again, for recomputation: only its activations, rebuilt from the same inputs.</summary>
    public BlockActivations Recompute(Tensor img, Tensor txt, Tensor siluVec, Tensor pe, LoraBinding? lora)
    {
        var (imgOut, txtOut) = Forward(img, txt, siluVec, pe, lora, out var saved);
        imgOut.Dispose();
        txtOut.Dispose();
        return saved;
    }

    /// <summary>Modulation, modulated LayerNorm, qkv and q/k norm of one stream; fused (joint given), its tokens from start of the joint q, k, v.</summary>
    PreparedStream PrepareAttention(StreamWeights w, Tensor x, Tensor siluVec, Tensor pe, QkvJoint? joint, int start, LoraBinding? lora)
    {
        var be = x.Backend;
        var (mod1, mod2) = w.Mod.ForwardDouble(siluVec, lora);
        var modulated1 = be.LayerNormModulate(x, mod1.Shift, mod1.Scale, FluxConfig.NormEps, out var stats1);
        var qkv = w.Qkv.Forward(modulated1, lora);                            // (B, L, 3C)
        if (joint is { } j)
        {
            var fused = QkvAttention.SplitInto(qkv, new QkNorm(w.QueryNorm, w.KeyNorm, FluxConfig.NormEps), pe, j, start);   // owns qkv
            return new PreparedStream { X = x, Mod1 = mod1, Mod2 = mod2, Stats1 = stats1, Modulated1 = modulated1, Fused = fused };
        }
        using (qkv)
        {
            var split = QkvAttention.Split(qkv, heads, w.QueryNorm, w.KeyNorm);
            return new PreparedStream { X = x, Mod1 = mod1, Mod2 = mod2, Stats1 = stats1, Modulated1 = modulated1, Qkv = split };
        }
    }

    /// <summary>
    /// x_out = x1 + gate2 · mlp(LNmod2(x1)), x1 = x + gate1 · proj(attn). attnOut becomes the record's. With
    /// <see cref="Fusions.ResidualNorm"/>, x1 and LNmod2(x1) come from one op (one pass over the rows).
    /// </summary>
    Tensor Finish(StreamWeights w, PreparedStream p, Tensor attnOut, LoraBinding? lora, out StreamActivations saved)
    {
        var be = attnOut.Backend;
        var proj = w.Proj.Forward(attnOut, lora);
        Tensor x1, modulated2, stats2;
        if (fusions.HasFlag(Fusions.ResidualNorm))
            (x1, modulated2) = be.ResidualLayerNormModulate(p.X, p.Mod1.Gate, proj, p.Mod2.Shift, p.Mod2.Scale, FluxConfig.NormEps, out stats2);
        else
        {
            x1 = be.GatedResidual(p.X, p.Mod1.Gate, proj);
            modulated2 = be.LayerNormModulate(x1, p.Mod2.Shift, p.Mod2.Scale, FluxConfig.NormEps, out stats2);
        }
        var (hidden, act) = MlpHidden(w, modulated2, lora);
        var mlp = w.Mlp2.Forward(act, lora);
        saved = new StreamActivations
        {
            Prepared = p, AttnOut = attnOut, Proj = proj, X1 = x1, Stats2 = stats2, Modulated2 = modulated2,
            Hidden = hidden, Act = act, Mlp = mlp,
        };
        return be.GatedResidual(x1, p.Mod2.Gate, mlp);
    }

    /// <summary>
    /// hidden = mlp.0(modulated2) (B, L, mlp) and act = gelu_tanh(hidden): with Fusions.GeluEpilogue one product, the
    /// GELU in mlp.0's epilogue.
    /// </summary>
    (Tensor Hidden, Tensor Act) MlpHidden(StreamWeights w, Tensor modulated2, LoraBinding? lora)
    {
        if (fusions.HasFlag(Fusions.GeluEpilogue)) return w.Mlp0.ForwardGelu(modulated2, lora);
        var hidden = w.Mlp0.Forward(modulated2, lora);
        return (hidden, modulated2.Backend.GeluTanh(hidden));
    }

    /// <summary>
    /// d hidden (B, L, mlp) from d mlp: mlp.2's input gradient, then the GELU's backward; with Fusions.GeluEpilogue one
    /// product, the GELU's derivative in mlp.2's dx epilogue.
    /// </summary>
    Tensor MlpHiddenBackward(StreamWeights w, StreamActivations s, Tensor dMlp, LoraBinding? lora)
    {
        if (fusions.HasFlag(Fusions.GeluEpilogue)) return w.Mlp2.BackwardGelu(s.Act, s.Hidden, dMlp, lora);
        using var dAct = w.Mlp2.Backward(s.Act, dMlp, lora);
        return dMlp.Backend.GeluTanhBackward(s.Hidden, dAct);
    }

    /// <summary>
    /// Mirrors <see cref="Forward"/>: d img_out, d txt_out → d img, d txt. Accumulates every LoRA gradient of the block.
    /// </summary>
    public (Tensor DImg, Tensor DTxt) Backward(BlockActivations s, Tensor dImgOut, Tensor dTxtOut, Tensor siluVec, Tensor pe, LoraBinding? lora)
    {
        var be = dImgOut.Backend;
        // the img and txt blocks, back to each stream's attention output: straight into its rows of the joint
        // gradient when those are views (JoinsAsViews), else into copies joined below
        int jt = s.Txt.AttnOut.Dim(1), ji = s.Img.AttnOut.Dim(1);
        // (1, L_txt + L_img, C), uninitialised: each stream's attn.proj backward writes its rows (dx = dy·W0, beta 0) first
        var joint = JoinsAsViews(dImgOut.Dim(0)) ? be.Empty(1, jt + ji, dImgOut.Dim(2)) : null;
        var img = FinishBackward(Img, s.Img, dImgOut, lora, joint == null ? null : StreamRows(joint, jt, ji));
        var txt = FinishBackward(Txt, s.Txt, dTxtOut, lora, joint == null ? null : StreamRows(joint, 0, jt));

        // back through the joint attention
        using var dAttn = joint ?? be.Concat(1, txt.DAttn, img.DAttn);
        img.DAttn.Dispose();
        txt.DAttn.Dispose();
        // unfused: dq, dk before RoPE; fused: w.r.t. the roped q, k (RoPE's backward is in each stream's)
        QkvJoint grads;
        if (s.Img.Prepared.Fused != null) grads = QkvAttention.AttendBackward(s.Joint, dAttn);
        else
        {
            var (dq, dk, dv) = QkvAttention.Backward(s.Joint, dAttn, pe);
            grads = new QkvJoint(dq, dk, dv);
        }
        int lt = s.Txt.Prepared.X.Dim(1), li = s.Img.Prepared.X.Dim(1);

        // back through the preparation of each stream
        PrepareBackward(Img, s.Img.Prepared, grads, lt, li, img, siluVec, pe, lora);
        PrepareBackward(Txt, s.Txt.Prepared, grads, 0, lt, txt, siluVec, pe, lora);
        grads.Dispose();
        return (img.Dx, txt.Dx);
    }

    /// <summary>
    /// What the backward of "calculate the block" hands to the preparation's: d x so far (the residual paths), d attention
    /// output, d gate1 and the MLP half's modulation gradients.
    /// </summary>
    readonly record struct FinishGradients(Tensor Dx, Tensor DAttn, Tensor DGate1, ModulationOut DMod2);

    /// <summary>
    /// <paramref name="dAttnInto"/>, when given, is where d attention output is written (a view of the joint gradient);
    /// it is then the returned DAttn. With <see cref="Fusions.ResidualNorm"/> the backward of LNmod2 and of
    /// x1 = x + gate1 · proj is one op.
    /// </summary>
    FinishGradients FinishBackward(StreamWeights w, StreamActivations s, Tensor dOut, LoraBinding? lora, Tensor? dAttnInto)
    {
        var be = dOut.Backend;
        var p = s.Prepared;
        bool fused = fusions.HasFlag(Fusions.ResidualNorm);
        // x_out = x1 + gate2 · mlp(LNmod2(x1))
        var (dMlp, dGate2) = be.GatedResidualBackward(dOut, p.Mod2.Gate, s.Mlp);
        Tensor? dx1 = null, dProj = null, dGate1 = null;
        if (!fused)
        {
            dx1 = be.Empty(dOut.Shape);
            be.Copy(dOut, dx1);                                                // dx1 = dOut, LNmod2's backward added below
        }
        Tensor dShift2, dScale2;
        using (var dHidden = MlpHiddenBackward(w, s, dMlp, lora))
        using (var dModulated2 = w.Mlp0.Backward(s.Modulated2, dHidden, lora))
        {
            if (fused)   // dx1 = dOut + LNmod2's backward, then x1 = x + gate1 · proj(attn)'s: one op
                (dx1, dProj, dGate1, dShift2, dScale2) =
                    be.ResidualLayerNormModulateBackward(dModulated2, dOut, s.X1, p.Mod2.Scale, s.Stats2, p.Mod1.Gate, s.Proj);
            else
            {
                (var dxn, dShift2, dScale2) = be.LayerNormModulateBackward(dModulated2, s.X1, p.Mod2.Scale, s.Stats2);
                be.AddInPlace(dx1!, dxn);
                dxn.Dispose();
            }
        }
        dMlp.Dispose();
        // x1 = x + gate1 · proj(attn)
        if (!fused) (dProj, dGate1) = be.GatedResidualBackward(dx1!, p.Mod1.Gate, s.Proj);
        if (dAttnInto != null) w.Proj.Backward(s.AttnOut, dProj!, lora, dAttnInto);
        var dAttn = dAttnInto ?? w.Proj.Backward(s.AttnOut, dProj!, lora);
        dProj!.Dispose();
        // dx1 is also d x through the residual; the preparation's backward adds to it
        return new FinishGradients(dx1!, dAttn, dGate1!, new ModulationOut(dShift2, dScale2, dGate2));
    }

    /// <summary>
    /// Back through q/k norm, qkv and the first modulated LayerNorm of one stream (rows [start, start+length) of the
    /// joint dq, dk, dv: before RoPE unfused, w.r.t. the roped q, k fused); adds into g.Dx.
    /// </summary>
    static void PrepareBackward(StreamWeights w, PreparedStream s, QkvJoint grads, int start, int length,
                                FinishGradients g, Tensor siluVec, Tensor pe, LoraBinding? lora)
    {
        var be = grads.Q.Backend;
        using var dQkv = s.Fused is { } fused ? QkvAttention.SplitIntoBackward(fused, grads, pe) : StreamQkvBackward(s.Qkv!, grads, start, length);
        using var dModulated1 = w.Qkv.Backward(s.Modulated1, dQkv, lora);
        var (dxn, dShift1, dScale1) = be.LayerNormModulateBackward(dModulated1, s.X, s.Mod1.Scale, s.Stats1);
        be.AddInPlace(g.Dx, dxn);
        dxn.Dispose();
        using var dMod1 = new ModulationOut(dShift1, dScale1, g.DGate1);
        using var dMod2 = g.DMod2;
        w.Mod.Backward(siluVec, dMod1, dMod2, lora);
    }

    /// <summary>Unfused: this stream's rows of the joint dq, dk, dv (before RoPE), then the q/k norm backward and MergeQkv.</summary>
    static Tensor StreamQkvBackward(QkvAttention.Stream s, QkvJoint grads, int start, int length)
    {
        var be = grads.Q.Backend;
        using var dqs = be.Narrow(grads.Q, 2, start, length);
        using var dks = be.Narrow(grads.K, 2, start, length);
        using var dvs = be.Narrow(grads.V, 2, start, length);
        return QkvAttention.SplitBackward(s, dqs, dks, dvs);
    }
}
