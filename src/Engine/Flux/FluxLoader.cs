using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Planning;
using MetaLoraNative.Engine.Quantization;

namespace MetaLoraNative.Engine.Flux;

/// <summary>What one load held on the host, for the log line: the loader's own buffers and the process's figures.</summary>
/// <param name="StagingPeakBytes">the most the loader held for one tensor in flight (its fp32 values, codes and scales)</param>
/// <param name="PeakWorkingSetBytes">the process's peak resident set (on Linux it counts the mapped checkpoint pages too: clean page cache the kernel reclaims)</param>
/// <param name="GcHeapBytes">the managed heap after the load</param>
/// <param name="GcCommittedBytes">memory the GC had committed after the load</param>
public sealed record LoadReport(string Source, int Tensors, int Quantized, TimeSpan Elapsed, long StagingPeakBytes,
                                long PeakWorkingSetBytes, long GcHeapBytes, long GcCommittedBytes)
{
    public override string ToString() =>
        $"loaded {Source}: {Tensors} tensors{(Quantized > 0 ? $", {Quantized} block linears in fp8" : "")} in {Elapsed.TotalSeconds:F1} s; " +
        $"host: largest tensor in flight {MemoryCapExceededException.FormatBytes(StagingPeakBytes)}, peak working set " +
        $"{MemoryCapExceededException.FormatBytes(PeakWorkingSetBytes)}, GC heap {MemoryCapExceededException.FormatBytes(GcHeapBytes)} " +
        $"(committed {MemoryCapExceededException.FormatBytes(GcCommittedBytes)})";
}

/// <summary>
/// Loads transformer weights onto a backend from
///   - a BFL checkpoint (flux1-dev.safetensors; ComfyUI's copies with a "model.diffusion_model." prefix too),
///   - a diffusers transformer (diffusion_pytorch_model-*.safetensors + index json, or its folder),
///   - "random:PRESET:SEED" (deterministic weights shared with tools/reference).
/// The config is detected from names and shapes; each tensor is converted and uploaded on its own, so the host
/// never holds the whole model: at most one tensor in fp32 (plus its codes on an fp8 base) is in flight.
///
/// fp8 checkpoints: an F8_E4M3 tensor is W = s · e4m3(codes) with s from "&lt;module&gt;.scale_weight" when the file
/// has one (musubi's and ComfyUI's scaled fp8: a scalar, or one per output channel as (d_out) or (d_out, 1)) and
/// s = 1 otherwise (ComfyUI's flux1-dev-fp8). On an fp8 base (<see cref="BaseDType.Fp8"/>) such a block linear is
/// uploaded as stored, codes and scales, with no bf16 detour; any other block linear is quantised on the host
/// (<see cref="Fp8Rows.Quantize"/>). On a bf16 base, and for every tensor an fp8 base keeps in the compute type, the
/// values are decoded and scaled.
/// </summary>
public static class FluxLoader
{
    /// <summary>ComfyUI's all-in-one checkpoints keep the transformer under this prefix.</summary>
    public const string ComfyPrefix = "model.diffusion_model.";

    public static FluxWeights Load(string source, IBackend backend, FluxConfig? expected = null, BaseDType baseDType = BaseDType.Bf16, int swapBlocks = 0) =>
        Load(source, backend, expected, baseDType, out _, swapBlocks);

    /// <param name="swapBlocks">blocks whose weights go to host memory as they load (<see cref="SwappedBlocks"/>,
    /// in <see cref="BlockOrder.Swapped"/>'s order); the device then holds at most one of their tensors at a time</param>
    public static FluxWeights Load(string source, IBackend backend, FluxConfig? expected, BaseDType baseDType, out LoadReport report, int swapBlocks = 0)
    {
        var clock = Stopwatch.StartNew();
        if (source.StartsWith("random:", StringComparison.Ordinal))
        {
            var parts = source.Split(':');
            if (parts.Length != 3 || !ulong.TryParse(parts[2], out var seed))
                throw new InputException(source, $"expected random:PRESET:SEED, e.g. random:tiny:1");
            var random = FluxWeights.Random(FluxConfig.Preset(parts[1]), backend, seed, baseDType, swapBlocks);
            long staging = random.Config.TensorShapes().Max(t => Shapes.Numel(t.Shape) * (baseDType == BaseDType.Fp8 && BaseDTypes.Quantizes(t.Name) ? 5 : 4));
            report = Report(source, random.Config, random.QuantizedCount, clock, staging);
            return random;
        }

        using var files = SafetensorsCollection.Open(source);
        var checkpoint = new Checkpoint(source, files);
        bool diffusers = FluxNames.IsDiffusersLayout(checkpoint.Names);
        var config = Detect(checkpoint, files, diffusers);
        if (expected != null && (expected.HiddenSize != config.HiddenSize || expected.Depth != config.Depth
                                 || expected.DepthSingleBlocks != config.DepthSingleBlocks || expected.GuidanceEmbed != config.GuidanceEmbed))
            throw new InvalidDataException($"{source}: holds a {config.Name} model (hidden {config.HiddenSize}, {config.Depth}+{config.DepthSingleBlocks} blocks, " +
                                           $"guidance {config.GuidanceEmbed}) but {expected.Name} was asked for");

        var tensors = new Dictionary<string, Tensor>();
        var quantized = new Dictionary<string, QuantizedWeight>();
        var swap = SwappedBlocks.Open(config, backend, swapBlocks);
        try
        {
            if (!diffusers)
            {
                foreach (var (name, shape) in config.TensorShapes())
                {
                    if (!checkpoint.Contains(name)) throw new InvalidDataException($"{source}: tensor '{name}' is missing");
                    Check(source, name, checkpoint.Entry(name).Shape, shape);
                    checkpoint.NextTensor();
                    if (baseDType == BaseDType.Fp8 && BaseDTypes.Quantizes(name))
                        SwappedBlocks.Route(swap, name, checkpoint.Quantized(name, shape[0], shape[1]).Upload(backend), quantized);
                    else SwappedBlocks.Route(swap, name, backend.Upload(checkpoint.Values(name), shape), tensors);
                }
            }
            else
            {
                foreach (var rule in FluxNames.Rules(config))
                    foreach (var suffix in rule.Suffixes)
                    {
                        string name = rule.Bfl + suffix;
                        checkpoint.NextTensor();
                        if (baseDType == BaseDType.Fp8 && BaseDTypes.Quantizes(name))
                            SwappedBlocks.Route(swap, name, DiffusersQuantized(checkpoint, rule, suffix).Upload(backend), quantized);
                        else SwappedBlocks.Route(swap, name, backend.Upload(ReadDiffusers(checkpoint, rule, suffix, out var shape), shape), tensors);
                    }
            }
            checkpoint.NextTensor();
            var weights = new FluxWeights(config, backend, tensors, source, quantized, swap);
            report = Report(source, config, weights.QuantizedCount, clock, checkpoint.StagingPeak);
            return weights;
        }
        catch
        {
            foreach (var t in tensors.Values) t.Dispose();
            foreach (var q in quantized.Values) q.Dispose();
            swap?.Dispose();
            throw;
        }
    }

    /// <summary>The config of a checkpoint (or "random:PRESET:SEED") from its header alone, without loading it: for planning.</summary>
    public static FluxConfig Inspect(string source)
    {
        if (source.StartsWith("random:", StringComparison.Ordinal) && source.Split(':') is [_, var preset, _]) return FluxConfig.Preset(preset);
        using var files = SafetensorsCollection.Open(source);
        var checkpoint = new Checkpoint(source, files);
        return Detect(checkpoint, files, FluxNames.IsDiffusersLayout(checkpoint.Names));
    }

    static FluxConfig Detect(Checkpoint checkpoint, SafetensorsCollection files, bool diffusers)
    {
        var shapes = diffusers ? DiffusersShapesAsBfl(checkpoint) : checkpoint.Names.ToDictionary(n => n, n => checkpoint.Entry(n).Shape);
        var metadata = diffusers ? WithDiffusersConfig(files, shapes) : files.Metadata;
        return FluxConfig.Detect(shapes, metadata, checkpoint.Source);
    }

    /// <summary>
    /// A diffusers transformer folder's config.json (beside the shards) says what the shapes cannot: "axes_dims_rope",
    /// FluxTransformer2DModel's RoPE axes (default (16, 56, 56)), and "theta", the RoPE base, which FluxTransformer2DModel
    /// does not register (its FluxPosEmbed is built with 10,000) but configs of variants that change it carry. Both are
    /// parsed strictly, each fault naming the file and the key: axes positive even integers summing to the head dim (the
    /// query-norm width), theta a finite number > 1. They reach <see cref="FluxConfig.Detect"/> as the flux.axes_dim /
    /// flux.theta metadata; a file whose own metadata says otherwise is refused. No config.json: the file's metadata alone.
    /// </summary>
    static IReadOnlyDictionary<string, string> WithDiffusersConfig(SafetensorsCollection files, IReadOnlyDictionary<string, int[]> shapes)
    {
        string path = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(files.Files[0]))!, "config.json");
        if (!File.Exists(path)) return files.Metadata;
        JsonElement root;
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(path));
            root = doc.RootElement.Clone();
        }
        catch (JsonException e) { throw new InputFileException(path, $"is not valid JSON ({e.Message})"); }
        if (root.ValueKind != JsonValueKind.Object) throw new InputFileException(path, $"holds a JSON {root.ValueKind}, expected the transformer's config object");

        var found = new Dictionary<string, string>();
        if (root.TryGetProperty("axes_dims_rope", out var axesJson))
        {
            var axes = axesJson.ValueKind == JsonValueKind.Array
                ? axesJson.EnumerateArray().Select(a => a.ValueKind == JsonValueKind.Number && a.TryGetInt32(out int v) && v > 0 && v % 2 == 0 ? v : -1).ToArray()
                : [];
            if (axes.Length == 0 || axes.Contains(-1))
                throw new InputFileException(path, $"'axes_dims_rope' is {axesJson.GetRawText()}: expected a list of positive even integers like [16, 56, 56]");
            int? headDim = (shapes.GetValueOrDefault("double_blocks.0.img_attn.norm.query_norm.scale")
                            ?? shapes.GetValueOrDefault("single_blocks.0.norm.query_norm.scale")) is [int d] ? d : null;
            if (headDim is int h && axes.Sum(a => (long)a) != h)
                throw new InputFileException(path, $"'axes_dims_rope' {axesJson.GetRawText()} sums to {axes.Sum(a => (long)a)}, but the checkpoint's head dim is {h}");
            found["flux.axes_dim"] = string.Join(",", axes);
        }
        if (root.TryGetProperty("theta", out var thetaJson))
        {
            if (thetaJson.ValueKind != JsonValueKind.Number || !thetaJson.TryGetDouble(out double theta) || !double.IsFinite(theta) || theta <= 1
                || !float.IsFinite((float)theta))
                throw new InputFileException(path, $"'theta' is {thetaJson.GetRawText()}: expected a finite number > 1 (FLUX: 10000)");
            found["flux.theta"] = ((float)theta).ToString(CultureInfo.InvariantCulture);
        }
        var merged = new Dictionary<string, string>(files.Metadata);
        foreach (var (key, value) in found)
        {
            if (merged.TryGetValue(key, out var own) && own != value)
                throw new InputFileException(path, $"says {key} = {value}, but {files.Files[0]} has '{key}' = '{own}' in its metadata");
            merged[key] = value;
        }
        return merged;
    }

    static LoadReport Report(string source, FluxConfig config, int quantized, Stopwatch clock, long staging)
    {
        using var process = Process.GetCurrentProcess();
        var gc = GC.GetGCMemoryInfo();
        return new LoadReport(source, config.TensorShapes().Count(), quantized, clock.Elapsed, staging, process.PeakWorkingSet64,
                              gc.HeapSizeBytes, gc.TotalCommittedBytes);
    }

    static int[] Check(string source, string name, int[] actual, int[] expected) =>
        actual.AsSpan().SequenceEqual(expected) ? expected
            : throw new InvalidDataException($"{source}: tensor '{name}' has shape {Shapes.Format(actual)}, expected {Shapes.Format(expected)}");

    /// <summary>
    /// The opened files under the names the transformer uses (ComfyUI's prefix stripped when every transformer
    /// tensor carries it), with the fp8 rules: stored scales, codes as they are.
    /// </summary>
    sealed class Checkpoint
    {
        readonly SafetensorsCollection files;
        readonly string prefix;

        public Checkpoint(string source, SafetensorsCollection files)
        {
            Source = source;
            this.files = files;
            prefix = files.Contains(ComfyPrefix + "img_in.weight") && !files.Contains("img_in.weight") ? ComfyPrefix : "";
            Names = prefix.Length == 0 ? files.Names.ToHashSet()
                : files.Names.Where(n => n.StartsWith(prefix, StringComparison.Ordinal)).Select(n => n[prefix.Length..]).ToHashSet();
        }

        public string Source { get; }
        public HashSet<string> Names { get; }

        /// <summary>The most host bytes the loader held for one tensor: its fp32 values, codes and scales, joined parts.</summary>
        public long StagingPeak { get; private set; }
        long inFlight;

        /// <summary>Closes the tensor in flight (its buffers are garbage once uploaded) and starts counting the next.</summary>
        public void NextTensor()
        {
            StagingPeak = Math.Max(StagingPeak, inFlight);
            inFlight = 0;
        }

        /// <summary>Counts a host buffer the tensor in flight holds.</summary>
        public T Held<T>(T buffer, long bytes)
        {
            inFlight += bytes;
            return buffer;
        }

        public bool Contains(string name) => Names.Contains(name);
        public SafetensorsEntry Entry(string name) => files.Entry(prefix + name);

        /// <summary>"double_blocks.0.img_attn.qkv.weight" → "double_blocks.0.img_attn.qkv.scale_weight" (musubi's and ComfyUI's name).</summary>
        static string ScaleName(string name) =>
            name.EndsWith(".weight", StringComparison.Ordinal) ? name[..^".weight".Length] + ".scale_weight" : name + ".scale_weight";

        /// <summary>The stored scale of a weight: one value, or one per output row; [1] when the file has none.</summary>
        float[] Scale(string name, int rows)
        {
            string scaleName = ScaleName(name);
            if (!Contains(scaleName)) return [1f];
            var shape = Entry(scaleName).Shape;
            long n = Shapes.Numel(shape);
            bool perTensor = n == 1, perRow = n == rows && shape.Length >= 1 && shape[0] == rows && shape.Skip(1).All(d => d == 1);
            if (!perTensor && !perRow)
                throw new InvalidDataException($"{Source}: '{scaleName}' has shape {Shapes.Format(shape)}; only one scale per tensor or one per " +
                                               $"output channel ({rows} or ({rows}, 1)) is supported (block-wise fp8 scales are not)");
            return files.ReadFloats(prefix + scaleName);
        }

        /// <summary>A tensor's values in fp32: decoded, and multiplied by its stored scale when it has one.</summary>
        public float[] Values(string name)
        {
            var values = Held(files.ReadFloats(prefix + name), 4 * Shapes.Numel(Entry(name).Shape));
            var entry = Entry(name);
            if (!Contains(ScaleName(name))) return values;
            int rows = entry.Shape.Length > 0 ? entry.Shape[0] : 1;
            var scale = Scale(name, rows);
            int cols = (int)(values.Length / Math.Max(rows, 1));
            for (int i = 0; i < values.Length; i++) values[i] *= scale.Length == 1 ? scale[0] : scale[i / cols];
            return values;
        }

        /// <summary>A (rows, cols) weight in fp8: as stored when the file holds E4M3 codes, else quantised from its values.</summary>
        public Fp8Rows Quantized(string name, int rows, int cols)
        {
            string what = $"{Source}: '{prefix + name}'";
            long bytes = (long)rows * cols + 4L * rows;
            if (Entry(name).DType != SafetensorsDType.F8_E4M3) return Held(Fp8Rows.Quantize(Values(name), rows, cols, what), bytes);
            return Held(Fp8Rows.Stored(files.FileOf(prefix + name).RawBytes(prefix + name), Scale(name, rows), rows, cols, what), bytes);
        }
    }

    /// <summary>The diffusers parts of one BFL tensor, each checked present.</summary>
    static string[] Parts(Checkpoint files, NameRule rule, string suffix) => rule.Diffusers.Select(d =>
        files.Contains(d + suffix) ? d + suffix : throw Missing(files.Source, d + suffix, rule, suffix)).ToArray();

    /// <summary>One BFL tensor assembled from its diffusers parts, per the name table.</summary>
    static float[] ReadDiffusers(Checkpoint files, NameRule rule, string suffix, out int[] shape)
    {
        var parts = Parts(files, rule, suffix).Select(n => (Shape: files.Entry(n).Shape, Data: files.Values(n))).ToArray();
        shape = JoinedShape(rule, parts.Select(p => p.Shape));
        switch (rule.Join)
        {
            case NameJoin.Direct:
                return parts[0].Data;
            case NameJoin.RowConcat:
                return files.Held(parts.SelectMany(p => p.Data).ToArray(), 4 * Shapes.Numel(shape));
            default: // SwapHalves: (scale, shift) → (shift, scale) along the rows
                var data = parts[0].Data;
                int half = data.Length / 2;
                return files.Held<float[]>([.. data.AsSpan(half).ToArray(), .. data.AsSpan(0, half).ToArray()], 4L * data.Length);
        }
    }

    /// <summary>
    /// One BFL block linear in fp8 from its diffusers parts: each part as stored or quantised, then stacked (per-row
    /// scales make that the quantisation of the stacked weight). Block linears are Direct or RowConcat rules.
    /// </summary>
    static Fp8Rows DiffusersQuantized(Checkpoint files, NameRule rule, string suffix)
    {
        if (rule.Join == NameJoin.SwapHalves)
            throw new InvalidOperationException($"{rule.Bfl}{suffix}: a swapped-halves rule is not a block linear");
        var parts = Parts(files, rule, suffix).Select(n =>
        {
            var s = files.Entry(n).Shape;
            if (s.Length != 2) throw new InvalidDataException($"{files.Source}: '{n}' has shape {Shapes.Format(s)}, expected a (d_out, d_in) weight");
            return files.Quantized(n, s[0], s[1]);
        }).ToArray();
        var joined = Fp8Rows.ConcatRows(parts, $"{files.Source}: '{rule.Bfl}{suffix}'");
        return parts.Length == 1 ? joined : files.Held(joined, joined.Codes.LongLength + 4L * joined.Rows);
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
    static Dictionary<string, int[]> DiffusersShapesAsBfl(Checkpoint files)
    {
        int CountBlocks(Func<int, NameRule[]> block)
        {
            int n = 0;
            while (block(n).Any(rule => rule.Diffusers.Any(d => rule.Suffixes.Any(suffix => files.Contains(d + suffix))))) n++;
            return n;
        }

        var shapes = new Dictionary<string, int[]>();
        var layout = FluxNames.Layout(guidanceEmbed: true, CountBlocks(FluxNames.DoubleBlockRules), CountBlocks(FluxNames.SingleBlockRules));
        foreach (var rule in layout)
            foreach (var suffix in rule.Suffixes)
            {
                var missing = rule.Diffusers.Where(d => !files.Contains(d + suffix)).ToList();
                if (missing.Count == rule.Diffusers.Length) continue;     // absent: detection says whether it is needed
                if (missing.Count > 0) throw Missing(files.Source, missing[0] + suffix, rule, suffix);
                shapes[rule.Bfl + suffix] = JoinedShape(rule, rule.Diffusers.Select(d => files.Entry(d + suffix).Shape));
            }
        return shapes;
    }

    /// <summary>
    /// Writes weights in BFL layout (fp32/bf16/fp16) with the config's metadata: tests, demos, caches. Weights held in
    /// fp8 are written as the values the products use (dequantised).
    /// </summary>
    public static void Save(FluxWeights w, string path, SafetensorsDType dtype = SafetensorsDType.F32)
    {
        var meta = w.Config.ToMetadata();
        SafetensorsWriter.Write(path, w.Config.TensorShapes().Select(t => new SafetensorsTensor(t.Name, t.Shape, w.Values(t.Name), dtype)), meta);
    }
}
