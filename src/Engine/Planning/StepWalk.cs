using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Quantization;

namespace MetaLoraNative.Engine.Planning;

/// <summary>
/// The allocations of one training step (Trainer.Step: batch upload, FluxModel.Forward, MSE, FluxModel.Backward),
/// replayed in the order the model's code makes and frees them, to find the most bytes alive at once on top of what
/// lives across steps (weights, LoRA factors, workspaces). Each method below mirrors one method of the model and is
/// named after it; "kept" is what a layer's Activations record owns until the record is disposed (after the backward,
/// or right after the forward when the block is recomputed). Only tensors the backend allocates are counted (ops'
/// internal scratch is not, on either backend), and the conditioning path's (B, C)-sized temporaries, which are all
/// freed before the per-token tensors grow, are left out.
/// The walk is of the step the model runs: its fused forms (<see cref="TrainingShape.Fusions"/>: what a block keeps
/// and what its forward and backward allocate change with each), the LoRA path (stacked or fused) and, on the fused
/// path, grouped formation (no per-module G in the backward: the cache keeps one per module, counted as persistent).
/// Shapes: B batch, Li/Lt/L image/text/joint tokens, C hidden, H heads, M the MLP width; n = rows of a linear's input.
/// </summary>
internal sealed class StepWalk
{
    readonly MemoryModel m;
    readonly TrainingShape s;
    readonly BaseDType baseDType;
    readonly Dictionary<string, int[]> targetRows;    // BFL module → rows of each of its LoRA targets
    readonly int B, Li, Lt, L, C, H, Mlp, groups;
    readonly bool qkvFused, residualNorm, geluFused, views, grouped;
    readonly Dictionary<(string Module, int Group), long> keptA = [];   // the fused path's a, kept from forward to backward
    long live, peak;

    public StepWalk(MemoryModel model, TrainingShape shape, BaseDType baseDType = BaseDType.Bf16)
    {
        m = model;
        s = shape;
        this.baseDType = baseDType;
        targetRows = shape.Targets.GroupBy(t => t.BflModule).ToDictionary(g => g.Key, g => g.Select(t => t.Rows).ToArray());
        var c = shape.Config;
        (B, Li, Lt, C, H, Mlp, groups) = (shape.Batch, shape.ImageTokens, shape.TextTokens, c.HiddenSize, c.NumHeads, c.MlpHiddenDim, shape.IdentitiesInBatch);
        L = Li + Lt;
        var f = shape.Fusions;
        (qkvFused, residualNorm, geluFused) = (f.HasFlag(Fusions.QkvNormRope), f.HasFlag(Fusions.ResidualNorm), f.HasFlag(Fusions.GeluEpilogue));
        views = residualNorm && B == 1;                                       // DoubleBlock.JoinsAsViews
        grouped = shape.GroupedLora;
    }

    /// <summary>Whether a linear's weight is fp8 codes: its GELU-fused products then run unfused (Linear.ForwardGelu, BackwardGelu).</summary>
    bool Quantized(string module) => baseDType == BaseDType.Fp8 && BaseDTypes.Quantizes(module + ".weight");

    /// <summary>The most bytes alive at once during the step, and those alive when the forward ends (the kept state).</summary>
    public (long Peak, long Kept) Run(bool recompute)
    {
        var c = s.Config;
        // Batches.FlowMatchingBatch: img, img ids, txt, txt ids, timesteps, y, guidance; then the target.
        long inputs = Compute(B * Li * c.InChannels) + Compute(B * Li * 3) + Compute(B * Lt * c.ContextInDim) + Compute(B * Lt * 3)
                      + Compute(B) + Compute(B * c.VecInDim) + (c.GuidanceEmbed ? Compute(B) : 0) + Compute(B * Li * c.OutChannels);

        // ---- FluxModel.Forward
        long img = LinearForward("img_in", B * Li, c.InChannels, C);
        long vec = Compute(B * C);                                            // Conditioning's result, freed at the end of Forward
        long txt = LinearForward("txt_in", B * Lt, c.ContextInDim, C);
        long ids = Compute(B * L * 3);                                        // PositionEmbedding: cat(txt_ids, img_ids)
        long pe = Stats(B * L * c.HeadDim);                                   // (B, L, D/2, 2)
        Free(ids);
        long siluVec = Compute(B * C);
        long state = inputs + pe + siluVec;

        var doubleKept = new long[c.Depth];
        for (int i = 0; i < c.Depth; i++)
        {
            state += img + txt;                                               // the entry owns the block's inputs
            var (kept, imgOut, txtOut) = DoubleBlockForward(i);
            if (recompute) Free(kept); else doubleKept[i] = kept;
            (img, txt) = (imgOut, txtOut);
        }
        long x = Compute(B * L * C);                                          // JoinTextFirst frees the last outputs
        Free(img + txt);
        var singleKept = new long[c.DepthSingleBlocks];
        for (int i = 0; i < c.DepthSingleBlocks; i++)
        {
            state += x;
            var (kept, y) = SingleBlockForward(i);
            if (recompute) Free(kept); else singleKept[i] = kept;
            x = y;
        }
        long imgOut1 = Compute(B * Li * C);                                   // ImageRows frees the joint output
        Free(x);
        // LastLayer.Forward: mod, shift (freed), scale, normed, stats (kept), the prediction
        long mod = LinearForward("final_layer.adaLN_modulation.1", B, C, 2 * C);
        long shift = Compute(B * C);
        long final = Compute(B * C) + Compute(B * Li * C) + Stats(B * Li * 2);
        long prediction = LinearForward("final_layer.linear", B * Li, C, c.OutChannels);
        Free(mod + shift);
        Free(vec);
        state += imgOut1 + final + doubleKept.Sum() + singleKept.Sum();
        long keptAtEnd = live;

        // ---- MSE and FluxModel.Backward
        long dPrediction = Compute(B * Li * c.OutChannels);
        long dNormed = LinearBackward("final_layer.linear", B * Li, C, c.OutChannels, true);
        long dImgOut = Compute(B * Li * C);
        Free(Compute(B * C) + Compute(B * C));                                // dshift, dscale
        Free(dNormed);
        long dJoint = Compute(B * L * C);
        for (int i = c.DepthSingleBlocks - 1; i >= 0; i--)
        {
            long rebuilt = recompute ? SingleBlockRecompute(i) : 0;
            long d = SingleBlockBackward(i);
            Free(rebuilt);
            Free(dJoint);
            dJoint = d;
        }
        long dTxt = Compute(B * Lt * C), dImg = Compute(B * Li * C);
        Free(dJoint);
        for (int i = c.Depth - 1; i >= 0; i--)
        {
            long rebuilt = recompute ? DoubleBlockRecompute(i) : 0;
            var (di, dt) = DoubleBlockBackward(i);
            Free(rebuilt);
            Free(dImg + dTxt);
            (dImg, dTxt) = (di, dt);
        }
        Free(dTxt + dImg + dImgOut);
        Free(state + dPrediction + prediction);
        if (live != 0) throw new InvalidOperationException($"the step walk is unbalanced: {live} bytes left alive at the end");
        return (peak, keptAtEnd);
    }

    // ---------------------------------------------------------------- the ledger

    long Alloc(long bytes)
    {
        live += bytes;
        peak = Math.Max(peak, live);
        return bytes;
    }

    void Free(long bytes) => live -= bytes;

    long Compute(long elements) => Alloc(m.Compute(elements));
    long Stats(long elements) => Alloc(m.Stats(elements));
    long Master(long elements) => Alloc(m.Master(elements));
    long ComputeIf(bool when, long elements) => when ? Compute(elements) : 0;

    // ---------------------------------------------------------------- Linear and LoraBinding

    int R2 => s.Mode == LoraMode.Meta ? s.Rank2 : s.Rank1;

    /// <summary>Linear.Forward: y (n, d_out), then LoraBinding.AddDelta's stacked Down, down projections and deltas.</summary>
    long LinearForward(string module, long n, int dIn, int dOut)
    {
        long y = Compute(n * dOut);
        if (!targetRows.TryGetValue(module, out var rows)) return y;
        if (s.FusedLora)
        {
            FusedForward(module, rows, n);
            return y;
        }
        bool stacked = rows.Length > 1, meta = s.Mode == LoraMode.Meta;
        long gn = n / groups, sumR1 = (long)rows.Length * s.Rank1;
        long stack = ComputeIf(stacked, sumR1 * dIn);
        var parts = new long[rows.Length];                                    // every target's delta, all groups
        for (int g = 0; g < groups; g++)
        {
            long xg = ComputeIf(groups > 1, gn * dIn);
            long downAll = Compute(gn * sumR1);
            for (int j = 0; j < rows.Length; j++)
            {
                long down = ComputeIf(stacked, gn * s.Rank1);
                long mid = ComputeIf(meta, gn * s.Rank2);
                parts[j] += Compute(gn * rows[j]);
                Free(mid + down);
            }
            Free(downAll + xg);
        }
        for (int j = 0; j < rows.Length; j++)                                 // joined over the groups, added into y, freed
            Free(ComputeIf(groups > 1, n * rows[j]) + parts[j]);
        Free(stack);
        return y;
    }

    /// <summary>Linear.Backward: dx (n, d_in) when asked, then LoraBinding.Backward.</summary>
    long LinearBackward(string module, long n, int dIn, int dOut, bool inputGradient)
    {
        long dx = ComputeIf(inputGradient, n * dIn);
        LoraBackward(module, n, dIn, dOut, inputGradient);
        return dx;
    }

    /// <summary>LoraBinding.Backward: per group the recomputed projections, per target dyₛ and its gradients, then dD and dx.</summary>
    void LoraBackward(string module, long n, int dIn, int dOut, bool inputGradient)
    {
        if (!targetRows.TryGetValue(module, out var rows)) return;
        if (s.FusedLora)
        {
            FusedBackward(module, rows, n, dIn, inputGradient);
            return;
        }
        bool stacked = rows.Length > 1, meta = s.Mode == LoraMode.Meta;
        long gn = n / groups, sumR1 = (long)rows.Length * s.Rank1;
        long stack = ComputeIf(stacked, sumR1 * dIn);
        for (int g = 0; g < groups; g++)
        {
            long xg = ComputeIf(groups > 1, gn * dIn), dyg = ComputeIf(groups > 1, gn * dOut);
            long downAll = Compute(gn * sumR1);
            long dDowns = 0;
            foreach (int r in rows)
            {
                long dyS = Compute(gn * r);
                long down = ComputeIf(stacked, gn * s.Rank1);
                long mid = ComputeIf(meta, gn * s.Rank2);
                long dmid = Compute(gn * R2);
                if (meta) { dDowns += Compute(gn * s.Rank1); Free(dmid); }
                else dDowns += dmid;
                Free(mid + down + dyS);
            }
            long dDownAll = stacked ? Compute(gn * sumR1) : dDowns;
            if (stacked) Free(dDowns);
            if (s.TrainDown && stacked)
            {
                long stackGrad = Master(sumR1 * dIn);
                foreach (int _ in rows) Free(Compute((long)s.Rank1 * dIn));
                Free(stackGrad);
            }
            if (inputGradient) Free(Compute(gn * dIn));                      // dxg, added into dx
            Free(dDownAll + downAll + dyg + xg);
        }
        Free(stack);
    }

    /// <summary>FusedStage2.cs's forward: per group a (gn, Σ r2), kept for the backward when the identity trains (a recomputed block's replaces the first).</summary>
    void FusedForward(string module, int[] rows, long n)
    {
        long gn = n / groups, sumR2 = (long)rows.Length * s.Rank2;
        for (int g = 0; g < groups; g++)
        {
            long a = Compute(gn * sumR2);
            if (!s.TrainIdentity) { Free(a); continue; }
            Keep(module, g, a);
        }
    }

    /// <summary>FusedStage2Cache.Keep: a new forward's a replaces the one kept before (freed once the new one exists).</summary>
    void Keep(string module, int g, long a)
    {
        if (keptA.Remove((module, g), out long old)) Free(old);
        keptA[(module, g)] = a;
    }

    /// <summary>
    /// FusedStage2.cs's backward: per group the kept a, dmid (gn, Σ r2) and, when the identity trains, G (Σ r2, d_in)
    /// fp32 (grouped: the cache's G, persistent, not allocated here); with freshDx (one group, InputGradient) dx = dmid·A
    /// as a new (n, d_in), returned.
    /// </summary>
    long FusedBackward(string module, int[] rows, long n, int dIn, bool inputGradient, bool freshDx = false)
    {
        if (!s.TrainIdentity && !inputGradient && !freshDx) return 0;
        long gn = n / groups, sumR2 = (long)rows.Length * s.Rank2, fresh = 0;
        for (int g = 0; g < groups; g++)
        {
            long a = s.TrainIdentity ? keptA.Remove((module, g), out long k) ? k : Compute(gn * sumR2) : 0;
            long dmid = Compute(gn * sumR2);
            if (s.TrainIdentity && !grouped) Free(Master(sumR2 * dIn));
            if (freshDx) fresh = Compute(gn * dIn);
            Free(dmid + a);
        }
        return fresh;
    }

    /// <summary>
    /// LoraBinding.Delta, the module's deltas as a new (n, d_out) tensor (Linear.ForwardGelu): FusedDelta's a (kept) and
    /// a·Uᵀ on the fused path with one group and one target covering all of y, else a zero tensor AddDelta adds into.
    /// </summary>
    long Delta(string module, long n, int dIn, int dOut)
    {
        if (!targetRows.TryGetValue(module, out var rows)) return 0;
        if (!(s.FusedLora && groups == 1 && rows.Length == 1 && rows[0] == dOut)) return LinearForward(module, n, dIn, dOut);
        long a = Compute(n * s.Rank2);
        long delta = Compute(n * dOut);
        if (s.TrainIdentity) Keep(module, 0, a);
        else Free(a);
        return delta;
    }

    /// <summary>
    /// LoraBinding.InputGradient, the LoRA part of dx as a new (n, d_in) tensor (Linear.BackwardGelu): the fused
    /// backward's fresh dmid·A with one group, else a zero tensor the LoRA backward adds into.
    /// </summary>
    long InputGradient(string module, long n, int dIn, int dOut)
    {
        if (!targetRows.TryGetValue(module, out var rows)) return 0;
        if (s.FusedLora && groups == 1) return FusedBackward(module, rows, n, dIn, inputGradient: false, freshDx: true);
        return LinearBackward(module, n, dIn, dOut, true);
    }

    // ---------------------------------------------------------------- DoubleBlock

    /// <summary>DoubleBlock.Forward: (kept, img out, txt out).</summary>
    (long Kept, long Img, long Txt) DoubleBlockForward(int i)
    {
        string p = $"double_blocks.{i}";
        long kept = 0;
        // QkvNormRope: the joint q, k, v each stream writes its tokens into; the record keeps them (V, Joint's QRope, KRope)
        if (qkvFused) kept += Compute(B * L * C) + Compute(B * L * C) + Compute(B * L * C);
        kept += PrepareAttention($"{p}.img", Li) + PrepareAttention($"{p}.txt", Lt);
        if (!qkvFused)
        {
            long q = Compute(B * L * C), k = Compute(B * L * C);             // the joined normalised q, k: freed once roped
            kept += Compute(B * L * C);                                       // v
            kept += Compute(B * L * C) + Compute(B * L * C);                  // QRope, KRope
            kept += Compute(B * L * C) + Stats(B * H * L);                    // Output, Lse
            Free(k + q);
        }
        else kept += Compute(B * L * C) + Stats(B * H * L);                   // Output, Lse
        var (imgKept, imgOut) = Finish($"{p}.img", Li);
        var (txtKept, txtOut) = Finish($"{p}.txt", Lt);
        return (kept + imgKept + txtKept, imgOut, txtOut);
    }

    long DoubleBlockRecompute(int i)
    {
        var (kept, img, txt) = DoubleBlockForward(i);
        Free(img + txt);
        return kept;
    }

    /// <summary>
    /// PrepareAttention: the two modulation sets, LN(x) modulated with its stats, qkv; unfused split into q, k, v and
    /// the QK norms (5C per token and two rstd), fused (QkvNormRope) qkv itself kept with the two rstd (3C).
    /// </summary>
    long PrepareAttention(string p, int ls)
    {
        long n = (long)B * ls;
        long all = LinearForward($"{p}_mod.lin", B, C, 6 * C);
        long kept = 0;
        for (int j = 0; j < 6; j++) kept += Compute(B * C);
        Free(all);
        kept += Compute(n * C) + Stats(n * 2);
        long qkv = LinearForward($"{p}_attn.qkv", n, C, 3 * C);
        if (qkvFused) return kept + qkv + Stats(B * H * ls) + Stats(B * H * ls);   // the record takes qkv; q, k rstd
        kept += Compute(n * C) + Compute(n * C) + Compute(n * C);            // q, k, v
        kept += Compute(n * C) + Stats(B * H * ls) + Compute(n * C) + Stats(B * H * ls);   // norms, rstds
        Free(qkv);
        return kept;
    }

    /// <summary>Finish: projection, first residual, second modulated LN, MLP; returns (kept, stream output).</summary>
    (long Kept, long Out) Finish(string p, int ls)
    {
        long n = (long)B * ls;
        long kept = views ? 0 : Compute(n * C);                               // this stream's attention rows: a view, or a copy
        kept += LinearForward($"{p}_attn.proj", n, C, C);
        kept += Compute(n * C) + Compute(n * C) + Stats(n * 2);               // x1, modulated2, stats2 (one op with ResidualNorm)
        kept += MlpHidden(p, n);
        kept += LinearForward($"{p}_mlp.2", n, Mlp, C);
        return (kept, Compute(n * C));
    }

    /// <summary>MlpHidden: hidden and act (n, M); GeluEpilogue on a bf16 weight: the LoRA delta first, then one product makes both.</summary>
    long MlpHidden(string p, long n)
    {
        string module = $"{p}_mlp.0";
        if (!geluFused || Quantized(module)) return LinearForward(module, n, C, Mlp) + Compute(n * Mlp);
        long delta = Delta(module, n, C, Mlp);
        long kept = Compute(n * Mlp) + Compute(n * Mlp);                      // pre, act (LinearGelu)
        Free(delta);
        return kept;
    }

    /// <summary>DoubleBlock.Backward: (d img, d txt).</summary>
    (long DImg, long DTxt) DoubleBlockBackward(int i)
    {
        string p = $"double_blocks.{i}";
        long joint = views ? Compute(B * L * C) : 0;                          // d attention output, the streams' proj backwards write their rows
        var img = FinishBackward($"{p}.img", Li);
        var txt = FinishBackward($"{p}.txt", Lt);
        long dAttn = views ? joint : Compute(B * L * C);                      // else the Concat of the streams' copies
        Free(img.DAttn + txt.DAttn);
        var (dq, dk, dv) = AttentionBackward();
        PrepareBackward($"{p}.img", Li, img);
        PrepareBackward($"{p}.txt", Lt, txt);
        Free(dq + dk + dv);
        Free(dAttn);
        return (img.Dx, txt.Dx);
    }

    readonly record struct FinishGradients(long Dx, long DAttn, long DGate1, long DMod2);

    FinishGradients FinishBackward(string p, int ls)
    {
        long n = (long)B * ls;
        long dMlp = Compute(n * C), dGate2 = Compute(B * C);
        long dx1 = residualNorm ? 0 : Compute(n * C);                         // unfused: zeros + dOut
        long dHidden = MlpHiddenBackward(p, n);
        long dModulated2 = LinearBackward($"{p}_mlp.0", n, C, Mlp, true);
        long dShift2, dScale2, dProj = 0, dGate1 = 0;
        if (residualNorm)                                                     // dx1, d proj, d gate1, d shift2, d scale2: one op
            (dx1, dProj, dGate1, dShift2, dScale2) = (Compute(n * C), Compute(n * C), Compute(B * C), Compute(B * C), Compute(B * C));
        else
        {
            long dxn = Compute(n * C);
            (dShift2, dScale2) = (Compute(B * C), Compute(B * C));
            Free(dxn);
        }
        Free(dModulated2 + dHidden);
        Free(dMlp);
        if (!residualNorm) (dProj, dGate1) = (Compute(n * C), Compute(B * C));
        long dAttn = 0;
        if (views)                                                            // into the joint gradient's rows
        {
            if (Quantized($"{p}_attn.proj")) Free(Compute(n * C));            // the fp8 product's dx, copied in
            LoraBackward($"{p}_attn.proj", n, C, C, true);
        }
        else dAttn = LinearBackward($"{p}_attn.proj", n, C, C, true);
        Free(dProj);
        return new FinishGradients(dx1, dAttn, dGate1, dShift2 + dScale2 + dGate2);
    }

    /// <summary>MlpHiddenBackward: d hidden (n, M); GeluEpilogue on a bf16 weight: the LoRA part of d act first, then one product.</summary>
    long MlpHiddenBackward(string p, long n)
    {
        string module = $"{p}_mlp.2";
        if (!geluFused || Quantized(module))
        {
            long dAct = LinearBackward(module, n, Mlp, C, true);
            long dHidden = Compute(n * Mlp);
            Free(dAct);
            return dHidden;
        }
        long loraDx = InputGradient(module, n, Mlp, C);
        long dPre = Compute(n * Mlp);                                         // LinearBackwardGelu
        Free(loraDx);
        return dPre;
    }

    void PrepareBackward(string p, int ls, FinishGradients g)
    {
        long n = (long)B * ls;
        long dQkv = qkvFused ? Compute(n * 3 * C) : StreamQkvBackward(n);    // fused: SplitIntoBackward's d qkv
        long dModulated1 = LinearBackward($"{p}_attn.qkv", n, C, 3 * C, true);
        long dxn = Compute(n * C), dMod1 = Compute(B * C) + Compute(B * C);
        Free(dxn);
        ModulationBackward($"{p}_mod.lin", 6);
        Free(dMod1 + g.DGate1 + g.DMod2);
        Free(dModulated1 + dQkv);
    }

    /// <summary>StreamQkvBackward: this stream's rows of dq, dk, dv (copies), then SplitBackward → d qkv (n, 3C).</summary>
    long StreamQkvBackward(long n)
    {
        long slices = Compute(n * C) + Compute(n * C) + Compute(n * C);
        long dQkv = SplitBackward(n);
        Free(slices);
        return dQkv;
    }

    // ---------------------------------------------------------------- SingleBlock

    /// <summary>
    /// SingleBlock.Forward: (kept, output). Unfused the record keeps the MLP rows of linear1 (a copy, M) and q, k, v,
    /// their norms and the roped q, k (7C); QkvNormRope: the q/k/v columns' copy and the joint q, k, v (6C);
    /// GeluEpilogue: all of linear1's output (3C + M) instead of the MLP rows' copy, the cat written in place.
    /// </summary>
    (long Kept, long Out) SingleBlockForward(int i)
    {
        string p = $"single_blocks.{i}";
        long n = (long)B * L;
        long all = LinearForward($"{p}.modulation.lin", B, C, 3 * C);
        long kept = Compute(B * C) + Compute(B * C) + Compute(B * C);
        Free(all);
        kept += Compute(n * C) + Stats(n * 2);                                 // modulated, stats
        long lin1 = LinearForward($"{p}.linear1", n, C, 3 * C + Mlp);
        long qkv = Compute(n * 3 * C);                                         // linear1's q/k/v columns (Narrow: a copy)
        if (!geluFused) kept += Compute(n * Mlp);                              // MlpIn, a copy of its MLP columns
        if (qkvFused)
        {
            kept += Compute(n * C) + Compute(n * C) + Compute(n * C);          // the joint q, k, v
            kept += qkv + Stats(B * H * L) + Stats(B * H * L);                 // the record takes qkv; q, k rstd
        }
        else
        {
            kept += Compute(n * C) + Compute(n * C) + Compute(n * C);          // q, k, v
            kept += Compute(n * C) + Stats(B * H * L) + Compute(n * C) + Stats(B * H * L);   // norms, rstds
            Free(qkv);
            kept += Compute(n * C) + Compute(n * C);                           // QRope, KRope
        }
        kept += Compute(n * C) + Stats(B * H * L);                             // Output, Lse
        if (geluFused) kept += Compute(n * (C + Mlp)) + lin1;                  // SlicedCat; the record keeps lin1
        else
        {
            long act = Compute(n * Mlp);
            kept += Compute(n * (C + Mlp));                                    // cat
            Free(act + lin1);
        }
        kept += LinearForward($"{p}.linear2", n, C + Mlp, C);
        return (kept, Compute(n * C));
    }

    long SingleBlockRecompute(int i)
    {
        var (kept, output) = SingleBlockForward(i);
        Free(output);
        return kept;
    }

    /// <summary>SingleBlock.Backward: returns dx; every `using` gradient lives to the method's end.</summary>
    long SingleBlockBackward(int i)
    {
        string p = $"single_blocks.{i}";
        long n = (long)B * L;
        long dOut = Compute(n * C), dGate = Compute(B * C);
        long dx = Compute(n * C);
        long dCat = LinearBackward($"{p}.linear2", n, C + Mlp, C, true);
        Free(dOut);
        long dAttn = Compute(n * C);
        long dLin1 = geluFused ? Compute(n * (3 * C + Mlp)) : 0;              // GeluEpilogue: one buffer, its MLP columns written by the GELU backward
        long dAct = geluFused ? 0 : Compute(n * Mlp), dMlpIn = geluFused ? 0 : Compute(n * Mlp);
        var (dq, dk, dv) = AttentionBackward();
        // qkv and gelu fused: the fused op writes d qkv straight into dlin1's columns [0, 3C), no tensor of its own
        long dQkv = qkvFused ? (geluFused ? 0 : Compute(n * 3 * C)) : SplitBackward(n);
        Free(dq + dk + dv);
        if (!geluFused) dLin1 = Compute(n * (3 * C + Mlp));                   // Concat(d qkv, d MlpIn)
        long dModulated = LinearBackward($"{p}.linear1", n, C, 3 * C + Mlp, true);
        long dxn = Compute(n * C), dShiftScale = Compute(B * C) + Compute(B * C);
        Free(dxn);
        ModulationBackward($"{p}.modulation.lin", 3);
        Free(dShiftScale + dGate);
        Free(dModulated + dLin1 + dQkv + dMlpIn + dAct + dAttn + dCat);
        return dx;
    }

    // ---------------------------------------------------------------- shared by both blocks

    /// <summary>
    /// QkvAttention.Backward over the joint sequence: dq, dk (rotated back), dv, each (B, H, L, D); QkvNormRope
    /// (AttendBackward): dq, dk w.r.t. the roped q, k, RoPE's backward being in the streams'.
    /// </summary>
    (long Dq, long Dk, long Dv) AttentionBackward()
    {
        long n = (long)B * L;
        long dqRope = Compute(n * C), dkRope = Compute(n * C), dv = Compute(n * C);
        if (qkvFused) return (dqRope, dkRope, dv);
        long dq = Compute(n * C), dk = Compute(n * C);
        Free(dqRope + dkRope);
        return (dq, dk, dv);
    }

    /// <summary>QkvAttention.SplitBackward: the two RMSNorm backwards, then the merged d qkv (n, 3C).</summary>
    long SplitBackward(long n)
    {
        long norms = Compute(n * C) + Compute(n * C);
        long dQkv = Compute(n * 3 * C);
        Free(norms);
        return dQkv;
    }

    /// <summary>Modulation.Backward: the sets' gradients joined (B, sets·C), then the linear's LoRA gradients.</summary>
    void ModulationBackward(string module, int sets)
    {
        long dAll = Compute((long)B * sets * C);
        LoraBackward(module, B, C, sets * C, false);
        Free(dAll);
    }
}
