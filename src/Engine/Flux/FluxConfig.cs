namespace MetaLoraNative.Engine.Flux;

/// <summary>
/// The shape of a FLUX transformer. Presets match BFL's published configs; the tiny ones keep the same structure
/// (every block kind, RoPE axes summing to the head dimension) at sizes the CPU engine runs in milliseconds.
/// </summary>
public sealed record FluxConfig(
    string Name,
    int InChannels,        // packed latent channels: 16 VAE channels × 2×2 patch = 64
    int OutChannels,
    int VecInDim,          // CLIP-L pooled width (768)
    int ContextInDim,      // T5-XXL width (4096)
    int HiddenSize,        // 3072
    int NumHeads,          // 24 → head dim 128
    int MlpHiddenDim,      // hidden × mlp ratio 4 = 12288
    int Depth,             // double-stream blocks (19)
    int DepthSingleBlocks, // single-stream blocks (38)
    int[] AxesDim,         // RoPE axes (index, row, col), summing to the head dim: FluxAxesDim
    float Theta,           // RoPE base: FluxTheta
    bool GuidanceEmbed)    // flux-dev distils guidance into an embedding; schnell does not
{
    public int HeadDim => HiddenSize / NumHeads;

    public const int TimestepEmbedDim = 256;
    public const float NormEps = 1e-6f;
    public const int PixelsPerToken = 16; // 8× VAE downsampling × 2×2 patch

    /// <summary>
    /// FLUX's RoPE axes (the index, row and column channels of its 128-wide heads) and base, as BFL's FluxParams
    /// for flux-dev give them (flux/util.py: axes_dim=[16, 56, 56], theta=10_000); schnell uses the same.
    /// </summary>
    public static IReadOnlyList<int> FluxAxesDim { get; } = [16, 56, 56];
    public const float FluxTheta = 10_000f;

    public static FluxConfig FluxDev { get; } =
        new("flux-dev", 64, 64, 768, 4096, 3072, 24, 12288, 19, 38, [.. FluxAxesDim], FluxTheta, true);

    public static FluxConfig FluxSchnell { get; } = FluxDev with { Name = "flux-schnell", GuidanceEmbed = false };

    /// <summary>Two blocks of each kind, hidden 64, head dim 16 (axes 4+6+6): used by tests and the demo.</summary>
    public static FluxConfig Tiny { get; } =
        new("tiny", 64, 64, 32, 48, 64, 4, 256, 2, 2, [4, 6, 6], FluxTheta, true);

    /// <summary>One block of each kind and narrower still: for finite-difference checks of the whole model.</summary>
    public static FluxConfig Micro { get; } =
        new("micro", 8, 8, 6, 10, 16, 2, 32, 1, 1, [2, 2, 4], FluxTheta, true);

    /// <summary>Tiny, but with the real text widths (T5 4096, CLIP 768): runs the photo → encoders → Stage 2 pipeline.</summary>
    public static FluxConfig TinyT5 { get; } = Tiny with { Name = "tiny-t5", ContextInDim = 4096, VecInDim = 768 };

    public static IReadOnlyList<FluxConfig> Presets { get; } = [FluxDev, FluxSchnell, Tiny, TinyT5, Micro];

    public static FluxConfig Preset(string name) =>
        Presets.FirstOrDefault(p => p.Name == name)
        ?? throw new InputException("preset", $"unknown model preset '{name}'; known: {string.Join(", ", Presets.Select(p => p.Name))}");

    /// <summary>Checks internal consistency; throws with the broken rule.</summary>
    public FluxConfig Validate()
    {
        if (HiddenSize % NumHeads != 0) throw new ArgumentException($"{Name}: hidden {HiddenSize} is not divisible by {NumHeads} heads");
        if (AxesDim.Sum() != HeadDim) throw new ArgumentException($"{Name}: RoPE axes {string.Join("+", AxesDim)} must sum to the head dim {HeadDim}");
        if (AxesDim.Any(a => a % 2 != 0)) throw new ArgumentException($"{Name}: RoPE axes must be even, got {string.Join(",", AxesDim)}");
        if (Depth < 0 || DepthSingleBlocks < 0) throw new ArgumentException($"{Name}: negative depth");
        return this;
    }

    /// <summary>Metadata stored beside weights so a checkpoint carries what its shapes cannot tell.</summary>
    public Dictionary<string, string> ToMetadata() => new()
    {
        ["flux.axes_dim"] = string.Join(",", AxesDim),
        ["flux.theta"] = Theta.ToString(System.Globalization.CultureInfo.InvariantCulture),
        ["flux.preset"] = Name,
    };

    /// <summary>
    /// Detects the config from BFL-layout tensor names and shapes (stable-diffusion.cpp's approach): depths from the
    /// block indices, widths from the embedders, head dim from the QK-norm scale, guidance from guidance_in.
    /// RoPE axes and theta come from metadata when present, else FLUX's defaults when they fit the head dim.
    /// </summary>
    public static FluxConfig Detect(IReadOnlyDictionary<string, int[]> shapes, IReadOnlyDictionary<string, string>? metadata, string source)
    {
        // A probe tensor must exist with its rank (2 for a linear's weight, 1 for a norm scale) and no empty dimension.
        int[] Need(string key) => !shapes.TryGetValue(key, out var s)
            ? throw new InvalidDataException($"{source}: not a FLUX transformer checkpoint: tensor '{key}' is missing")
            : s.Length != (key.EndsWith(".scale", StringComparison.Ordinal) ? 1 : 2) || s.Any(d => d < 1)
                ? throw new InvalidDataException($"{source}: tensor '{key}' has shape {Shapes.Format(s)}, expected " +
                                                 $"{(key.EndsWith(".scale", StringComparison.Ordinal) ? "one" : "two")} non-empty dimensions")
                : s;

        int CountBlocks(string prefix)
        {
            int n = 0;
            while (shapes.ContainsKey($"{prefix}.{n}.linear1.weight") || shapes.ContainsKey($"{prefix}.{n}.img_attn.qkv.weight")) n++;
            return n;
        }

        int[] imgIn = Need("img_in.weight");
        int hidden = imgIn[0], inCh = imgIn[1];
        int ctx = Need("txt_in.weight")[1];
        int vec = Need("vector_in.in_layer.weight")[1];
        int outCh = Need("final_layer.linear.weight")[0];
        int depth = CountBlocks("double_blocks");
        int single = CountBlocks("single_blocks");
        // a block tensor past the count means a block lost its probe tensor, not that the model ends there
        if (shapes.Keys.FirstOrDefault(k => BlockIndex(k, "double_blocks") >= depth || BlockIndex(k, "single_blocks") >= single) is { } stray)
            throw new InvalidDataException($"{source}: tensor '{stray}' belongs to a block past the {depth} double and {single} single blocks found " +
                                           "(each block needs its img_attn.qkv.weight or linear1.weight)");
        int headDim = depth > 0 ? Need("double_blocks.0.img_attn.norm.query_norm.scale")[0]
                                : Need("single_blocks.0.norm.query_norm.scale")[0];
        int mlp = depth > 0 ? Need("double_blocks.0.img_mlp.0.weight")[0] : Need("single_blocks.0.linear1.weight")[0] - 3 * hidden;
        bool guidance = shapes.ContainsKey("guidance_in.in_layer.weight");
        if (headDim <= 0 || hidden % headDim != 0)
            throw new InvalidDataException($"{source}: head dim {headDim} does not divide hidden size {hidden}");

        int[] axes = headDim == FluxAxesDim.Sum() ? [.. FluxAxesDim] : [];
        float theta = FluxTheta;
        // Metadata is parsed strictly: positive even axes summing to the head dim, a finite theta > 1.
        var inv = System.Globalization.CultureInfo.InvariantCulture;
        if (metadata != null && metadata.TryGetValue("flux.axes_dim", out var axesText))
        {
            var parts = axesText.Split(',');
            axes = new int[parts.Length];
            for (int i = 0; i < parts.Length; i++)
                if (!int.TryParse(parts[i], System.Globalization.NumberStyles.None, inv, out axes[i]) || axes[i] <= 0 || axes[i] % 2 != 0)
                    throw new InvalidDataException($"{source}: metadata 'flux.axes_dim' is '{axesText}': expected positive even integers like 16,56,56");
            if (axes.Sum(a => (long)a) != headDim)
                throw new InvalidDataException($"{source}: metadata 'flux.axes_dim' is '{axesText}', which does not sum to the head dim {headDim}");
        }
        if (metadata != null && metadata.TryGetValue("flux.theta", out var thetaText)
            && !(float.TryParse(thetaText, System.Globalization.NumberStyles.Float, inv, out theta) && float.IsFinite(theta) && theta > 1))
            throw new InvalidDataException($"{source}: metadata 'flux.theta' is '{thetaText}': expected a finite number > 1 (FLUX: 10000)");
        if (axes.Length == 0)
            throw new InvalidDataException($"{source}: head dim {headDim} is not FLUX's {FluxAxesDim.Sum()} and the file has no 'flux.axes_dim' metadata");

        var known = Presets.FirstOrDefault(p => p.HiddenSize == hidden && p.Depth == depth && p.DepthSingleBlocks == single
                                                && p.GuidanceEmbed == guidance && p.InChannels == inCh && p.ContextInDim == ctx && p.VecInDim == vec);
        var config = new FluxConfig(known?.Name ?? "custom", inCh, outCh, vec, ctx, hidden, hidden / headDim, mlp,
                                    depth, single, axes, theta, guidance);
        try { return config.Validate(); }
        catch (ArgumentException e) { throw new InvalidDataException($"{source}: {e.Message}"); }
    }

    /// <summary>The block index of a tensor named prefix.INDEX.…, or -1 for any other name.</summary>
    static int BlockIndex(string name, string prefix) =>
        name.StartsWith(prefix + ".", StringComparison.Ordinal) && name.Split('.') is [_, var index, ..]
        && int.TryParse(index, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int i) ? i : -1;

    /// <summary>Every BFL tensor name of this config with its shape, in checkpoint order.</summary>
    public IEnumerable<(string Name, int[] Shape)> TensorShapes()
    {
        int C = HiddenSize, D = HeadDim;
        IEnumerable<(string, int[])> Lin(string name, int dIn, int dOut, bool bias = true)
        {
            yield return ($"{name}.weight", [dOut, dIn]);
            if (bias) yield return ($"{name}.bias", [dOut]);
        }
        IEnumerable<(string, int[])> Mlp(string name, int dIn) =>
            Lin($"{name}.in_layer", dIn, C).Concat(Lin($"{name}.out_layer", C, C));

        var all = Lin("img_in", InChannels, C)
            .Concat(Mlp("time_in", TimestepEmbedDim))
            .Concat(Mlp("vector_in", VecInDim));
        if (GuidanceEmbed) all = all.Concat(Mlp("guidance_in", TimestepEmbedDim));
        all = all.Concat(Lin("txt_in", ContextInDim, C));
        for (int i = 0; i < Depth; i++)
        {
            foreach (var s in new[] { "img", "txt" })
            {
                string p = $"double_blocks.{i}.{s}";
                all = all.Concat(Lin($"{p}_mod.lin", C, 6 * C))
                         .Concat(Lin($"{p}_attn.qkv", C, 3 * C))
                         .Append(($"{p}_attn.norm.query_norm.scale", new[] { D }))
                         .Append(($"{p}_attn.norm.key_norm.scale", new[] { D }))
                         .Concat(Lin($"{p}_attn.proj", C, C))
                         .Concat(Lin($"{p}_mlp.0", C, MlpHiddenDim))
                         .Concat(Lin($"{p}_mlp.2", MlpHiddenDim, C));
            }
        }
        for (int i = 0; i < DepthSingleBlocks; i++)
        {
            string p = $"single_blocks.{i}";
            all = all.Concat(Lin($"{p}.linear1", C, 3 * C + MlpHiddenDim))
                     .Concat(Lin($"{p}.linear2", C + MlpHiddenDim, C))
                     .Append(($"{p}.norm.query_norm.scale", new[] { D }))
                     .Append(($"{p}.norm.key_norm.scale", new[] { D }))
                     .Concat(Lin($"{p}.modulation.lin", C, 3 * C));
        }
        all = all.Concat(Lin("final_layer.linear", C, OutChannels))
                 .Concat(Lin("final_layer.adaLN_modulation.1", C, 2 * C));
        return all;
    }

    public long ParameterCount() => TensorShapes().Sum(t => Shapes.Numel(t.Shape));
}
