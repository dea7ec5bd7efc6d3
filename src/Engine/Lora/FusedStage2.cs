namespace MetaLoraNative.Engine.Lora;

// The fused path of LoraBinding: D frozen in a Meta-LoRA (Stage 2, the Stage-1 warm-up, inference with an unmerged
// adapter). The stacked path's products reassociated around A = M·D (r2 × d_in), which FusedStage2Cache forms once
// per step and stacks per module, (Σ r2, d_in). For the rows x (n, d_in) of one group, per target j with y's column
// slice [s, s+rows) and a's columns [o, o+r2):
//   forward   a = x·Aᵀ (n, Σ r2): one GEMM per module     y[:, s:s+rows] += a[:, o:o+r2]·Uᵀ
//   backward  dU += dyₛᵀ·aⱼ   dmid[:, o:o+r2] = dyₛ·U   G = dmidᵀ·x (Σ r2, d_in)   dM += Gⱼ·Dᵀ (r2, r1)   dx += dmid·A
// With METALORA_LORA_GROUPED=1 (FusedStage2Cache.Grouped) every target's A is formed in one GemmGroup and the dM
// products wait for FinishBackward, the end of the backward, to run as one more.
// since (x·Dᵀ)·Mᵀ = x·(M·D)ᵀ and dmidᵀ·(x·Dᵀ) = (dmidᵀ·x)·Dᵀ. At r1 16, r2 1 no (n, r1) product is made: the down
// product's FLOPs drop r1/r2-fold, and every slice (y's and dy's columns, a group's rows, a target's rows of A or G)
// is read or written in place through GemmSlice, so no Narrow, Concat or AddNarrow copy is made. A training forward
// keeps a (n, Σ r2) for its backward (FusedStage2Cache.Keep): recomputing it would read x twice in the backward (for a
// and for G), and a is r1/r2 times smaller than the down the stacked path recomputes. G is fp32 (Master) so dM meets
// only fp32 roundings after the dmidᵀ·x reduction, as the stacked path's dM GEMM writes fp32.
public sealed partial class LoraBinding
{
    /// <summary>y (B, .., d_out) += U·A·x for every target of the module (the fused forward).</summary>
    void FusedAddDelta(string module, ReadOnlySpan<int> targets, Tensor x, Tensor y)
    {
        var be = Adapter.Backend;
        var fused = FusedGroups(module, targets);
        for (int gi = 0; gi < fused.Length; gi++)
        {
            var (factors, A, start, count) = fused[gi];                                            // A (Σ r2, d_in)
            var a = Merged(x, A, start, count);                                                    // (n, Σ r2)
            var yg = GroupRows(y, start, count);                                                   // (n, d_out)
            for (int j = 0, o = 0; j < targets.Length; o += factors.Up[targets[j]].Shape[1], j++)
            {
                var target = Adapter.Targets[targets[j]];
                var U = factors.Up[targets[j]].Value;                                              // (rows, r2)
                be.GemmSlice(MatrixSlice.ColumnsOf(a, o, U.Shape[1]), false, U, true,
                             yg.ColumnsOf(target.RowStart, target.Rows), 1f, 1f);                  // y[:, s:s+rows] += aⱼ·Uᵀ
            }
            if (TrainIdentity) Adapter.MergedDowns.Keep(this, module, gi, x, a);                   // for the backward's dU
            else a.Dispose();
        }
    }

    /// <summary>
    /// The fused backward: dU, dM (when the identity trains) and dx += dmid·A (when dx is given); with freshDx (one
    /// group only) it returns dmid·A as a new tensor of x's shape instead (<see cref="InputGradient"/>).
    /// </summary>
    Tensor? FusedBackward(string module, ReadOnlySpan<int> targets, Tensor x, Tensor dy, Tensor? dx, bool freshDx = false)
    {
        if (!TrainIdentity && dx == null && !freshDx) return null;
        Tensor? fresh = null;
        var be = Adapter.Backend;
        var fused = FusedGroups(module, targets);
        for (int gi = 0; gi < fused.Length; gi++)
        {
            var (factors, A, start, count) = fused[gi];                                            // A (Σ r2, d_in)
            var xg = GroupRows(x, start, count);                                                   // (n, d_in)
            var dyg = GroupRows(dy, start, count);                                                 // (n, d_out)
            // a (n, Σ r2) feeds only dU: the forward's, or recomputed when it kept none for this x
            using var a = TrainIdentity ? Adapter.MergedDowns.TakeKept(this, module, gi, x) ?? Merged(x, A, start, count) : null;
            using var dmid = be.Empty([checked((int)xg.Rows), A.Shape[0]]);                        // (n, Σ r2): each target writes its columns
            for (int j = 0, o = 0; j < targets.Length; o += factors.Up[targets[j]].Shape[1], j++)
            {
                var target = Adapter.Targets[targets[j]];
                var U = factors.Up[targets[j]];                                                    // (rows, r2)
                int r2 = U.Shape[1];
                var dyS = dyg.ColumnsOf(target.RowStart, target.Rows);                             // (n, rows), in place
                be.LoraUpBackward(dyS, U.Value, a == null ? null : (MatrixSlice?)MatrixSlice.ColumnsOf(a, o, r2), a == null ? null : (Tensor?)U.Grad,
                                  MatrixSlice.ColumnsOf(dmid, o, r2));                             // dU += dyₛᵀ·aⱼ, dmidⱼ = dyₛ·U
            }
            if (TrainIdentity && Adapter.MergedDowns.Grouped)
            {
                // G kept by the cache until FinishBackward issues every dM += Gⱼ·Dᵀ of the backward as one GemmGroup
                var cache = Adapter.MergedDowns;
                var g = cache.DeferredG(module, gi, A.Shape[0], A.Shape[1]);                       // (Σ r2, d_in), reused
                be.GemmSlice(dmid, true, xg, false, g);                                            // G = dmidᵀ·x (beta 0: all of g)
                for (int j = 0, o = 0; j < targets.Length; o += factors.Up[targets[j]].Shape[1], j++)
                {
                    var M = factors.Mid[targets[j]]!;                                              // (r2, r1)
                    cache.Defer(new GemmEntry(new MatrixSlice(g, o, M.Shape[0], 0, A.Shape[1]), false,
                                              Adapter.Down[targets[j]].Value, true, M.Grad, 1f, 1f));   // dM += Gⱼ·Dᵀ, deferred
                }
            }
            else if (TrainIdentity)
            {
                using var g = be.Empty([A.Shape[0], A.Shape[1]], Precision.Master);                // (Σ r2, d_in), written whole below
                be.GemmSlice(dmid, true, xg, false, g);                                            // G = dmidᵀ·x
                for (int j = 0, o = 0; j < targets.Length; o += factors.Up[targets[j]].Shape[1], j++)
                {
                    var M = factors.Mid[targets[j]]!;                                              // (r2, r1)
                    be.GemmSlice(new MatrixSlice(g, o, M.Shape[0], 0, A.Shape[1]), false,
                                 Adapter.Down[targets[j]].Value, true, M.Grad, 1f, 1f);            // dM += Gⱼ·Dᵀ
                }
            }
            if (dx != null) be.GemmSlice(dmid, false, A, false, GroupRows(dx, start, count), 1f, 1f);   // dx += dmid·A
            if (freshDx)
            {
                using var flat = be.LinearBackward(dmid, A);                                       // dx = dmid·A (n, d_in)
                fresh = flat.Reshape(x.Shape);
            }
        }
        return fresh;
    }

    /// <summary>
    /// The fused forward's delta U·A·x as a new tensor (B, .., d_out), for one target covering all of y and one group
    /// (<see cref="Delta"/>): a = x·Aᵀ, delta = a·Uᵀ written (=); a kept for the backward as FusedAddDelta keeps it.
    /// </summary>
    Tensor FusedDelta(string module, ReadOnlySpan<int> targets, Tensor x)
    {
        var be = Adapter.Backend;
        var (factors, A, start, count) = FusedGroups(module, targets)[0];                          // A (r2, d_in)
        var a = Merged(x, A, start, count);                                                        // (B, .., r2)
        var delta = be.Linear(a, factors.Up[targets[0]].Value, null);                              // (B, .., d_out) = a·Uᵀ
        if (TrainIdentity) Adapter.MergedDowns.Keep(this, module, 0, x, a);                        // for the backward's dU
        else a.Dispose();
        return delta;
    }

    /// <summary>
    /// Ends a backward: the fused path's deferred dM products (METALORA_LORA_GROUPED=1) are issued, as one GemmGroup.
    /// FluxModel's backward calls it; a caller that runs <see cref="Backward"/> module by module calls it before it
    /// reads the M gradients. Nothing to do on the stacked path or with grouping off.
    /// </summary>
    public void FinishBackward()
    {
        if (Path == LoraPath.Fused) Adapter.MergedDowns.FinishBackward();
    }

    /// <summary>
    /// Per group of the batch: its identity's factors and the module's stacked A (Σ r2, d_in), formed when stale, after
    /// the cache dropped the identities this binding does not use.
    /// </summary>
    (IdentityFactors Factors, Tensor A, int Start, int Count)[] FusedGroups(string module, ReadOnlySpan<int> targets)
    {
        var cache = Adapter.MergedDowns;
        cache.Retain(identities);
        var fused = new (IdentityFactors, Tensor, int, int)[groups.Length];
        for (int g = 0; g < groups.Length; g++)
        {
            var (id, start, count) = groups[g];
            fused[g] = (Adapter.Identities[id], cache.StackedA(id, module, targets), start, count);
        }
        return fused;
    }

    /// <summary>a = x·Aᵀ for the group's rows, (n, Σ r2): one Linear when the group is the whole batch.</summary>
    Tensor Merged(Tensor x, Tensor A, int start, int count)
    {
        var be = Adapter.Backend;
        if (count == batch) return be.Linear(x, A, null);
        var xg = GroupRows(x, start, count);
        var a = be.Empty(checked((int)xg.Rows), A.Shape[0]);                                      // (n, Σ r2), written whole (beta 0)
        be.GemmSlice(xg, false, A, true, a);
        return a;
    }

    /// <summary>The rows of samples [start, start+count) of a batch-major tensor, as a block of its matrix view.</summary>
    MatrixSlice GroupRows(Tensor t, int start, int count)
    {
        long perSample = t.Rows / batch;
        return ((MatrixSlice)t).RowsOf(start * perSample, count * perSample);
    }
}
