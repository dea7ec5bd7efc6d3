namespace MetaLoraNative.Engine.Flux;

/// <summary>
/// The frozen transformer weights on one backend, keyed by BFL checkpoint names (the walk over names is the
/// loader: see <see cref="FluxLoader"/>). Every name of the config must be present with its exact shape.
/// </summary>
public sealed class FluxWeights : IDisposable
{
    readonly Dictionary<string, Tensor> tensors;

    public FluxWeights(FluxConfig config, IBackend backend, Dictionary<string, Tensor> tensors, string source)
    {
        Config = config;
        Backend = backend;
        Source = source;
        foreach (var (name, shape) in config.TensorShapes())
        {
            if (!tensors.TryGetValue(name, out var t))
                throw new InvalidDataException($"{source}: tensor '{name}' is missing for a {config.Name} model");
            if (!t.Shape.AsSpan().SequenceEqual(shape))
                throw new InvalidDataException($"{source}: tensor '{name}' has shape {Shapes.Format(t.Shape)}, expected {Shapes.Format(shape)}");
        }
        this.tensors = tensors;
    }

    public FluxConfig Config { get; }
    public IBackend Backend { get; }
    /// <summary>Where the weights came from (a path, or random:preset:seed).</summary>
    public string Source { get; }

    public Tensor this[string name] => tensors.TryGetValue(name, out var t) ? t
        : throw new KeyNotFoundException($"{Source}: no tensor '{name}'");

    public Tensor? TryGet(string name) => tensors.GetValueOrDefault(name);

    /// <summary>Deterministic random weights (<see cref="RandomWeights"/>), identical to tools/reference's.</summary>
    public static FluxWeights Random(FluxConfig config, IBackend backend, ulong seed)
    {
        var dict = new Dictionary<string, Tensor>();
        foreach (var (name, shape) in config.TensorShapes())
            dict[name] = backend.Upload(RandomWeights.Tensor(name, shape, seed), shape);
        return new FluxWeights(config, backend, dict, $"random:{config.Name}:{seed}");
    }

    public void Dispose()
    {
        foreach (var t in tensors.Values) t.Dispose();
        tensors.Clear();
    }
}
