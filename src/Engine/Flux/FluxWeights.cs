using MetaLoraNative.Engine.Quantization;

namespace MetaLoraNative.Engine.Flux;

/// <summary>
/// The frozen transformer weights on one backend, keyed by BFL checkpoint names (the walk over names is the
/// loader: see <see cref="FluxLoader"/>). Every name of the config must be present with its exact shape, as a
/// tensor or, on an fp8 base, as a quantised weight (the block linears: <see cref="BaseDTypes.Quantizes"/>).
/// </summary>
public sealed class FluxWeights : IDisposable
{
    readonly Dictionary<string, Tensor> tensors;
    readonly Dictionary<string, QuantizedWeight> quantized;

    public FluxWeights(FluxConfig config, IBackend backend, Dictionary<string, Tensor> tensors, string source,
                       Dictionary<string, QuantizedWeight>? quantized = null)
    {
        Config = config;
        Backend = backend;
        Source = source;
        quantized ??= [];
        foreach (var (name, shape) in config.TensorShapes())
        {
            int[] actual = tensors.TryGetValue(name, out var t) ? t.Shape
                : quantized.TryGetValue(name, out var q) ? q.Shape
                : throw new InvalidDataException($"{source}: tensor '{name}' is missing for a {config.Name} model");
            if (!actual.AsSpan().SequenceEqual(shape))
                throw new InvalidDataException($"{source}: tensor '{name}' has shape {Shapes.Format(actual)}, expected {Shapes.Format(shape)}");
        }
        this.tensors = tensors;
        this.quantized = quantized;
    }

    public FluxConfig Config { get; }
    public IBackend Backend { get; }
    /// <summary>Where the weights came from (a path, or random:preset:seed).</summary>
    public string Source { get; }
    /// <summary>Fp8 when the block linears are quantised.</summary>
    public BaseDType BaseDType => quantized.Count > 0 ? BaseDType.Fp8 : BaseDType.Bf16;
    /// <summary>How many weights are held in fp8.</summary>
    public int QuantizedCount => quantized.Count;

    /// <summary>A weight held as a tensor; a quantised one fails saying so (merging into W0 needs the bf16 base).</summary>
    public Tensor this[string name] => tensors.TryGetValue(name, out var t) ? t
        : quantized.ContainsKey(name)
            ? throw new InputException("--base-dtype", $"{Source}: '{name}' is held in fp8 (E4M3 with a scale per row); this needs the bf16 base (--base-dtype bf16)")
            : throw new KeyNotFoundException($"{Source}: no tensor '{name}'");

    public Tensor? TryGet(string name) => tensors.GetValueOrDefault(name);

    /// <summary>The quantised weight under this name, or null when it is a tensor (or absent).</summary>
    public QuantizedWeight? Quantized(string name) => quantized.GetValueOrDefault(name);

    /// <summary>A weight's values on the host, dequantised when it is held in fp8 (the values the products use).</summary>
    public float[] Values(string name)
    {
        if (quantized.TryGetValue(name, out var q))
        {
            using var t = Backend.Dequantize(q);
            return Backend.Download(t);
        }
        return Backend.Download(this[name]);
    }

    /// <summary>
    /// Deterministic random weights (<see cref="RandomWeights"/>), identical to tools/reference's; on an fp8 base the
    /// block linears are quantised from them (<see cref="Fp8Rows.Quantize"/>), one tensor at a time.
    /// </summary>
    public static FluxWeights Random(FluxConfig config, IBackend backend, ulong seed, BaseDType baseDType = BaseDType.Bf16)
    {
        var dict = new Dictionary<string, Tensor>();
        var fp8 = new Dictionary<string, QuantizedWeight>();
        string source = $"random:{config.Name}:{seed}";
        try
        {
            foreach (var (name, shape) in config.TensorShapes())
            {
                var values = RandomWeights.Tensor(name, shape, seed);
                if (baseDType == BaseDType.Fp8 && BaseDTypes.Quantizes(name))
                    fp8[name] = Fp8Rows.Quantize(values, shape[0], shape[1], $"{source}: '{name}'").Upload(backend);
                else dict[name] = backend.Upload(values, shape);
            }
        }
        catch
        {
            foreach (var t in dict.Values) t.Dispose();
            foreach (var q in fp8.Values) q.Dispose();
            throw;
        }
        return new FluxWeights(config, backend, dict, source, fp8);
    }

    public void Dispose()
    {
        foreach (var t in tensors.Values) t.Dispose();
        foreach (var q in quantized.Values) q.Dispose();
        tensors.Clear();
        quantized.Clear();
    }
}
