using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Quantization;

namespace MetaLoraNative.Engine.Planning;

/// <summary>One training step's shape, as the planner needs it.</summary>
/// <param name="IdentitiesInBatch">runs of samples sharing an identity in one batch (LoraBinding's groups): 1 in Stage 2</param>
/// <param name="IdentitiesHeld">identities in the adapter's bank, each with its M and U (Stage 1 holds many)</param>
/// <param name="Fuse">the model's fused forms (FluxModel's fusions); null: METALORA_FUSE, as FluxModel reads it</param>
/// <param name="LoraGrouped">the fused LoRA path's grouped formation (FusedStage2Cache.Grouped); null: METALORA_LORA_GROUPED</param>
public sealed record TrainingShape(FluxConfig Config, int Batch, int ImageTokens, int TextTokens, IReadOnlyList<LoraTarget> Targets,
                                   LoraMode Mode, int Rank1, int Rank2, bool TrainDown, bool TrainIdentity,
                                   int IdentitiesInBatch = 1, int IdentitiesHeld = 1, Fusions? Fuse = null, bool? LoraGrouped = null)
{
    /// <summary>Stage 2 as StepBenchmark runs it: batch 1, every target, D frozen, one identity's M and U trained.</summary>
    public static TrainingShape Stage2(FluxConfig config, int imageTokens, int textTokens, int rank1, int rank2, Fusions? fusions = null) =>
        new(config, 1, imageTokens, textTokens, FluxNames.LoraTargets(config), LoraMode.Meta, rank1, rank2, false, true, Fuse: fusions);

    /// <summary>The bindings take LoraBinding's fused path (D frozen in a Meta-LoRA, unless METALORA_LORA=stacked).</summary>
    public bool FusedLora => Mode == LoraMode.Meta && !TrainDown && LoraBinding.PathFromEnvironment() != LoraPath.Stacked;

    /// <summary>The fused forms the step runs: <see cref="Fuse"/>, else METALORA_FUSE (unset: none).</summary>
    public Fusions Fusions => Fuse ?? FusionSettings.FromEnvironment();

    /// <summary>The fused LoRA path forms A grouped and defers dM, keeping a G per module (only on the fused path).</summary>
    public bool GroupedLora => FusedLora && (LoraGrouped ?? FusedStage2Cache.GroupedFromEnvironment());
}

/// <summary>
/// The predicted peak of one training step, by part. Persistent: weights, LoRA factors, their gradients, AdamW's
/// moments and the workspaces; per step: the activations kept between the forward and the backward (the batch, the
/// model state: every block's inputs and, without recomputation, its activations) and the working set on top of
/// them at the step's busiest moment (a recomputed block, gradients in flight, LoRA temporaries).
/// With block swap (<see cref="SwapBlocks"/> blocks, in <see cref="BlockOrder.Swapped"/>'s order: double blocks from
/// the last back, then single blocks) the swapped blocks' weights leave the device (<see cref="HostBytes"/>) and
/// their device slots come in (<see cref="SlotBytes"/>: two of a block per kind swapped, one when only one is).
/// MergedDowns: the fused LoRA path's A = M·D stacks (FusedStage2Cache), made in the first step and kept from then on;
/// DeferredGradients: grouped, the cache's G (Σ r2, d_in) fp32 per module and identity of the batch, kept from step to step.
/// Fusions, GroupedLora: the step the estimate walked (<see cref="TrainingShape.Fusions"/>, <see cref="TrainingShape.GroupedLora"/>).
/// </summary>
public sealed record MemoryEstimate(BaseDType BaseDType, bool Recompute, long Weights, long LoraFactors, long Gradients,
                                    long OptimiserState, long Activations, long WorkingSet, long AttentionWorkspace,
                                    long GemmWorkspace, long[] DoubleBlockWeights, long[] SingleBlockWeights, int SwapBlocks = 0,
                                    long MergedDowns = 0, long DeferredGradients = 0, Fusions Fusions = Fusions.None, bool GroupedLora = false)
{
    /// <summary>Swapped double and single blocks.</summary>
    public (int Double, int Single) Swapped
    {
        get
        {
            int total = DoubleBlockWeights.Length + SingleBlockWeights.Length;
            if (SwapBlocks < 0 || SwapBlocks > total)
                throw new ArgumentException($"--swap-blocks: {SwapBlocks} is not a block count of this model (0 to {total})");
            int doubles = Math.Min(SwapBlocks, DoubleBlockWeights.Length);
            return (doubles, SwapBlocks - doubles);
        }
    }

    /// <summary>Weight bytes that wait in host memory: the swapped blocks'.</summary>
    public long HostBytes => DoubleBlockWeights.TakeLast(Swapped.Double).Sum() + SingleBlockWeights.TakeLast(Swapped.Single).Sum();

    /// <summary>Device bytes of the swap slots: per kind swapped, min(2, blocks) copies of its largest block.</summary>
    public long SlotBytes => Slots(DoubleBlockWeights, Swapped.Double) + Slots(SingleBlockWeights, Swapped.Single);

    static long Slots(long[] blocks, int swapped) => swapped == 0 ? 0 : Math.Min(2, swapped) * blocks.TakeLast(swapped).Max();

    /// <summary>Weight bytes on the device: the resident weights and the swap slots.</summary>
    public long DeviceWeights => Weights - HostBytes + SlotBytes;

    public long Peak => DeviceWeights + LoraFactors + Gradients + OptimiserState + MergedDowns + DeferredGradients + Activations + WorkingSet +
                        AttentionWorkspace + GemmWorkspace;

    public string Label => $"{BaseDTypes.Name(BaseDType)} base, recompute {(Recompute ? "on" : "off")}" +
                           (SwapBlocks == 0 ? "" : $", swap {SwapBlocks} blocks ({Swapped.Double} double, {Swapped.Single} single)");
}

/// <summary>The planner's choice for a budget, with every candidate it weighed.</summary>
public sealed record MemoryPlan(long Budget, MemoryEstimate Chosen, bool Fits, IReadOnlyList<MemoryEstimate> Candidates)
{
    /// <summary>The plan as the bench prints it: one row per candidate, then the choice.</summary>
    public IEnumerable<string> Lines()
    {
        bool gib = Budget >= 1L << 30;
        double unit = gib ? 1L << 30 : 1L << 20;
        string G(long b) => $"{b / unit,6:F2}";
        string F(long b) => MemoryCapExceededException.FormatBytes(b);
        yield return $"memory plan, budget {F(Budget)} ({(gib ? "GiB" : "MiB")} below):";
        yield return $"  the step walked: fused forms {FusionSettings.Format(Chosen.Fusions)}{(Chosen.GroupedLora ? ", grouped LoRA formation (a G kept per module)" : "")}";
        yield return "  base  recompute  swap  weights  lora+grads+adam  activations  working  workspace    peak";
        foreach (var e in Candidates)
            yield return $"  {BaseDTypes.Name(e.BaseDType),-4}  {(e.Recompute ? "on" : "off"),-9}  {e.SwapBlocks,4}  {G(e.DeviceWeights)}  " +
                         $"{G(e.LoraFactors + e.Gradients + e.OptimiserState + e.MergedDowns + e.DeferredGradients),15}  {G(e.Activations),11}  {G(e.WorkingSet),7}  " +
                         $"{G(e.AttentionWorkspace + e.GemmWorkspace),9}  {G(e.Peak)}{(e.Peak <= Budget ? "" : "  over")}";
        yield return Fits
            ? $"  chosen: {Chosen.Label}, predicted peak {F(Chosen.Peak)}"
            : $"  nothing fits: the smallest is {Chosen.Label} at {F(Chosen.Peak)}" +
              (Chosen.SwapBlocks == Chosen.DoubleBlockWeights.Length + Chosen.SingleBlockWeights.Length ? ", every block's weights in host memory" : "");
        if (Chosen.SwapBlocks > 0)
            yield return $"  block swap: {Chosen.SwapBlocks} blocks in host memory ({Chosen.Swapped.Double} double, {Chosen.Swapped.Single} single; " +
                         $"{F(Chosen.HostBytes)} pinned host memory), {F(Chosen.SlotBytes)} of device slots";
    }
}

/// <summary>
/// Predicts the peak device memory of a training step before it runs, and picks the base dtype and recomputation
/// for a budget, and block swap when they are not enough. Persistent parts are counted tensor by tensor from the config and the
/// adapter's shapes; the step is replayed allocation by allocation (<see cref="StepWalk"/>, which mirrors
/// FluxModel, DoubleBlock, SingleBlock, QkvAttention, Linear and LoraBinding), every size through the backend's
/// <see cref="MemoryModel"/>. On the CPU the prediction is checked against the backend's measured peak.
/// </summary>
public static class MemoryPlanner
{
    public static MemoryEstimate Estimate(TrainingShape s, MemoryModel m, BaseDType baseDType, bool recompute, int swapBlocks = 0)
    {
        var c = s.Config;
        long largestQuantized = 0;
        var bytesOf = new Dictionary<string, long>();
        foreach (var (name, shape) in c.TensorShapes())
        {
            long numel = Shapes.Numel(shape);
            if (baseDType == BaseDType.Fp8 && BaseDTypes.Quantizes(name))
            {
                bytesOf[name] = m.Raw(numel) + m.Raw(4L * shape[0]);          // codes, fp32 row scales
                largestQuantized = Math.Max(largestQuantized, numel);
            }
            else bytesOf[name] = m.Compute(numel);
        }
        long weights = bytesOf.Values.Sum();
        long Block(string prefix) => bytesOf.Where(kv => kv.Key.StartsWith(prefix, StringComparison.Ordinal)).Sum(kv => kv.Value);
        var doubles = Enumerable.Range(0, c.Depth).Select(i => Block($"double_blocks.{i}.")).ToArray();
        var singles = Enumerable.Range(0, c.DepthSingleBlocks).Select(i => Block($"single_blocks.{i}.")).ToArray();

        // LoRA: a value and a gradient per factor (LoraParameter allocates both), moments for what AdamW updates.
        int r2 = s.Mode == LoraMode.Meta ? s.Rank2 : s.Rank1;
        long down = s.Targets.Sum(t => m.Master((long)s.Rank1 * t.InFeatures));
        long identity = s.Targets.Sum(t => (s.Mode == LoraMode.Meta ? m.Master((long)r2 * s.Rank1) : 0) + m.Master((long)t.Rows * r2));
        long factors = down + s.IdentitiesHeld * identity;
        long moments = 2 * ((s.TrainDown ? down : 0) + (s.TrainIdentity ? s.IdentitiesHeld * identity : 0));
        // the fused path's A stacks, (Σ r2, d_in) fp32 per module, for each identity of the batch
        long merged = s.FusedLora ? s.IdentitiesInBatch * s.Targets.GroupBy(t => t.BflModule)
                                                            .Sum(g => m.Master((long)g.Count() * r2 * g.First().InFeatures)) : 0;

        // grouped, the backward's G outlive their module's backward: one per module and group, as large as its A stack
        long deferred = s.GroupedLora && s.TrainIdentity ? merged : 0;

        var (peak, kept) = new StepWalk(m, s, baseDType).Run(recompute);
        int L = s.ImageTokens + s.TextTokens;
        long attention = m.AttentionRowSums ? m.Stats((long)s.Batch * c.NumHeads * L) : 0;
        // version 4's fp32 dq accumulator (B, H, L, D), held beside the row sums for the length of the backward
        if (m.AttentionDqAccumulator) attention += m.Master((long)s.Batch * c.NumHeads * L * c.HeadDim);
        long gemm = m.GemmWorkspaceBytes + (baseDType == BaseDType.Fp8 && m.DequantizeScratch ? m.Compute(largestQuantized) : 0);
        var e = new MemoryEstimate(baseDType, recompute, weights, factors, factors, moments, kept, peak - kept, attention, gemm, doubles, singles, swapBlocks,
                                   merged, deferred, s.Fusions, s.GroupedLora);
        _ = e.Swapped;                                                        // checks the block count
        return e;
    }

    /// <summary>
    /// The first candidate that fits the budget, in the order that costs least: bf16 without recomputation (exact and
    /// fastest), bf16 with it (one more block forward per block), fp8 without, fp8 with (E4M3 rounding of the base).
    /// A given base dtype or recomputation setting narrows the candidates, a given <paramref name="swapBlocks"/> applies
    /// to all of them. With swap on auto (null) and no candidate fitting as it is, the candidate that fits with the
    /// fewest swapped blocks is chosen (swap costs copies; it is the last resort). When nothing fits, the smallest
    /// candidate is chosen and the plan says so.
    /// </summary>
    public static MemoryPlan Choose(TrainingShape s, MemoryModel m, long budget, BaseDType? baseDType = null, bool? recompute = null, int? swapBlocks = null)
    {
        var candidates = new List<MemoryEstimate>();
        foreach (var d in new[] { BaseDType.Bf16, BaseDType.Fp8 })
            foreach (bool r in new[] { false, true })
                if ((baseDType == null || baseDType == d) && (recompute == null || recompute == r))
                    candidates.Add(Estimate(s, m, d, r, swapBlocks ?? 0));
        var fit = candidates.FirstOrDefault(e => e.Peak <= budget);
        if (fit == null && swapBlocks == null)
        {
            fit = candidates.Select(e => SmallestSwap(e, budget)).OfType<MemoryEstimate>().MinBy(e => e.SwapBlocks);
            var smallest = candidates.MinBy(e => e.Peak)!;
            candidates.Add(fit ?? smallest with { SwapBlocks = smallest.DoubleBlockWeights.Length + smallest.SingleBlockWeights.Length });
        }
        var chosen = fit ?? candidates.MinBy(e => e.Peak)!;
        return new MemoryPlan(budget, chosen, fit != null, candidates);
    }

    /// <summary>
    /// The budget a plan is made for: <paramref name="vram"/> when given, else the device's free memory plus what this
    /// backend already holds (host memory on the CPU).
    /// </summary>
    public static long Budget(IBackend be, long? vram) =>
        vram ?? (be.MemoryInfo is { } mem ? mem.Free + be.LiveBytes : GC.GetGCMemoryInfo().TotalAvailableMemoryBytes);

    /// <summary>
    /// The estimate with the fewest swapped blocks (in <see cref="BlockOrder.Swapped"/>'s order) that fits the
    /// budget, counting the device slots; null when even swapping every block leaves the step over it.
    /// </summary>
    public static MemoryEstimate? SmallestSwap(MemoryEstimate e, long budget)
    {
        int total = e.DoubleBlockWeights.Length + e.SingleBlockWeights.Length;
        for (int n = 0; n <= total; n++)
            if (e with { SwapBlocks = n } is { } swapped && swapped.Peak <= budget) return swapped;
        return null;
    }
}
