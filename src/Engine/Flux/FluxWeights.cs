using MetaLoraNative.Engine.Quantization;

namespace MetaLoraNative.Engine.Flux;

/// <summary>
/// The frozen transformer weights on one backend, keyed by BFL checkpoint names (the walk over names is the
/// loader: see <see cref="FluxLoader"/>). Every name of the config must be present with its exact shape, as a
/// tensor or, on an fp8 base, as a quantised weight (the block linears: <see cref="BaseDTypes.Quantizes"/>), or, for a
/// block swap keeps in host memory, in <see cref="Blocks"/> (<see cref="SwappedBlocks"/>).
/// </summary>
public sealed class FluxWeights : IDisposable
{
    readonly Dictionary<string, Tensor> tensors;
    readonly Dictionary<string, QuantizedWeight> quantized;

    public FluxWeights(FluxConfig config, IBackend backend, Dictionary<string, Tensor> tensors, string source,
                       Dictionary<string, QuantizedWeight>? quantized = null, SwappedBlocks? swap = null)
    {
        Config = config;
        Backend = backend;
        Source = source;
        quantized ??= [];
        Blocks = swap ?? BlockWeights.Resident;
        foreach (var (name, shape) in config.TensorShapes())
        {
            int[] actual = tensors.TryGetValue(name, out var t) ? t.Shape
                : quantized.TryGetValue(name, out var q) ? q.Shape
                : Blocks.Holds(name, out var held) ? held
                : throw new InvalidDataException($"{source}: tensor '{name}' is missing for a {config.Name} model");
            if (!actual.AsSpan().SequenceEqual(shape))
                throw new InvalidDataException($"{source}: tensor '{name}' has shape {Shapes.Format(actual)}, expected {Shapes.Format(shape)}");
        }
        this.tensors = tensors;
        this.quantized = quantized;
        swap?.Seal();
    }

    /// <summary>A view of the same model whose names in the given maps resolve there (a swapped block's device slot).</summary>
    FluxWeights(FluxWeights all, Dictionary<string, Tensor> tensors, Dictionary<string, QuantizedWeight> quantized)
    {
        Config = all.Config;
        Backend = all.Backend;
        Source = all.Source;
        Blocks = all.Blocks;
        this.tensors = tensors;
        this.quantized = quantized;
        view = true;
    }

    readonly bool view;

    /// <summary>For <see cref="SwappedBlocks"/>: the names of one block bound to its slot (owned by the store, not the view).</summary>
    internal FluxWeights View(Dictionary<string, Tensor> slotTensors, Dictionary<string, QuantizedWeight> slotQuantized) => new(this, slotTensors, slotQuantized);

    /// <summary>Where the block weights live: <see cref="BlockWeights.Resident"/>, or block swap's host copies and slots.</summary>
    public BlockWeights Blocks { get; }

    public FluxConfig Config { get; }
    public IBackend Backend { get; }
    /// <summary>Where the weights came from (a path, or random:preset:seed).</summary>
    public string Source { get; }
    /// <summary>Fp8 when the block linears are quantised.</summary>
    public BaseDType BaseDType => QuantizedCount > 0 ? BaseDType.Fp8 : BaseDType.Bf16;
    /// <summary>How many weights are held in fp8 (on the device or, swapped, in host memory).</summary>
    public int QuantizedCount => quantized.Count + Blocks.QuantizedCount;

    /// <summary>A weight held as a tensor; a quantised one fails saying so (merging into W0 needs the bf16 base).</summary>
    public Tensor this[string name] => tensors.TryGetValue(name, out var t) ? t
        : Blocks.Holds(name, out _)
            ? throw new InvalidOperationException($"{Source}: '{name}' is held in host memory by block swap; this needs every block resident (--swap-blocks 0)")
        : quantized.ContainsKey(name)
            ? throw new InputException("--base-dtype", $"{Source}: '{name}' is held in fp8 (E4M3 with a scale per row); this needs the bf16 base (--base-dtype bf16)")
            : throw new KeyNotFoundException($"{Source}: no tensor '{name}'");

    public Tensor? TryGet(string name) => tensors.GetValueOrDefault(name);

    /// <summary>The quantised weight under this name, or null when it is a tensor (or absent).</summary>
    public QuantizedWeight? Quantized(string name) => quantized.GetValueOrDefault(name);

    /// <summary>A weight's values on the host, dequantised when it is held in fp8 (the values the products use).</summary>
    public float[] Values(string name)
    {
        if (Blocks.Holds(name, out _)) return Blocks.Values(name);
        if (quantized.TryGetValue(name, out var q))
        {
            using var t = Backend.Dequantize(q);
            return Backend.Download(t);
        }
        return Backend.Download(this[name]);
    }

    /// <summary>
    /// Deterministic random weights (<see cref="RandomWeights"/>), identical to tools/reference's; on an fp8 base the
    /// block linears are quantised from them (<see cref="Fp8Rows.Quantize"/>), one tensor at a time. The weights of
    /// the first <paramref name="swapBlocks"/> blocks of the swap order go to host memory (<see cref="SwappedBlocks"/>).
    /// </summary>
    public static FluxWeights Random(FluxConfig config, IBackend backend, ulong seed, BaseDType baseDType = BaseDType.Bf16, int swapBlocks = 0)
    {
        var dict = new Dictionary<string, Tensor>();
        var fp8 = new Dictionary<string, QuantizedWeight>();
        string source = $"random:{config.Name}:{seed}";
        var swap = SwappedBlocks.Open(config, backend, swapBlocks);
        try
        {
            foreach (var (name, shape) in config.TensorShapes())
            {
                var values = RandomWeights.Tensor(name, shape, seed);
                if (baseDType == BaseDType.Fp8 && BaseDTypes.Quantizes(name))
                    SwappedBlocks.Route(swap, name, Fp8Rows.Quantize(values, shape[0], shape[1], $"{source}: '{name}'").Upload(backend), fp8);
                else SwappedBlocks.Route(swap, name, backend.Upload(values, shape), dict);
            }
            return new FluxWeights(config, backend, dict, source, fp8, swap);
        }
        catch
        {
            foreach (var t in dict.Values) t.Dispose();
            foreach (var q in fp8.Values) q.Dispose();
            swap?.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        if (view) return;     // the slots are the store's
        Blocks.Dispose();
        foreach (var t in tensors.Values) t.Dispose();
        foreach (var q in quantized.Values) q.Dispose();
        tensors.Clear();
        quantized.Clear();
    }
}
