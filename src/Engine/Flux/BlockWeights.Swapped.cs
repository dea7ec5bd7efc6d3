using MetaLoraNative.Engine.Quantization;

namespace MetaLoraNative.Engine.Flux;

/// <summary>
/// Block swap: the frozen weights of some blocks (<see cref="BlockOrder.Swapped"/>) live in host memory and are
/// copied into a reused device slot just before they compute, in the forward and again in the backward.
///
/// Slots: two per kind of block swapped (one computing, one arriving), each a set of device tensors shaped like one
/// block's weights; one when only one block of the kind is swapped. Swapped blocks of a kind alternate between the
/// two (the k-th swapped double block, in model order, uses slot k mod 2); they are contiguous in model order, so
/// consecutive blocks never share a slot. A swapped block's layers are bound once to its slot's tensors
/// (<see cref="For"/>), so the model reads the same code either way.
///
/// Schedule, one block ahead: when block b starts (<see cref="Use"/>), the compute stream waits for b's own copy
/// (its event, nothing else) and the copy of the block after b in this pass's order is queued on the copy stream,
/// after an event that marks the end of the last compute reading that slot. The forward visits double 0..D-1, then
/// single 0..S-1; the backward the reverse. A block still in its slot from the end of the forward (the last swapped
/// single block, which the backward needs first) is not copied again.
///
/// Built in two steps: the loader hands over each swapped tensor as it loads (<see cref="Hold(string, Tensor)"/>:
/// staged to host, its device copy freed at once, so loading never holds more than one swapped tensor on the
/// device), then <see cref="Seal"/> allocates the slots.
/// </summary>
public sealed class SwappedBlocks : BlockWeights
{
    readonly FluxConfig config;
    readonly IBackend backend;
    readonly IBlockTransfer transfer;
    readonly BlockId[] swapped, order;
    readonly Dictionary<BlockId, int> position;                            // index in the forward order
    readonly Dictionary<BlockId, int> slotOf = [];                         // slot key: 2·kind + (rank mod 2)
    readonly Dictionary<string, IHostWeight> held = [];                    // checkpoint name → host copy
    readonly Dictionary<int, Dictionary<string, IDisposable>> slots = [];  // slot key → suffix → device tensor or quantised weight
    readonly Dictionary<int, (BlockId Block, int Copy)> holder = [];       // slot key → what it holds (or is receiving)
    readonly Dictionary<BlockId, FluxWeights> views = [];
    bool sealedUp;

    SwappedBlocks(FluxConfig config, IBackend backend, int blocks)
    {
        this.config = config;
        this.backend = backend;
        swapped = [.. BlockOrder.Swapped(config, blocks)];
        order = [.. BlockOrder.Forward(config)];
        position = order.Select((b, i) => (b, i)).ToDictionary(x => x.b, x => x.i);
        foreach (var kind in new[] { BlockKind.Double, BlockKind.Single })
        {
            var ofKind = swapped.Where(b => b.Kind == kind).OrderBy(b => b.Index).ToArray();
            for (int k = 0; k < ofKind.Length; k++) slotOf[ofKind[k]] = 2 * (int)kind + k % 2;
        }
        transfer = backend is IBlockTransferSource source ? source.OpenBlockTransfer()
            : CpuBlockTransfer.For(backend) ?? throw new NotSupportedException($"--swap-blocks: {backend.Name} has no block swap");
    }

    /// <summary>A store for <paramref name="blocks"/> swapped blocks, or null for none (every block resident).</summary>
    public static SwappedBlocks? Open(FluxConfig config, IBackend backend, int blocks) =>
        blocks == 0 ? null : new SwappedBlocks(config, backend, blocks);

    public override IReadOnlyList<BlockId> Swapped => swapped;

    /// <summary>Whether the loader hands this checkpoint tensor over instead of keeping it on the device.</summary>
    public bool Takes(string name) => BlockId.Of(name) is { } b && slotOf.ContainsKey(b);

    /// <summary>Stages a loaded tensor to host memory and frees its device copy.</summary>
    public void Hold(string name, Tensor t)
    {
        using (t) held[name] = transfer.Stage(t);
    }

    public void Hold(string name, QuantizedWeight w)
    {
        using (w) held[name] = transfer.Stage(w);
    }

    /// <summary>Where a loaded weight goes: to host memory when its block is swapped, else into <paramref name="resident"/>.</summary>
    public static void Route(SwappedBlocks? swap, string name, Tensor t, Dictionary<string, Tensor> resident)
    {
        if (swap?.Takes(name) == true) swap.Hold(name, t);
        else resident[name] = t;
    }

    public static void Route(SwappedBlocks? swap, string name, QuantizedWeight w, Dictionary<string, QuantizedWeight> resident)
    {
        if (swap?.Takes(name) == true) swap.Hold(name, w);
        else resident[name] = w;
    }

    /// <summary>Allocates the device slots once every swapped tensor is held; FluxWeights calls it when it takes the store.</summary>
    internal void Seal()
    {
        if (sealedUp) return;
        foreach (var b in swapped)
            if (!held.Keys.Any(n => n.StartsWith(b.Prefix, StringComparison.Ordinal)))
                throw new InvalidOperationException($"block swap: no weights of {b} were handed over");
        foreach (var (block, key) in slotOf.OrderBy(kv => kv.Value))
        {
            if (slots.ContainsKey(key)) continue;
            var slot = new Dictionary<string, IDisposable>();
            slots[key] = slot;
            foreach (var (name, host) in Of(block))
            {
                var shape = host.Shape;
                slot[name[block.Prefix.Length..]] = host.Quantized
                    ? backend.UploadQuantized(new byte[Shapes.Numel(shape)], new float[shape[0]], shape[0], shape[1])
                    : backend.Zeros(shape);
            }
        }
        sealedUp = true;
    }

    IEnumerable<(string Name, IHostWeight Host)> Of(BlockId b) =>
        held.Where(kv => kv.Key.StartsWith(b.Prefix, StringComparison.Ordinal)).OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => (kv.Key, kv.Value));

    public override FluxWeights For(BlockId block, FluxWeights all)
    {
        if (!slotOf.TryGetValue(block, out int key)) return all;
        if (views.TryGetValue(block, out var view)) return view;
        var tensors = new Dictionary<string, Tensor>();
        var quantized = new Dictionary<string, QuantizedWeight>();
        foreach (var (suffix, w) in slots[key])
            if (w is QuantizedWeight q) quantized[block.Prefix + suffix] = q;
            else tensors[block.Prefix + suffix] = (Tensor)w;
        return views[block] = all.View(tensors, quantized);
    }

    public override IDisposable Use(BlockId block, bool backward)
    {
        if (!slotOf.TryGetValue(block, out int key))
        {
            Prefetch(Next(block, backward));
            return NoRange.Instance;
        }
        int copy = holder.TryGetValue(key, out var h) && h.Block == block ? h.Copy : Issue(block);
        transfer.ComputeWaits(copy);
        Prefetch(Next(block, backward));
        return new Leave(transfer, key);
    }

    sealed class Leave(IBlockTransfer transfer, int slot) : IDisposable
    {
        public void Dispose() => transfer.Computed(slot);
    }

    BlockId? Next(BlockId block, bool backward)
    {
        int i = position[block] + (backward ? -1 : 1);
        return i >= 0 && i < order.Length ? order[i] : null;
    }

    void Prefetch(BlockId? next)
    {
        if (next is { } b && slotOf.TryGetValue(b, out int key) && !(holder.TryGetValue(key, out var h) && h.Block == b)) Issue(b);
    }

    /// <summary>Queues the copy of a block's weights into its slot; returns the copy's handle.</summary>
    int Issue(BlockId block)
    {
        if (!sealedUp) throw new InvalidOperationException("block swap: the store was used before its slots were allocated");
        int key = slotOf[block];
        var slot = slots[key];
        int copy = transfer.BeginCopy(key);
        foreach (var (name, host) in Of(block))
        {
            var target = slot[name[block.Prefix.Length..]];
            if (target is QuantizedWeight q) transfer.CopyIn(host, q);
            else transfer.CopyIn(host, (Tensor)target);
        }
        transfer.EndCopy(copy);
        holder[key] = (block, copy);
        return copy;
    }

    public override bool Holds(string name, out int[] shape)
    {
        bool found = held.TryGetValue(name, out var h);
        shape = found ? h!.Shape : [];
        return found;
    }

    public override float[] Values(string name) =>
        held.TryGetValue(name, out var h) ? h.Values() : throw new KeyNotFoundException($"'{name}' is not held in host memory");

    public override int QuantizedCount => held.Values.Count(h => h.Quantized);

    public override long HostBytes => held.Values.Sum(h => h.Bytes);

    public override SwapOverlap? TakeOverlap() => transfer.TakeOverlap();

    public override string ToString() =>
        $"block swap: {swapped.Length} blocks in host memory ({swapped.Count(b => b.Kind == BlockKind.Double)} double, " +
        $"{swapped.Count(b => b.Kind == BlockKind.Single)} single; {MemoryBytes(HostBytes)}), {slots.Count} device slots";

    static string MemoryBytes(long b) => Planning.MemoryCapExceededException.FormatBytes(b);

    public override void Dispose()
    {
        foreach (var slot in slots.Values)
            foreach (var w in slot.Values) w.Dispose();
        slots.Clear();
        foreach (var h in held.Values) h.Dispose();
        held.Clear();
        transfer.Dispose();
        base.Dispose();
    }
}
