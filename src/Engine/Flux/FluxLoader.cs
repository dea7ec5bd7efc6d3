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
                throw new ArgumentException($"'{source}': expected random:PRESET:SEED, e.g. random:tiny:1");
            return FluxWeights.Random(FluxConfig.Preset(parts[1]), backend, seed);
        }

        using var files = SafetensorsCollection.Open(source);
        bool diffusers = FluxNames.IsDiffusersLayout(files.Names);
        var shapes = diffusers ? DiffusersShapesAsBfl(files) : files.Names.ToDictionary(n => n, n => files.Entry(n).Shape);
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
                    foreach (var suffix in rule.IsScale ? [""] : new[] { ".weight", ".bias" })
                        tensors[rule.Bfl + suffix] = backend.Upload(ReadDiffusers(files, rule, suffix, out var shape), shape);
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
    static float[] ReadDiffusers(SafetensorsCollection files, NameRule rule, string suffix, out int[] shape)
    {
        string Part(string d) => rule.IsScale ? d : d + suffix;
        var parts = rule.Diffusers.Select(d =>
        {
            string n = Part(d);
            if (!files.Names.Contains(n)) throw new InvalidDataException($"diffusers checkpoint: tensor '{n}' (for BFL '{rule.Bfl}{suffix}') is missing");
            return (Name: n, Shape: files.Entry(n).Shape, Data: files.ReadFloats(n));
        }).ToArray();
        switch (rule.Join)
        {
            case NameJoin.Direct:
                shape = parts[0].Shape;
                return parts[0].Data;
            case NameJoin.RowConcat:
                shape = (int[])parts[0].Shape.Clone();
                shape[0] = parts.Sum(p => p.Shape[0]);
                return parts.SelectMany(p => p.Data).ToArray();
            default: // SwapHalves: (scale, shift) → (shift, scale) along the rows
                shape = parts[0].Shape;
                var data = parts[0].Data;
                int half = data.Length / 2;
                return [.. data.AsSpan(half).ToArray(), .. data.AsSpan(0, half).ToArray()];
        }
    }

    /// <summary>Shapes under BFL names, for config detection of a diffusers checkpoint.</summary>
    static Dictionary<string, int[]> DiffusersShapesAsBfl(SafetensorsCollection files)
    {
        var shapes = new Dictionary<string, int[]>();
        int[]? S(string n) => files.Names.Contains(n) ? files.Entry(n).Shape : null;
        void Map(string bfl, string d) { if (S(d) is { } s) shapes[bfl] = s; }
        Map("img_in.weight", "x_embedder.weight");
        Map("txt_in.weight", "context_embedder.weight");
        Map("vector_in.in_layer.weight", "time_text_embed.text_embedder.linear_1.weight");
        Map("final_layer.linear.weight", "proj_out.weight");
        Map("guidance_in.in_layer.weight", "time_text_embed.guidance_embedder.linear_1.weight");
        for (int i = 0; files.Names.Contains($"transformer_blocks.{i}.attn.to_q.weight"); i++)
        {
            shapes[$"double_blocks.{i}.img_attn.qkv.weight"] = S($"transformer_blocks.{i}.attn.to_q.weight")!;
            Map($"double_blocks.{i}.img_attn.norm.query_norm.scale", $"transformer_blocks.{i}.attn.norm_q.weight");
            Map($"double_blocks.{i}.img_mlp.0.weight", $"transformer_blocks.{i}.ff.net.0.proj.weight");
        }
        for (int i = 0; files.Names.Contains($"single_transformer_blocks.{i}.proj_out.weight"); i++)
        {
            var q = S($"single_transformer_blocks.{i}.attn.to_q.weight")!;
            var m = S($"single_transformer_blocks.{i}.proj_mlp.weight")!;
            shapes[$"single_blocks.{i}.linear1.weight"] = [3 * q[0] + m[0], q[1]];
            Map($"single_blocks.{i}.norm.query_norm.scale", $"single_transformer_blocks.{i}.attn.norm_q.weight");
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
