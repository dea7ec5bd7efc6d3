namespace MetaLoraNative.Engine.Flux;

/// <summary>
/// Which fused forms of the model's elementwise and layout work a <see cref="FluxModel"/> issues. Every fusion is a
/// reassociation of the same arithmetic into fewer passes over memory: the unfused sequence is the reference the
/// fused ops are tested against (fp64, CPU), and it stays the default until a GPU run has passed the fused kernels'
/// parity checks at the FLUX shape (docs/PERF.md). Chosen by METALORA_FUSE or the model's constructor.
/// </summary>
[Flags]
public enum Fusions
{
    None = 0,
    /// <summary>split-qkv + QK RMSNorm + RoPE in one op writing the joint q, k, v; its backward writes d qkv.</summary>
    QkvNormRope = 1,
    /// <summary>x1 = x + gate·y and the next LayerNorm-modulate in one op (and one backward); txt/img joins as views.</summary>
    ResidualNorm = 2,
    /// <summary>GELU (and its backward) as a GEMM epilogue of mlp.0 / mlp.2; the single block's GELU and cat as slices.</summary>
    GeluEpilogue = 4,
    All = QkvNormRope | ResidualNorm | GeluEpilogue,
}

public static class FusionSettings
{
    static readonly (string Name, Fusions Value)[] Names =
    [
        ("qkv", Fusions.QkvNormRope), ("residual-norm", Fusions.ResidualNorm), ("gelu", Fusions.GeluEpilogue),
    ];

    /// <summary>"none" (or empty), "all", or a comma list of qkv, residual-norm, gelu.</summary>
    public static Fusions Parse(string? text, string subject = "METALORA_FUSE")
    {
        if (string.IsNullOrWhiteSpace(text) || text.Trim() == "none") return Fusions.None;
        if (text.Trim() == "all") return Fusions.All;
        var result = Fusions.None;
        foreach (var part in text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            var match = Array.Find(Names, n => n.Name == part);
            if (match.Name == null)
                throw new InputException(subject, $"{subject}={text}: unknown fusion '{part}'; expected none, all, or a comma list of {string.Join(", ", Names.Select(n => n.Name))}");
            result |= match.Value;
        }
        return result;
    }

    /// <summary>METALORA_FUSE, read when a model is built; unset means none.</summary>
    public static Fusions FromEnvironment() => Parse(Environment.GetEnvironmentVariable("METALORA_FUSE"));

    /// <summary>The canonical text of a set ("none", "all", or the comma list), for logs and bench output.</summary>
    public static string Format(Fusions f) => f switch
    {
        Fusions.None => "none",
        Fusions.All => "all",
        _ => string.Join(",", Names.Where(n => f.HasFlag(n.Value)).Select(n => n.Name)),
    };
}
