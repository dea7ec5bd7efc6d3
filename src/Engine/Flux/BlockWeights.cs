using MetaLoraNative.Engine.Quantization;

namespace MetaLoraNative.Engine.Flux;

public enum BlockKind { Double, Single }

/// <summary>One transformer block: double_blocks.{Index} or single_blocks.{Index}.</summary>
public readonly record struct BlockId(BlockKind Kind, int Index)
{
    public static BlockId Double(int index) => new(BlockKind.Double, index);
    public static BlockId Single(int index) => new(BlockKind.Single, index);

    /// <summary>The prefix of the block's checkpoint names, "double_blocks.3.".</summary>
    public string Prefix => $"{(Kind == BlockKind.Double ? "double_blocks" : "single_blocks")}.{Index}.";

    /// <summary>The block a checkpoint name belongs to, or null for the embedders and the final layer.</summary>
    public static BlockId? Of(string name)
    {
        foreach (var (kind, stem) in new[] { (BlockKind.Double, "double_blocks."), (BlockKind.Single, "single_blocks.") })
        {
            if (!name.StartsWith(stem, StringComparison.Ordinal)) continue;
            int dot = name.IndexOf('.', stem.Length);
            if (dot > stem.Length && int.TryParse(name.AsSpan(stem.Length, dot - stem.Length), out int index)) return new BlockId(kind, index);
        }
        return null;
    }

    public override string ToString() => Prefix[..^1];
}

/// <summary>
/// The blocks in the order of a pass and in the order block swap takes them.
/// Swap order: the double blocks from the last one back to the first, then the single blocks from the last one back
/// (<c>--swap-blocks 3</c> on flux-dev swaps double_blocks.18, .17 and .16). Double blocks go first because they are
/// the largest (36·C² weights against a single block's 15·C²), so the fewest blocks free a given number of bytes; from
/// the end because the end of the forward is the start of the backward, where the copies of both passes meet.
/// </summary>
public static class BlockOrder
{
    public static IEnumerable<BlockId> Forward(FluxConfig c) =>
        Enumerable.Range(0, c.Depth).Select(BlockId.Double).Concat(Enumerable.Range(0, c.DepthSingleBlocks).Select(BlockId.Single));

    /// <summary>The blocks the first <paramref name="n"/> of the swap order names.</summary>
    public static IReadOnlyList<BlockId> Swapped(FluxConfig c, int n)
    {
        int total = c.Depth + c.DepthSingleBlocks;
        if (n < 0 || n > total)
            throw new ArgumentException($"--swap-blocks: {n} is not a block count of {c.Name} (0 to {total}: {c.Depth} double, {c.DepthSingleBlocks} single)");
        return Enumerable.Range(0, c.Depth).Reverse().Select(BlockId.Double)
            .Concat(Enumerable.Range(0, c.DepthSingleBlocks).Reverse().Select(BlockId.Single)).Take(n).ToArray();
    }

    /// <summary>"auto" → null (the memory planner decides), else a count of blocks.</summary>
    public static int? ParseSwap(string text, string flag = "--swap-blocks") =>
        text == "auto" ? null
        : int.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int n) ? n
        : throw new InputException(flag, $"'{text}' is not a block count; give a number of blocks (0: none) or auto");
}

/// <summary>
/// Copy time of block swap since the last report: how much of it ran under compute (hidden) and how much compute
/// waited for it (exposed). On CUDA both come from events: the copies' own span on the copy stream, and the compute
/// stream's span across its wait for each block. On the CPU every copy is exposed (it runs on the calling thread).
/// </summary>
public sealed record SwapOverlap(int Copies, long Bytes, double CopyMs, double ExposedMs)
{
    public double HiddenMs => Math.Max(0, CopyMs - ExposedMs);

    public override string ToString() =>
        $"block swap: {Copies} block copies, {Bytes / (double)(1L << 30):F2} GiB, {CopyMs:F1} ms of copies: {HiddenMs:F1} ms hidden under compute, " +
        $"{ExposedMs:F1} ms exposed";
}

/// <summary>
/// Where the frozen weights of the transformer blocks live while the model runs: the seam FluxModel's block loops go
/// through, so the model reads the same with or without block swap. Before a block computes, the loop says so with
/// <see cref="Use"/> (disposed once the block's ops are queued): resident blocks need nothing; swapped blocks
/// (<see cref="SwappedBlocks"/>) wait there for their own copy into a device slot and start the next block's copy.
/// </summary>
public abstract class BlockWeights : IDisposable
{
    /// <summary>Every block resident on the device: nothing to copy.</summary>
    public static BlockWeights Resident { get; } = new ResidentBlocks();

    /// <summary>Blocks whose weights wait in host memory (none when resident).</summary>
    public abstract IReadOnlyList<BlockId> Swapped { get; }

    /// <summary>
    /// The weights a block's layers bind to: <paramref name="all"/> itself for a resident block, a view onto the
    /// block's device slot for a swapped one.
    /// </summary>
    public abstract FluxWeights For(BlockId block, FluxWeights all);

    /// <summary>
    /// Marks the start of <paramref name="block"/>'s compute in a forward (blocks in model order) or a backward
    /// (reverse order); the result's Dispose marks its end.
    /// </summary>
    public abstract IDisposable Use(BlockId block, bool backward);

    /// <summary>Whether a checkpoint name is held in host memory here, and its shape.</summary>
    public abstract bool Holds(string name, out int[] shape);

    /// <summary>A held weight's values (dequantised when fp8), read from the host copy.</summary>
    public abstract float[] Values(string name);

    /// <summary>How many held weights are fp8.</summary>
    public abstract int QuantizedCount { get; }

    /// <summary>Bytes held in host memory.</summary>
    public abstract long HostBytes { get; }

    /// <summary>The copies since the last call, or null without swap. Waits for the queued copies.</summary>
    public abstract SwapOverlap? TakeOverlap();

    public virtual void Dispose() => GC.SuppressFinalize(this);

    sealed class ResidentBlocks : BlockWeights
    {
        public override IReadOnlyList<BlockId> Swapped => [];
        public override FluxWeights For(BlockId block, FluxWeights all) => all;
        public override IDisposable Use(BlockId block, bool backward) => NoRange.Instance;
        public override bool Holds(string name, out int[] shape)
        {
            shape = [];
            return false;
        }
        public override float[] Values(string name) => throw new KeyNotFoundException($"'{name}' is not held in host memory");
        public override int QuantizedCount => 0;
        public override long HostBytes => 0;
        public override SwapOverlap? TakeOverlap() => null;
        public override void Dispose() { }
    }
}

/// <summary>
/// What block swap needs from a backend: host copies of its weights and copies back into device slots on a second
/// stream, ordered by events. CUDA: pinned host memory, a copy stream and CUDA events (src/Kernels/SwapTransfer.cs);
/// the CPU: a second host copy and synchronous copies into the slot, with the same calls in the same order and the
/// events as no-ops (<see cref="CpuBlockTransfer"/>), so the whole path runs without a GPU.
/// </summary>
public interface IBlockTransfer : IDisposable
{
    /// <summary>A host copy of a device tensor (the caller keeps and frees the tensor).</summary>
    IHostWeight Stage(Tensor t);
    /// <summary>A host copy of a quantised weight: codes and row scales.</summary>
    IHostWeight Stage(QuantizedWeight w);

    /// <summary>
    /// Opens a block's copy into device slot <paramref name="slot"/>: the copy stream first waits until the compute
    /// that last read the slot has finished. Returns the copy's handle for <see cref="ComputeWaits"/>.
    /// </summary>
    int BeginCopy(int slot);
    /// <summary>Queues host → slot tensor of the same shape and kind on the copy stream.</summary>
    void CopyIn(IHostWeight host, Tensor slot);
    void CopyIn(IHostWeight host, QuantizedWeight slot);
    /// <summary>Closes the copy opened by <see cref="BeginCopy"/> (records its event).</summary>
    void EndCopy(int copy);

    /// <summary>The compute stream waits for that copy only (its event), not for the copy stream as a whole.</summary>
    void ComputeWaits(int copy);
    /// <summary>The compute queued so far is the slot's last reader: the next copy into it waits for that.</summary>
    void Computed(int slot);

    /// <summary>Copy figures since the last call (waits for the queued copies).</summary>
    SwapOverlap TakeOverlap();
}

/// <summary>One weight's copy in host memory.</summary>
public interface IHostWeight : IDisposable
{
    int[] Shape { get; }
    long Bytes { get; }
    bool Quantized { get; }
    /// <summary>The values it stands for (dequantised when fp8).</summary>
    float[] Values();
}

/// <summary>A backend that brings its own <see cref="IBlockTransfer"/> (CUDA); the CPU backends use <see cref="CpuBlockTransfer"/>.</summary>
public interface IBlockTransferSource
{
    IBlockTransfer OpenBlockTransfer();
}
