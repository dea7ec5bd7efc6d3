using MetaLoraNative.Engine.Flux;

namespace MetaLoraNative.Engine.Lora;

/// <summary>Which factorisation the adapter trains.</summary>
public enum LoraMode
{
    /// <summary>h = W0x + U·M·D·x: D (r1 × d_in) shared, M (r2 × r1) and U (d_out × r2) per identity.</summary>
    Meta,
    /// <summary>h = W0x + B·A·x: the paper's baseline. A (r × d_in) plays D's role, B (d_out × r) plays U's; no M.</summary>
    Standard,
}

/// <summary>One identity's factors: M and U for every target (M absent in standard mode).</summary>
public sealed class IdentityFactors : IDisposable
{
    public IdentityFactors(string name, LoraParameter?[] mid, LoraParameter[] up)
    {
        Name = name;
        Mid = mid;
        Up = up;
    }

    public string Name { get; }
    /// <summary>Indexed like <see cref="LoraAdapter.Targets"/>.</summary>
    public LoraParameter?[] Mid { get; }
    public LoraParameter[] Up { get; }

    public IEnumerable<LoraParameter> Parameters() => Mid.OfType<LoraParameter>().Concat(Up);

    public void Dispose()
    {
        foreach (var p in Parameters()) p.Dispose();
    }
}

/// <summary>
/// A Meta-LoRA: the shared Meta-Down D of every target plus an identity bank of (M, U) pairs. Stage 1 trains
/// many identities against one D; Stage 2 loads D, freezes it, and trains one fresh identity. In standard mode
/// "Down" holds A and each identity's "Up" holds B.
/// </summary>
public sealed class LoraAdapter : IDisposable
{
    readonly List<IdentityFactors> identities = [];
    readonly Dictionary<string, int[]> targetsByModule;
    readonly string[] modules;

    public LoraAdapter(IBackend backend, FluxConfig config, IReadOnlyList<LoraTarget> targets, LoraMode mode, int rank1, int rank2, LoraParameter[] down)
    {
        if (down.Length != targets.Count) throw new ArgumentException("one Down factor per target is required");
        Backend = backend;
        Config = config;
        Targets = targets;
        Mode = mode;
        Rank1 = rank1;
        Rank2 = mode == LoraMode.Meta ? rank2 : rank1;
        Down = down;
        targetsByModule = Enumerable.Range(0, targets.Count).GroupBy(i => targets[i].BflModule)
                                    .ToDictionary(g => g.Key, g => g.ToArray());
        modules = [.. targets.Select(t => t.BflModule).Distinct()];
    }

    public IBackend Backend { get; }
    public FluxConfig Config { get; }
    public IReadOnlyList<LoraTarget> Targets { get; }
    public LoraMode Mode { get; }
    /// <summary>Rank of D (Meta-Down), or of A in standard mode.</summary>
    public int Rank1 { get; }
    /// <summary>Rank of M and U (the merged LoRA's rank); equals Rank1 in standard mode.</summary>
    public int Rank2 { get; }
    public LoraParameter[] Down { get; }
    public IReadOnlyList<IdentityFactors> Identities => identities;
    /// <summary>The fused Stage-2 path's merged downs A = M·D, made on first use and freed with the adapter.</summary>
    public FusedStage2Cache MergedDowns => mergedDowns ??= new(this);
    FusedStage2Cache? mergedDowns;

    /// <summary>The BFL linears that hold at least one target, in target order.</summary>
    public IReadOnlyList<string> Modules => modules;

    /// <summary>Target indices living in one BFL linear, or empty.</summary>
    public ReadOnlySpan<int> TargetsOf(string bflModule) =>
        targetsByModule.TryGetValue(bflModule, out var t) ? t : ReadOnlySpan<int>.Empty;

    public static string DownKey(LoraTarget t, LoraMode mode) => t.Name + (mode == LoraMode.Meta ? ".lora_down.weight" : ".lora_A.weight");
    public static string MidKey(LoraTarget t) => t.Name + ".lora_mid.weight";
    public static string UpKey(LoraTarget t, LoraMode mode) => t.Name + (mode == LoraMode.Meta ? ".lora_up.weight" : ".lora_B.weight");

    /// <summary>
    /// A fresh adapter initialised as ai-toolkit does: Down kaiming-uniform(a=√5), i.e. U(±1/√d_in), deterministic
    /// from the seed. Identities are added with <see cref="AddIdentity"/>.
    /// </summary>
    public static LoraAdapter Create(IBackend backend, FluxConfig config, IReadOnlyList<LoraTarget> targets, LoraMode mode, int rank1, int rank2, ulong seed)
    {
        var down = targets.Select(t =>
        {
            var values = new float[rank1 * t.InFeatures];
            RandomWeights.Uniform("lora.down." + t.Name, seed, 0, values);
            float bound = (float)(1.0 / Math.Sqrt(t.InFeatures));
            for (int i = 0; i < values.Length; i++) values[i] *= bound;
            return new LoraParameter(DownKey(t, mode), backend.Upload(values, [rank1, t.InFeatures], Precision.Master));
        }).ToArray();
        return new LoraAdapter(backend, config, targets, mode, rank1, rank2, down);
    }

    /// <summary>
    /// For checks and comparisons: an adapter on every target whose factors are all random and nonzero (U too, as
    /// 0.3 · N(0, 1)), so every gradient is nonzero. Training starts from <see cref="Create"/> instead.
    /// </summary>
    public static LoraAdapter Random(IBackend be, FluxConfig c, LoraMode mode, int rank1, int rank2, int identities, ulong seed)
    {
        var a = Create(be, c, FluxNames.LoraTargets(c), mode, rank1, rank2, seed);
        for (int k = 0; k < identities; k++)
        {
            var id = a.AddIdentity($"id{k}", seed + (ulong)k);
            foreach (var up in id.Up)
            {
                var v = RandomWeights.Normal($"up.{k}.{up.Name}", seed, (int)up.Value.Length).Select(x => 0.3f * x).ToArray();
                using var t = be.Upload(v, up.Shape, Precision.Master);
                be.Copy(t, up.Value);
            }
        }
        return a;
    }

    /// <summary>Adds an identity with M kaiming-uniform (U(±1/√r1)) and U zero, as ai-toolkit initialises up-projections.</summary>
    public IdentityFactors AddIdentity(string name, ulong seed)
    {
        var mid = new LoraParameter?[Targets.Count];
        var up = new LoraParameter[Targets.Count];
        for (int i = 0; i < Targets.Count; i++)
        {
            var t = Targets[i];
            if (Mode == LoraMode.Meta)
            {
                var values = new float[Rank2 * Rank1];
                RandomWeights.Uniform($"lora.mid.{name}.{t.Name}", seed, 0, values);
                float bound = (float)(1.0 / Math.Sqrt(Rank1));
                for (int k = 0; k < values.Length; k++) values[k] *= bound;
                mid[i] = new LoraParameter(MidKey(t), Backend.Upload(values, [Rank2, Rank1], Precision.Master));
            }
            up[i] = new LoraParameter(UpKey(t, Mode), Backend.Zeros([t.Rows, Rank2], Precision.Master));
        }
        return AddIdentity(new IdentityFactors(name, mid, up));
    }

    public IdentityFactors AddIdentity(IdentityFactors identity)
    {
        identities.Add(identity);
        return identity;
    }

    public void Dispose()
    {
        mergedDowns?.Dispose();
        foreach (var id in identities) id.Dispose();
        identities.Clear();
        foreach (var d in Down) d.Dispose();
    }
}
