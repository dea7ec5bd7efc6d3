using MetaLoraNative.Engine.IO;

namespace MetaLoraNative.Engine.Flux;

/// <summary>
/// Loads transformer weights onto a backend from
///   - a BFL checkpoint (flux1-dev.safetensors),
///   - a diffusers transformer (diffusion_pytorch_model-*.safetensors + index json, or its folder),
///   - "random:PRESET:SEED" (deterministic weights shared with tools/reference).
/// The config is detected from names and shapes; each tensor is converted and uploaded on its own, so the host
/// never holds the whole model.
/// </summary>
public static class FluxLoader
{
    public static FluxWeights Load(string source, IBackend backend, FluxConfig? expected = null)
    {
        if (source.StartsWith("random:", StringComparison.Ordinal))
        {
            var parts = source.Split(':');
            if (parts.Length != 3 || !ulong.TryParse(parts[2], out var seed))
                throw new InputException(source, $"expected random:PRESET:SEED, e.g. random:tiny:1");
            return FluxWeights.Random(FluxConfig.Preset(parts[1]), backend, seed);
        }

        using var files = SafetensorsCollection.Open(source);
        bool diffusers = FluxNames.IsDiffusersLayout(files.Names);
        var shapes = diffusers ? DiffusersShapesAsBfl(source, files) : files.Names.ToDictionary(n => n, n => files.Entry(n).Shape);
        var config = FluxConfig.Detect(shapes, files.Metadata, source);
        if (expected != null && (expected.HiddenSize != config.HiddenSize || expected.Depth != config.Depth
                                 || expected.DepthSingleBlocks != config.DepthSingleBlocks || expected.GuidanceEmbed != config.GuidanceEmbed))
            throw new InvalidDataException($"{source}: holds a {config.Name} model (hidden {config.HiddenSize}, {config.Depth}+{config.DepthSingleBlocks} blocks, " +
                                           $"guidance {config.GuidanceEmbed}) but {expected.Name} was asked for");

        var tensors = new Dictionary<string, Tensor>();
        try
        {
            if (!diffusers)
            {
                foreach (var (name, shape) in config.TensorShapes())
                {
                    if (!files.Names.Contains(name)) throw new InvalidDataException($"{source}: tensor '{name}' is missing");
                    tensors[name] = backend.Upload(files.ReadFloats(name), Check(source, name, files.Entry(name).Shape, shape));
                }
            }
            else
            {
                foreach (var rule in FluxNames.Rules(config))
                    foreach (var suffix in rule.Suffixes)
                        tensors[rule.Bfl + suffix] = backend.Upload(ReadDiffusers(source, files, rule, suffix, out var shape), shape);
            }
        }
        catch
        {
            foreach (var t in tensors.Values) t.Dispose();
            throw;
        }
        return new FluxWeights(config, backend, tensors, source);
    }

    static int[] Check(string source, string name, int[] actual, int[] expected) =>
        actual.AsSpan().SequenceEqual(expected) ? expected
            : throw new InvalidDataException($"{source}: tensor '{name}' has shape {Shapes.Format(actual)}, expected {Shapes.Format(expected)}");

    /// <summary>One BFL tensor assembled from its diffusers parts, per the name table.</summary>
    static float[] ReadDiffusers(string source, SafetensorsCollection files, NameRule rule, string suffix, out int[] shape)
    {
        var parts = rule.Diffusers.Select(d =>
        {
            string n = d + suffix;
            if (!files.Names.Contains(n)) throw Missing(source, n, rule, suffix);
            return (Shape: files.Entry(n).Shape, Data: files.ReadFloats(n));
        }).ToArray();
        shape = JoinedShape(rule, parts.Select(p => p.Shape));
        switch (rule.Join)
        {
            case NameJoin.Direct:
                return parts[0].Data;
            case NameJoin.RowConcat:
                return parts.SelectMany(p => p.Data).ToArray();
            default: // SwapHalves: (scale, shift) → (shift, scale) along the rows
                var data = parts[0].Data;
                int half = data.Length / 2;
                return [.. data.AsSpan(half).ToArray(), .. data.AsSpan(0, half).ToArray()];
        }
    }

    static InvalidDataException Missing(string source, string diffusersName, NameRule rule, string suffix) =>
        new($"{source}: diffusers tensor '{diffusersName}' (part of BFL '{rule.Bfl}{suffix}') is missing");

    /// <summary>The BFL tensor's shape from its diffusers parts' shapes: row concatenation adds the rows.</summary>
    static int[] JoinedShape(NameRule rule, IEnumerable<int[]> partShapes)
    {
        var shapes = partShapes.ToArray();
        if (rule.Join != NameJoin.RowConcat) return shapes[0];
        var shape = (int[])shapes[0].Clone();
        shape[0] = shapes.Sum(s => s[0]);
        return shape;
    }

    /// <summary>
    /// Shapes under BFL names, for config detection of a diffusers checkpoint: every rule of the name table whose
    /// diffusers tensors are present, with the shape the load will assemble (a fused linear missing some of its
    /// parts fails here, naming the part). Blocks are counted while any tensor of the next block is present.
    /// </summary>
    static Dictionary<string, int[]> DiffusersShapesAsBfl(string source, SafetensorsCollection files)
    {
        int CountBlocks(Func<int, NameRule[]> block)
        {
            int n = 0;
            while (block(n).Any(rule => rule.Diffusers.Any(d => rule.Suffixes.Any(suffix => files.Names.Contains(d + suffix))))) n++;
            return n;
        }

        var shapes = new Dictionary<string, int[]>();
        var layout = FluxNames.Layout(guidanceEmbed: true, CountBlocks(FluxNames.DoubleBlockRules), CountBlocks(FluxNames.SingleBlockRules));
        foreach (var rule in layout)
            foreach (var suffix in rule.Suffixes)
            {
                var missing = rule.Diffusers.Where(d => !files.Names.Contains(d + suffix)).ToList();
                if (missing.Count == rule.Diffusers.Length) continue;     // absent: detection says whether it is needed
                if (missing.Count > 0) throw Missing(source, missing[0] + suffix, rule, suffix);
                shapes[rule.Bfl + suffix] = JoinedShape(rule, rule.Diffusers.Select(d => files.Entry(d + suffix).Shape));
            }
        return shapes;
    }

    /// <summary>Writes weights in BFL layout (fp32/bf16/fp16) with the config's metadata: tests, demos, caches.</summary>
    public static void Save(FluxWeights w, string path, SafetensorsDType dtype = SafetensorsDType.F32)
    {
        var meta = w.Config.ToMetadata();
        SafetensorsWriter.Write(path, w.Config.TensorShapes().Select(t => new SafetensorsTensor(t.Name, t.Shape, w.Backend.Download(w[t.Name]), dtype)), meta);
    }
}
