namespace MetaLoraNative.Engine.Lora;

/// <summary>
/// The merged downs of the fused Stage-2 path (<see cref="LoraBinding"/>, FusedStage2.cs), per identity and module:
/// A = M·D of each target (r2 × d_in), the module's targets stacked along the rows, (Σ r2, d_in) in fp32, so one GEMM
/// makes every target's a = x·Aᵀ. Owned by the adapter, whose factors it is made from.
///
/// Invalidation is by version, not by call sites: an entry records the <see cref="LoraParameter.Version"/> of every M
/// and D it was formed from and is formed again when any of them differs. AdamW advances a factor's Step, so the first
/// forward after an optimiser step rebuilds A, and every later product of that step (the backward, recomputed blocks)
/// reuses it: A is formed once per step. Writes other than AdamW call <see cref="LoraParameter.MarkWritten"/>.
/// Entries of identities that the current binding does not use are dropped (<see cref="Retain"/>), so the Stage-1
/// warm-up, which visits many identities, keeps only one batch's.
///
/// It also holds the a = x·Aᵀ (n, Σ r2) that a training forward keeps for its backward's dU (<see cref="Keep"/>):
/// recomputing a would read x a second time in the backward, besides G = dmidᵀ·x, while keeping it costs
/// n·Σ r2 values per module (about 8 MB for a flux-dev step at 1024²). A kept a is handed only to the backward of the
/// same binding, module, group and x tensor (a recomputed block passes a new x, so it recomputes a); a new forward
/// of the module replaces it, and the adapter's disposal frees what no backward took.
/// </summary>
public sealed class FusedStage2Cache(LoraAdapter adapter) : IDisposable
{
    readonly Dictionary<(int Identity, string Module), Entry> entries = [];
    readonly Dictionary<(string Module, int Group), (LoraBinding Owner, Tensor X, Tensor A)> kept = [];
    int[] retained = [];

    /// <param name="A">(Σ r2, d_in), Master: target j's A = M·D in rows [Σ_{i&lt;j} r2_i, + r2_j).</param>
    /// <param name="Versions">M's and D's version of each target, in target order (M_0, D_0, M_1, D_1, ...).</param>
    sealed record Entry(Tensor A, (int, int)[] Versions);

    /// <summary>Targets' A formed so far (each formation is one GEMM): the tests and the launch count read it.</summary>
    public long Formations { get; private set; }

    /// <summary>The stacked A (Σ r2, d_in) of one identity's targets in a module, formed when any of its M or D moved.</summary>
    public Tensor StackedA(int identity, string module, ReadOnlySpan<int> targets)
    {
        var factors = adapter.Identities[identity];
        var versions = new (int, int)[2 * targets.Length];
        for (int j = 0; j < targets.Length; j++)
        {
            versions[2 * j] = Mid(factors, targets[j]).Version;
            versions[2 * j + 1] = adapter.Down[targets[j]].Version;
        }
        var key = (identity, module);
        if (entries.TryGetValue(key, out var cached))
        {
            if (cached.Versions.AsSpan().SequenceEqual(versions)) return cached.A;
            cached.A.Dispose();
            entries.Remove(key);
        }
        var be = adapter.Backend;
        int dIn = adapter.Down[targets[0]].Shape[1], rows = 0;
        foreach (int t in targets) rows += Mid(factors, t).Shape[0];
        var a = be.Zeros([rows, dIn], Precision.Master);
        for (int j = 0, row = 0; j < targets.Length; row += Mid(factors, targets[j]).Shape[0], j++)
        {
            var m = Mid(factors, targets[j]).Value;                                                 // (r2, r1)
            be.GemmSlice(m, false, adapter.Down[targets[j]].Value, false, new MatrixSlice(a, row, m.Shape[0], 0, dIn));   // A_j = M·D
        }
        Formations += targets.Length;
        entries[key] = new(a, versions);
        return a;
    }

    /// <summary>Drops the entries of identities not in <paramref name="identities"/> (the current binding's).</summary>
    public void Retain(int[] identities)
    {
        if (identities.AsSpan().SequenceEqual(retained)) return;
        retained = identities;
        foreach (var key in entries.Keys.Where(k => Array.IndexOf(identities, k.Identity) < 0).ToArray())
        {
            entries[key].A.Dispose();
            entries.Remove(key);
        }
    }

    /// <summary>Keeps a forward's a (n, Σ r2) for the backward of the same binding, module, group and x; owns it from now on.</summary>
    public void Keep(LoraBinding owner, string module, int group, Tensor x, Tensor a)
    {
        if (kept.Remove((module, group), out var old)) old.A.Dispose();
        kept[(module, group)] = (owner, x, a);
    }

    /// <summary>The a kept by the forward of this binding, module, group and x (the caller owns it), or null.</summary>
    public Tensor? TakeKept(LoraBinding owner, string module, int group, Tensor x)
    {
        if (!kept.Remove((module, group), out var k)) return null;
        if (ReferenceEquals(k.Owner, owner) && ReferenceEquals(k.X, x)) return k.A;
        k.A.Dispose();
        return null;
    }

    static LoraParameter Mid(IdentityFactors f, int target) =>
        f.Mid[target] ?? throw new InvalidOperationException($"target {target} has no M: the fused Stage-2 path needs a Meta-LoRA");

    public void Dispose()
    {
        foreach (var e in entries.Values) e.A.Dispose();
        entries.Clear();
        foreach (var k in kept.Values) k.A.Dispose();
        kept.Clear();
    }
}
