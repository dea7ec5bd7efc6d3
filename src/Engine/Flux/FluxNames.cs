namespace MetaLoraNative.Engine.Flux;

/// <summary>How the diffusers tensors of one rule combine into the BFL tensor.</summary>
public enum NameJoin
{
    /// <summary>One diffusers tensor is the BFL tensor.</summary>
    Direct,
    /// <summary>Several diffusers linears stacked along the output rows form one fused BFL linear (qkv, linear1).</summary>
    RowConcat,
    /// <summary>diffusers' norm_out emits (scale, shift); BFL's final adaLN emits (shift, scale): the halves swap.</summary>
    SwapHalves,
}

/// <summary>
/// One row of the name table. <see cref="Bfl"/> and <see cref="Diffusers"/> are module names for linears (the rule
/// covers ".weight" and ".bias") or full tensor names for norm scales (<see cref="IsScale"/>). RowSizes: the output
/// rows of each diffusers part of a <see cref="NameJoin.RowConcat"/> rule, null where the widths are not known
/// (<see cref="FluxNames.Layout"/>).
/// </summary>
public sealed record NameRule(string Bfl, string[] Diffusers, NameJoin Join, bool IsScale = false, int[]? RowSizes = null)
{
    /// <summary>The tensor suffixes the rule covers: ".weight" and ".bias" for a linear, "" for a norm scale.</summary>
    public string[] Suffixes => IsScale ? [""] : [".weight", ".bias"];
}

/// <summary>A LoRA target: one diffusers-granularity linear, living in rows [RowStart, RowStart+Rows) of a BFL linear.</summary>
/// <param name="Name">PEFT/diffusers module name with the "transformer." prefix, e.g. transformer.transformer_blocks.0.attn.to_q.</param>
/// <param name="BflModule">The BFL linear it lives in, e.g. double_blocks.0.img_attn.qkv.</param>
public sealed record LoraTarget(string Name, string BflModule, int RowStart, int Rows, int InFeatures)
{
    /// <summary>The short diffusers name without the block prefix (to_q, ff.net.2, norm1.linear ...) for include/exclude filters.</summary>
    public string Kind => Name[(Name.IndexOf(".", Name.IndexOf("blocks.", StringComparison.Ordinal) + 7, StringComparison.Ordinal) + 1)..];
}

/// <summary>
/// The single explicit table between BFL's checkpoint names (flux1-dev.safetensors) and diffusers'
/// (FluxTransformer2DModel). Checkpoint loading, LoRA targets and LoRA export all read it, so the two layouts
/// can never drift apart in one place and not another.
/// </summary>
public static class FluxNames
{
    public const string PeftPrefix = "transformer.";

    /// <summary>Every rule of this config, in checkpoint order.</summary>
    public static IReadOnlyList<NameRule> Rules(FluxConfig c) =>
        Table(c.GuidanceEmbed, c.Depth, c.DepthSingleBlocks, new Widths(c.HiddenSize, c.MlpHiddenDim));

    /// <summary>
    /// The rules of a model with these depths whose widths are not known yet (config detection reads them off the
    /// shapes these rules assemble): the fused linears' RowSizes are null.
    /// </summary>
    public static IReadOnlyList<NameRule> Layout(bool guidanceEmbed, int depth, int depthSingleBlocks) =>
        Table(guidanceEmbed, depth, depthSingleBlocks, null);

    static List<NameRule> Table(bool guidanceEmbed, int depth, int depthSingleBlocks, Widths? widths)
    {
        var rules = new List<NameRule>
        {
            new("img_in", ["x_embedder"], NameJoin.Direct),
            new("txt_in", ["context_embedder"], NameJoin.Direct),
            new("time_in.in_layer", ["time_text_embed.timestep_embedder.linear_1"], NameJoin.Direct),
            new("time_in.out_layer", ["time_text_embed.timestep_embedder.linear_2"], NameJoin.Direct),
            new("vector_in.in_layer", ["time_text_embed.text_embedder.linear_1"], NameJoin.Direct),
            new("vector_in.out_layer", ["time_text_embed.text_embedder.linear_2"], NameJoin.Direct),
        };
        if (guidanceEmbed)
        {
            rules.Add(new("guidance_in.in_layer", ["time_text_embed.guidance_embedder.linear_1"], NameJoin.Direct));
            rules.Add(new("guidance_in.out_layer", ["time_text_embed.guidance_embedder.linear_2"], NameJoin.Direct));
        }
        for (int i = 0; i < depth; i++) rules.AddRange(DoubleBlockRules(i, widths));
        for (int i = 0; i < depthSingleBlocks; i++) rules.AddRange(SingleBlockRules(i, widths));
        rules.Add(new("final_layer.linear", ["proj_out"], NameJoin.Direct));
        rules.Add(new("final_layer.adaLN_modulation.1", ["norm_out.linear"], NameJoin.SwapHalves));
        return rules;
    }

    /// <summary>Hidden size C and MLP width: the row sizes of the fused linears' parts.</summary>
    readonly record struct Widths(int Hidden, int Mlp);

    /// <summary>The rules of double block i (diffusers' transformer_blocks.i). Without widths, RowSizes stay null.</summary>
    public static NameRule[] DoubleBlockRules(int i) => DoubleBlockRules(i, null);

    /// <summary>The rules of single block i (diffusers' single_transformer_blocks.i). Without widths, RowSizes stay null.</summary>
    public static NameRule[] SingleBlockRules(int i) => SingleBlockRules(i, null);

    static NameRule[] DoubleBlockRules(int i, Widths? w)
    {
        string b = $"double_blocks.{i}", d = $"transformer_blocks.{i}";
        int[]? qkv = w is { } x ? [x.Hidden, x.Hidden, x.Hidden] : null;
        return
        [
            new($"{b}.img_mod.lin", [$"{d}.norm1.linear"], NameJoin.Direct),
            new($"{b}.txt_mod.lin", [$"{d}.norm1_context.linear"], NameJoin.Direct),
            new($"{b}.img_attn.qkv", [$"{d}.attn.to_q", $"{d}.attn.to_k", $"{d}.attn.to_v"], NameJoin.RowConcat, RowSizes: qkv),
            new($"{b}.txt_attn.qkv", [$"{d}.attn.add_q_proj", $"{d}.attn.add_k_proj", $"{d}.attn.add_v_proj"], NameJoin.RowConcat, RowSizes: qkv),
            new($"{b}.img_attn.norm.query_norm.scale", [$"{d}.attn.norm_q.weight"], NameJoin.Direct, IsScale: true),
            new($"{b}.img_attn.norm.key_norm.scale", [$"{d}.attn.norm_k.weight"], NameJoin.Direct, IsScale: true),
            new($"{b}.txt_attn.norm.query_norm.scale", [$"{d}.attn.norm_added_q.weight"], NameJoin.Direct, IsScale: true),
            new($"{b}.txt_attn.norm.key_norm.scale", [$"{d}.attn.norm_added_k.weight"], NameJoin.Direct, IsScale: true),
            new($"{b}.img_attn.proj", [$"{d}.attn.to_out.0"], NameJoin.Direct),
            new($"{b}.txt_attn.proj", [$"{d}.attn.to_add_out"], NameJoin.Direct),
            new($"{b}.img_mlp.0", [$"{d}.ff.net.0.proj"], NameJoin.Direct),
            new($"{b}.img_mlp.2", [$"{d}.ff.net.2"], NameJoin.Direct),
            new($"{b}.txt_mlp.0", [$"{d}.ff_context.net.0.proj"], NameJoin.Direct),
            new($"{b}.txt_mlp.2", [$"{d}.ff_context.net.2"], NameJoin.Direct),
        ];
    }

    static NameRule[] SingleBlockRules(int i, Widths? w)
    {
        string b = $"single_blocks.{i}", d = $"single_transformer_blocks.{i}";
        int[]? linear1 = w is { } x ? [x.Hidden, x.Hidden, x.Hidden, x.Mlp] : null;
        return
        [
            new($"{b}.linear1", [$"{d}.attn.to_q", $"{d}.attn.to_k", $"{d}.attn.to_v", $"{d}.proj_mlp"], NameJoin.RowConcat, RowSizes: linear1),
            new($"{b}.linear2", [$"{d}.proj_out"], NameJoin.Direct),
            new($"{b}.norm.query_norm.scale", [$"{d}.attn.norm_q.weight"], NameJoin.Direct, IsScale: true),
            new($"{b}.norm.key_norm.scale", [$"{d}.attn.norm_k.weight"], NameJoin.Direct, IsScale: true),
            new($"{b}.modulation.lin", [$"{d}.norm.linear"], NameJoin.Direct),
        ];
    }

    /// <summary>
    /// ai-toolkit's FLUX target set: every linear inside the double and single blocks, in diffusers granularity
    /// (q, k, v separate; modulation linears included): 494 on flux-dev. Filters match <see cref="LoraTarget.Kind"/>
    /// or the full name by substring.
    /// </summary>
    public static IReadOnlyList<LoraTarget> LoraTargets(FluxConfig c, IReadOnlyCollection<string>? include = null, IReadOnlyCollection<string>? exclude = null)
    {
        var targets = new List<LoraTarget>();
        foreach (var rule in Rules(c))
        {
            if (rule.IsScale || !rule.Bfl.Contains("blocks.", StringComparison.Ordinal)) continue;
            var (dIn, dOut) = LinearShape(c, rule.Bfl);
            int start = 0;
            for (int k = 0; k < rule.Diffusers.Length; k++)
            {
                int rows = rule.RowSizes?[k] ?? dOut;
                var t = new LoraTarget(PeftPrefix + rule.Diffusers[k], rule.Bfl, start, rows, dIn);
                start += rows;
                bool keep = (include == null || include.Count == 0 || include.Any(f => Matches(t, f)))
                            && (exclude == null || !exclude.Any(f => Matches(t, f)));
                if (keep) targets.Add(t);
            }
        }
        return targets;
    }

    static bool Matches(LoraTarget t, string filter) => t.Kind == filter || t.Name.Contains(filter, StringComparison.Ordinal);

    /// <summary>(d_in, d_out) of a BFL linear module of this config.</summary>
    public static (int In, int Out) LinearShape(FluxConfig c, string bflModule)
    {
        foreach (var (name, shape) in c.TensorShapes())
            if (name == bflModule + ".weight") return (shape[1], shape[0]);
        throw new ArgumentException($"'{bflModule}' is not a linear of the {c.Name} model");
    }

    /// <summary>kohya sd-scripts' module name for a BFL module: lora_unet_double_blocks_0_img_attn_qkv.</summary>
    public static string KohyaName(string bflModule) => "lora_unet_" + bflModule.Replace('.', '_');

    /// <summary>True when the names look like a diffusers FluxTransformer2DModel state dict rather than BFL's.</summary>
    public static bool IsDiffusersLayout(IEnumerable<string> names) =>
        names.Any(n => n.StartsWith("x_embedder.", StringComparison.Ordinal) || n.StartsWith("transformer_blocks.", StringComparison.Ordinal)
                       || n.StartsWith("single_transformer_blocks.", StringComparison.Ordinal));
}
