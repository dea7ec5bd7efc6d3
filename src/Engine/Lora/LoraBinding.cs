namespace MetaLoraNative.Engine.Lora;

/// <summary>Which form of the LoRA products a binding issues.</summary>
public enum LoraPath
{
    /// <summary>Fused where it applies (D frozen, Meta mode), stacked elsewhere; METALORA_LORA=stacked forces stacked.</summary>
    Auto,
    /// <summary>down = x·Dᵀ, mid = down·Mᵀ, y += mid·Uᵀ: every factor trainable (LoraBinding.cs).</summary>
    Stacked,
    /// <summary>a = x·(M·D)ᵀ with A = M·D formed once per step, y's slice += a·Uᵀ: D frozen, Meta mode (FusedStage2.cs).</summary>
    Fused,
}

/// <summary>
/// Binds an adapter to one forward/backward pass: which identity each sample of the batch uses and which factors
/// want gradients. Samples are grouped into runs of consecutive samples sharing an identity, so Stage 2 (one
/// identity) and most Stage-1 batches run each LoRA as a handful of whole-batch GEMMs.
///
/// Per target, for the rows x (n, d_in) of one group, with y's column slice [s, s+rows):
///   forward   down = x·Dᵀ (n, r1)   mid = down·Mᵀ (n, r2)   y[:, s:s+rows] += mid·Uᵀ
///   backward  dU += dyₛᵀ·mid   dmid = dyₛ·U   dM += dmidᵀ·down   ddown = dmid·M   dD += ddownᵀ·x   dx += ddown·D
/// The targets of one module share x, so their Downs are stacked: one GEMM makes every down projection and one every
/// dx; dD is one GEMM per target, straight into its fp32 gradient.
/// down and mid are recomputed in the backward from x (which the layer keeps anyway): at rank 16 that costs
/// about r1/d_out of the frozen GEMM and saves storing two activations per target.
/// With D frozen in Meta mode (Stage 2, the Stage-1 warm-up, inference with an unmerged adapter) the binding takes
/// the fused path instead (<see cref="LoraPath.Fused"/>, FusedStage2.cs): the same products reassociated around
/// A = M·D.
/// </summary>
public sealed partial class LoraBinding
{
    readonly (int Identity, int Start, int Count)[] groups;
    readonly int[] identities;
    readonly int batch;

    /// <param name="identityOfSample">Identity index for each sample of the batch.</param>
    /// <param name="path">Auto: fused when D is frozen in Meta mode (unless METALORA_LORA=stacked). Fused on a binding
    /// that trains D or on a standard LoRA is refused.</param>
    public LoraBinding(LoraAdapter adapter, int[] identityOfSample, bool trainDown, bool trainIdentity, LoraPath path = LoraPath.Auto)
    {
        Adapter = adapter;
        TrainDown = trainDown;
        TrainIdentity = trainIdentity;
        batch = identityOfSample.Length;
        var list = new List<(int, int, int)>();
        for (int b = 0; b < identityOfSample.Length;)
        {
            int id = identityOfSample[b];
            if (id < 0 || id >= adapter.Identities.Count) throw new ArgumentException($"sample {b} names identity {id}, but the adapter has {adapter.Identities.Count}");
            int e = b;
            while (e < identityOfSample.Length && identityOfSample[e] == id) e++;
            list.Add((id, b, e - b));
            b = e;
        }
        groups = [.. list];
        identities = [.. groups.Select(g => g.Identity).Distinct()];
        bool fusable = !trainDown && adapter.Mode == LoraMode.Meta;
        if (path == LoraPath.Fused && !fusable)
            throw new ArgumentException($"the fused LoRA path needs D frozen in a Meta-LoRA; this binding {(trainDown ? "trains D" : "binds a standard LoRA")}");
        Path = fusable && (path == LoraPath.Fused || path == LoraPath.Auto && PathFromEnvironment() != LoraPath.Stacked) ? LoraPath.Fused : LoraPath.Stacked;
    }

    public LoraAdapter Adapter { get; }
    public bool TrainDown { get; }
    public bool TrainIdentity { get; }
    /// <summary>The path this binding runs: Stacked or Fused (never Auto).</summary>
    public LoraPath Path { get; }

    /// <summary>METALORA_LORA: unset, "auto" or "fused" → Auto; "stacked" → Stacked (the fallback, and the bench's baseline).</summary>
    public static LoraPath PathFromEnvironment() => Environment.GetEnvironmentVariable("METALORA_LORA") switch
    {
        null or "" or "auto" or "fused" => LoraPath.Auto,
        "stacked" => LoraPath.Stacked,
        var v => throw new InputException("METALORA_LORA", $"METALORA_LORA={v}: expected auto, fused or stacked"),
    };

    /// <summary>
    /// The Downs of a module's targets stacked along the rows, (Σ r1, d_in), so one GEMM makes every target's down
    /// projection (q, k, v of a fused qkv share their input): borrowed when the module has a single target.
    /// </summary>
    Borrowed<Tensor> StackedDown(ReadOnlySpan<int> targets)
    {
        if (targets.Length == 1) return Borrowed<Tensor>.Of(Adapter.Down[targets[0]].Value);
        var downs = new Tensor[targets.Length];
        for (int j = 0; j < targets.Length; j++) downs[j] = Adapter.Down[targets[j]].Value;
        return Borrowed<Tensor>.Owned(Adapter.Backend.Concat(0, downs));
    }

    /// <summary>Target j's columns of the stacked down projection (n, Σ r1).</summary>
    Borrowed<Tensor> DownOf(Tensor downAll, ReadOnlySpan<int> targets, int j, int offset) =>
        targets.Length == 1 ? Borrowed<Tensor>.Of(downAll)
            : Borrowed<Tensor>.Owned(downAll.Backend.Narrow(downAll, -1, offset, Adapter.Down[targets[j]].Shape[0]));

    /// <summary>y (B, .., d_out) += the LoRA deltas of every target living in this module.</summary>
    public void AddDelta(string module, Tensor x, Tensor y)
    {
        var targets = Adapter.TargetsOf(module);
        if (targets.Length == 0) return;
        if (Path == LoraPath.Fused)
        {
            FusedAddDelta(module, targets, x, y);
            return;
        }
        var be = Adapter.Backend;
        using var dStack = StackedDown(targets);
        var parts = new Tensor[targets.Length, groups.Length];
        for (int g = 0; g < groups.Length; g++)
        {
            var (id, start, count) = groups[g];
            var factors = Adapter.Identities[id];
            using var xg = Rows(x, start, count);
            using var downAll = be.Linear(xg.Tensor, dStack.Tensor, null);                                // (n, Σ r1): one GEMM for the module
            for (int j = 0, offset = 0; j < targets.Length; offset += Adapter.Down[targets[j]].Shape[0], j++)
            {
                int t = targets[j];
                using var down = DownOf(downAll, targets, j, offset);                         // (n, r1)
                using var mid = factors.Mid[t] is { } m ? be.Linear(down.Tensor, m.Value, null) : null; // (n, r2)
                parts[j, g] = be.Linear(mid ?? down.Tensor, factors.Up[t].Value, null);          // (n, rows)
            }
        }
        for (int j = 0; j < targets.Length; j++)
        {
            var byGroup = Enumerable.Range(0, groups.Length).Select(g => parts[j, g]).ToArray();
            using (var delta = byGroup.Length == 1 ? byGroup[0] : be.Concat(0, byGroup))
                be.AddNarrow(y, delta, -1, Adapter.Targets[targets[j]].RowStart);
            if (byGroup.Length > 1) foreach (var p in byGroup) p.Dispose();
        }
    }

    /// <summary>Accumulates the factor gradients of this module's targets and, when dx is given, adds their input gradient.</summary>
    public void Backward(string module, Tensor x, Tensor dy, Tensor? dx)
    {
        var targets = Adapter.TargetsOf(module);
        if (targets.Length == 0) return;
        if (Path == LoraPath.Fused)
        {
            FusedBackward(module, targets, x, dy, dx);
            return;
        }
        var be = Adapter.Backend;
        using var dStack = StackedDown(targets);
        foreach (var (id, start, count) in groups)
        {
            var factors = Adapter.Identities[id];
            using var xg = Rows(x, start, count);
            using var dyg = Rows(dy, start, count);
            using var downAll = be.Linear(xg.Tensor, dStack.Tensor, null);                                // recomputed (n, Σ r1)
            var dDowns = new Tensor[targets.Length];
            for (int j = 0, offset = 0; j < targets.Length; offset += Adapter.Down[targets[j]].Shape[0], j++)
            {
                int t = targets[j];
                var target = Adapter.Targets[t];
                var M = factors.Mid[t];
                var U = factors.Up[t];
                using var dyS = be.Narrow(dyg.Tensor, -1, target.RowStart, target.Rows);         // (n, rows)
                using var down = DownOf(downAll, targets, j, offset);                         // (n, r1)
                using var mid = M != null ? be.Linear(down.Tensor, M.Value, null) : null;          // recomputed (n, r2)
                if (TrainIdentity) be.Gemm(dyS, true, mid ?? down.Tensor, false, U.Grad, 1f, 1f); // dU += dyₛᵀ·mid
                var dmid = be.LinearBackward(dyS, U.Value);                                 // (n, r2)
                if (M != null)
                {
                    if (TrainIdentity) be.Gemm(dmid, true, down.Tensor, false, M.Grad, 1f, 1f);   // dM += dmidᵀ·down
                    dDowns[j] = be.LinearBackward(dmid, M.Value);                           // (n, r1)
                    dmid.Dispose();
                }
                else dDowns[j] = dmid;
            }
            // dD straight into each target's fp32 gradient (beta = 1): the GEMM accumulates in fp32 and writes fp32, so
            // no bf16 tensor sits between the products and the gradient. (A stacked GEMM followed by a Narrow would
            // return the slice as a Compute tensor, i.e. bf16 on the GPU: a 2^-9 relative rounding on every D
            // gradient, larger than the fp32 accumulation it feeds.) The FLOPs are those of one stacked GEMM.
            if (TrainDown)
                for (int j = 0; j < targets.Length; j++)
                    be.Gemm(dDowns[j], true, xg.Tensor, false, Adapter.Down[targets[j]].Grad, 1f, 1f);   // dD += ddownᵀ·x
            // one GEMM for dx over the stacked Downs, as for the forward
            using var dDownAll = targets.Length == 1 ? dDowns[0] : be.Concat(-1, dDowns);   // (n, Σ r1)
            if (targets.Length > 1) foreach (var d in dDowns) d.Dispose();
            if (dx != null)
            {
                using var dxg = be.LinearBackward(dDownAll, dStack.Tensor);                           // (n, d_in)
                if (count == batch) be.AddInPlace(dx, dxg);
                else be.AddNarrow(dx, dxg, 0, start);
            }
        }
    }

    /// <summary>
    /// The module's LoRA delta as a new tensor (B, .., d_out), what <see cref="AddDelta"/> adds to y; null when the module
    /// has no targets. For a product that accumulates the frozen weight's onto it (Linear.ForwardGelu, beta = 1): on the
    /// fused path with one target covering all of y and one identity group, the last product writes it (=), so no zero
    /// fill and no read of it happen; otherwise AddDelta into a zero tensor.
    /// </summary>
    public Tensor? Delta(string module, Tensor x, int dOut)
    {
        var targets = Adapter.TargetsOf(module);
        if (targets.Length == 0) return null;
        if (Path == LoraPath.Fused && groups.Length == 1 && targets.Length == 1
            && Adapter.Targets[targets[0]].RowStart == 0 && Adapter.Targets[targets[0]].Rows == dOut)
            return FusedDelta(module, targets, x);
        int[] shape = (int[])x.Shape.Clone();
        shape[^1] = dOut;
        var y = Adapter.Backend.Zeros(shape);
        AddDelta(module, x, y);
        return y;
    }

    /// <summary>
    /// <see cref="Backward"/>'s input gradient as a new tensor (the shape of x), the factor gradients accumulated as
    /// Backward does; null when the module has no targets. On the fused path with one identity group the last product
    /// writes it (=); otherwise Backward into a zero tensor.
    /// </summary>
    public Tensor? InputGradient(string module, Tensor x, Tensor dy)
    {
        var targets = Adapter.TargetsOf(module);
        if (targets.Length == 0) return null;
        if (Path == LoraPath.Fused && groups.Length == 1) return FusedBackward(module, targets, x, dy, null, freshDx: true);
        var dx = Adapter.Backend.Zeros(x.Shape);
        Backward(module, x, dy, dx);
        return dx;
    }

    /// <summary>The samples [start, start+count) of a batch-major tensor: the tensor itself (borrowed) when that is all of it.</summary>
    Borrowed<Tensor> Rows(Tensor x, int start, int count) =>
        count == batch ? Borrowed<Tensor>.Of(x) : Borrowed<Tensor>.Owned(x.Backend.Narrow(x, 0, start, count));


    /// <summary>Every factor that receives a gradient in this binding.</summary>
    public IEnumerable<LoraParameter> TrainableParameters()
    {
        if (TrainDown) foreach (var d in Adapter.Down) yield return d;
        if (TrainIdentity)
            foreach (int id in identities)
                foreach (var p in Adapter.Identities[id].Parameters()) yield return p;
    }
}
