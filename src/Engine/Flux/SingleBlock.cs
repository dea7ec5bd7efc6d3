using MetaLoraNative.Engine.Lora;

namespace MetaLoraNative.Engine.Flux;

/// <summary>
/// Single-stream block on the joint sequence (text first): one fused linear1 makes q, k, v and the MLP input;
/// linear2 maps [attention, gelu(mlp)] back to C. Names follow BFL's SingleStreamBlock.
/// Shapes: B batch, L = L_txt + L_img, C hidden, mlp the MLP width.
/// </summary>
public sealed class SingleBlock(FluxWeights w, int index, Fusions fusions = Fusions.None)
{
    readonly Fusions fusions = fusions;
    readonly int hidden = w.Config.HiddenSize, mlpHidden = w.Config.MlpHiddenDim, heads = w.Config.NumHeads;

    public Modulation Modulation { get; } = new(Linear.From(w, $"single_blocks.{index}.modulation.lin"));
    public Linear Linear1 { get; } = Linear.From(w, $"single_blocks.{index}.linear1");
    public Linear Linear2 { get; } = Linear.From(w, $"single_blocks.{index}.linear2");
    public Tensor QueryNorm { get; } = w[$"single_blocks.{index}.norm.query_norm.scale"];
    public Tensor KeyNorm { get; } = w[$"single_blocks.{index}.norm.key_norm.scale"];

    /// <summary>What the block keeps for its backward.</summary>
    public sealed class BlockActivations : Activations
    {
        public required Tensor X { get; init; }                    // (B, L, C) block input: borrowed (the model state's)
        public required ModulationOut Mod { get; init; }           // shift, scale, gate, each (B, C)
        public required Tensor Stats { get; init; }                // (B·L, 2) mean, rstd of LayerNorm(x)
        public required Tensor Modulated { get; init; }            // (B, L, C) (1 + scale)·LN(x) + shift, the linear1 input
        public required Tensor? MlpIn { get; init; }               // (B, L, mlp) the MLP rows of linear1's output (a copy), or null when sliced
        public Tensor? Lin1 { get; init; }                         // (B, L, 3C + mlp) linear1's output, kept when sliced (Fusions.GeluEpilogue): the GELU's input is its MLP columns
        public QkvAttention.Stream? Qkv { get; init; }             // unfused: q, k (normalised), v from linear1's first 3C columns
        public QkvAttention.FusedStream? Fused { get; init; }      // fused (Fusions.QkvNormRope): those columns (B, L, 3C) and the q/k rstd
        public Tensor? V { get; init; }                            // fused: (B, H, L, D) v, read by Joint (unfused: Qkv's)
        public required QkvAttention.Joint Joint { get; init; }    // the attention over the whole sequence
        public required Tensor Cat { get; init; }                  // (B, L, C + mlp) [attention, gelu(MlpIn)], the linear2 input
        public required Tensor Out { get; init; }                  // (B, L, C) linear2 output

        protected override IEnumerable<IDisposable?> Owned() => [Mod, Stats, Modulated, MlpIn, Lin1, Qkv, Fused, V, Joint, Cat, Out];
    }

    /// <summary>x (B, L, C) joint sequence → x + gate · linear2([attn, gelu(mlp)]).</summary>
    public Tensor Forward(Tensor x, Tensor siluVec, Tensor pe, LoraBinding? lora, out BlockActivations saved)
    {
        var be = x.Backend;
        var mod = Modulation.Forward(siluVec, lora);
        var modulated = be.LayerNormModulate(x, mod.Shift, mod.Scale, FluxConfig.NormEps, out var stats);
        bool sliced = fusions.HasFlag(Fusions.GeluEpilogue);
        var lin1 = Linear1.Forward(modulated, lora);                          // (B, L, 3C + mlp)
        var qkv = be.Narrow(lin1, -1, 0, 3 * hidden);
        var mlpIn = sliced ? null : be.Narrow(lin1, -1, 3 * hidden, mlpHidden);   // sliced: read in place from lin1

        // q, k normalised and roped, v: fused into one op that writes the joint tensors, or the op sequence
        QkvAttention.Stream? split = null;
        QkvAttention.FusedStream? fused = null;
        Tensor? v = null;
        Tensor attn;
        QkvAttention.Joint joint;
        if (fusions.HasFlag(Fusions.QkvNormRope))
        {
            // The record keeps this (B, L, 3C) copy of linear1's q/k/v columns (3C per token, against the 5C of the
            // unfused Q, K, V, QNorm, KNorm and the 2C of QRope, KRope that Joint keeps now as the joint q, k);
            // reading the columns in place (the op takes a MatrixSlice of lin1) would mean keeping all of lin1.
            var qkvJoint = QkvAttention.NewJoint(be, x.Dim(0), heads, x.Dim(1), hidden / heads);
            fused = QkvAttention.SplitInto(qkv, new QkNorm(QueryNorm, KeyNorm, FluxConfig.NormEps), pe, qkvJoint, 0);   // owns qkv
            v = qkvJoint.V;
            attn = QkvAttention.Attend(qkvJoint, out joint);                  // owned by joint
        }
        else
        {
            using (qkv) split = QkvAttention.Split(qkv, heads, QueryNorm, KeyNorm);
            attn = QkvAttention.Forward(split.QNorm, split.KNorm, split.V, pe, out joint);   // owned by joint
        }
        var cat = sliced ? SlicedCat(attn, lin1) : Cat(attn, mlpIn!);        // (B, L, C + mlp) [attn, gelu(mlp)]
        if (!sliced) lin1.Dispose();
        var output = Linear2.Forward(cat, lora);
        saved = new BlockActivations
        {
            X = x, Mod = mod, Stats = stats, Modulated = modulated, MlpIn = mlpIn, Lin1 = sliced ? lin1 : null,
            Qkv = split, Fused = fused, V = v, Joint = joint,
            Cat = cat, Out = output,
        };
        return be.GatedResidual(x, mod.Gate, output);
    }

    static Tensor Cat(Tensor attn, Tensor mlpIn)
    {
        using var act = mlpIn.Backend.GeluTanh(mlpIn);
        return mlpIn.Backend.Concat(-1, attn, act);
    }

    /// <summary>
    /// cat (B, L, C + mlp) with no Narrow and no Concat: the attention output copied into columns [0, C) (one strided
    /// "=" copy), gelu of linear1's MLP columns [3C, 3C + mlp) written straight into columns [C, C + mlp). Every column
    /// is written, so cat starts uninitialised.
    /// </summary>
    Tensor SlicedCat(Tensor attn, Tensor lin1)
    {
        var be = attn.Backend;
        var cat = be.Empty([.. attn.Shape[..^1], hidden + mlpHidden]);
        be.CopyNarrow(cat, attn, -1, 0);
        be.GeluTanhSlice(MatrixSlice.ColumnsOf(lin1, 3 * hidden, mlpHidden), MatrixSlice.ColumnsOf(cat, hidden, mlpHidden));
        return cat;
    }

    /// <summary>The forward again, for recomputation: only its activations, rebuilt from the same input.</summary>
    public BlockActivations Recompute(Tensor x, Tensor siluVec, Tensor pe, LoraBinding? lora)
    {
        Forward(x, siluVec, pe, lora, out var saved).Dispose();
        return saved;
    }

    /// <summary>Mirrors <see cref="Forward"/>: dy (B, L, C) → dx; accumulates the block's LoRA gradients.</summary>
    public Tensor Backward(BlockActivations s, Tensor dy, Tensor siluVec, Tensor pe, LoraBinding? lora)
    {
        var be = dy.Backend;
        var (dOut, dGate) = be.GatedResidualBackward(dy, s.Mod.Gate, s.Out);
        var dx = be.Empty(dy.Shape);
        be.Copy(dy, dx);                                                      // residual path

        using var dCat = Linear2.Backward(s.Cat, dOut, lora);
        dOut.Dispose();
        using var dAttn = be.Narrow(dCat, -1, 0, hidden);
        // d linear1's MLP columns: sliced, the GELU's backward reads dcat's columns [C, C + mlp) and writes dlin1's
        // [3C, 3C + mlp) in place (dlin1 is one whole buffer, uninitialised: its qkv columns are written below); else a
        // Narrow, then a Concat
        bool sliced = s.Lin1 != null;
        var dLin1Whole = sliced ? be.Empty([.. dy.Shape[..^1], 3 * hidden + mlpHidden]) : null;
        if (sliced)
            be.GeluTanhBackwardSlice(MatrixSlice.ColumnsOf(s.Lin1!, 3 * hidden, mlpHidden), MatrixSlice.ColumnsOf(dCat, hidden, mlpHidden),
                                     MatrixSlice.ColumnsOf(dLin1Whole!, 3 * hidden, mlpHidden));
        using var dAct = sliced ? null : be.Narrow(dCat, -1, hidden, mlpHidden);
        using var dMlpIn = sliced ? null : be.GeluTanhBackward(s.MlpIn!, dAct!);

        // d qkv: fused and sliced, the fused op writes it straight into dlin1's columns [0, 3C); else a tensor, then
        // copied into dlin1 (sliced) or concatenated with d mlpIn
        if (sliced && s.Fused is { } direct)
        {
            using var grads = QkvAttention.AttendBackward(s.Joint, dAttn);
            QkvAttention.SplitIntoBackward(direct, grads, pe, MatrixSlice.ColumnsOf(dLin1Whole!, 0, 3 * hidden));
        }
        using var dQkv = sliced && s.Fused != null ? null
                       : s.Fused is { } fused ? FusedQkvBackward(fused, s.Joint, dAttn, pe) : QkvBackward(s.Qkv!, s.Joint, dAttn, pe);
        using var dLin1 = dLin1Whole ?? be.Concat(-1, dQkv!, dMlpIn!);        // (B, L, 3C + mlp)
        if (sliced && dQkv != null) be.CopyNarrow(dLin1, dQkv, -1, 0);        // dlin1[:, :, :3C] = d qkv
        using var dModulated = Linear1.Backward(s.Modulated, dLin1, lora);
        var (dxn, dShift, dScale) = be.LayerNormModulateBackward(dModulated, s.X, s.Mod.Scale, s.Stats);
        be.AddInPlace(dx, dxn);
        dxn.Dispose();
        using var dMod = new ModulationOut(dShift, dScale, dGate);
        Modulation.Backward(siluVec, dMod, lora);
        return dx;
    }

    /// <summary>Unfused: back through attention, RoPE, the q/k norm and the split → d qkv (B, L, 3C).</summary>
    static Tensor QkvBackward(QkvAttention.Stream s, QkvAttention.Joint joint, Tensor dAttn, Tensor pe)
    {
        var (dq, dk, dv) = QkvAttention.Backward(joint, dAttn, pe);
        using var grads = new QkvJoint(dq, dk, dv);
        return QkvAttention.SplitBackward(s, dq, dk, dv);
    }

    /// <summary>Fused: back through attention (w.r.t. the roped q, k), then RoPE, q/k norm and split in one op → d qkv (B, L, 3C).</summary>
    static Tensor FusedQkvBackward(QkvAttention.FusedStream s, QkvAttention.Joint joint, Tensor dAttn, Tensor pe)
    {
        using var grads = QkvAttention.AttendBackward(joint, dAttn);
        return QkvAttention.SplitIntoBackward(s, grads, pe);
    }
}
