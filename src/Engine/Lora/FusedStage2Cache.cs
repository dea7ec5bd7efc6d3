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
///
/// Grouped (<see cref="Grouped"/>, METALORA_LORA_GROUPED=1; off by default): the first stale lookup of a step forms
/// the A of every module of the identity whose factors moved in one <see cref="IBackend.GemmGroup"/> call (494
/// products in one launch at flux-dev instead of 494 launches), into stacked A tensors kept from step to step (formed
/// again in place, so the grouped kernel's table of pointers stays the same and is not uploaded again). And the
/// backward's dM += Gⱼ·Dᵀ are deferred (<see cref="DeferredG"/>, <see cref="Defer"/>) to one GemmGroup at the end
/// of the backward (<see cref="FinishBackward"/>, which FluxModel's backward calls through its binding): G then
/// has to outlive its module's backward, so each (module, group) keeps its G (Σ r2, d_in) in fp32 here from step to
/// step (9.3 MB at flux-dev with r2 1), instead of a fresh one per module backward that the per-module products
/// read at once. A second backward of the same module and group before the flush flushes first, so a G is never
/// overwritten while products that read it are pending.
/// </summary>
public sealed class FusedStage2Cache(LoraAdapter adapter) : IDisposable
{
    readonly Dictionary<(int Identity, string Module), Entry> entries = [];
    readonly Dictionary<(string Module, int Group), (LoraBinding Owner, Tensor X, Tensor A)> kept = [];
    int[] retained = [];

    /// <param name="A">(Σ r2, d_in), Master: target j's A = M·D in rows [Σ_{i&lt;j} r2_i, + r2_j).</param>
    /// <param name="Versions">M's and D's version of each target, in target order (M_0, D_0, M_1, D_1, ...).</param>
    sealed record Entry(Tensor A, (int, int)[] Versions);

    readonly Dictionary<(string Module, int Group), Tensor> gradients = [];
    readonly HashSet<(string Module, int Group)> deferredSlots = [];
    readonly List<GemmEntry> deferred = [];

    /// <summary>Targets' A formed so far (each formation is one GEMM, or one entry of a grouped call): the tests and the launch count read it.</summary>
    public long Formations { get; private set; }

    /// <summary>GemmGroup calls made: grouped A formations and flushes of deferred dM products.</summary>
    public long GroupCalls { get; private set; }

    /// <summary>Whether A formation and the backward's dM products are grouped (see the class summary); default from METALORA_LORA_GROUPED.</summary>
    public bool Grouped { get; set; } = GroupedFromEnvironment();

    /// <summary>METALORA_LORA_GROUPED: unset, "" or "0" → off (today's path); "1" → grouped.</summary>
    public static bool GroupedFromEnvironment() => Environment.GetEnvironmentVariable("METALORA_LORA_GROUPED") switch
    {
        null or "" or "0" => false,
        "1" => true,
        var v => throw new InputException("METALORA_LORA_GROUPED", $"METALORA_LORA_GROUPED={v}: expected 0 or 1"),
    };

    (int, int)[] VersionsOf(IdentityFactors factors, ReadOnlySpan<int> targets)
    {
        var versions = new (int, int)[2 * targets.Length];
        for (int j = 0; j < targets.Length; j++)
        {
            versions[2 * j] = Mid(factors, targets[j]).Version;
            versions[2 * j + 1] = adapter.Down[targets[j]].Version;
        }
        return versions;
    }

    /// <summary>The stacked A (Σ r2, d_in) of one identity's targets in a module, formed when any of its M or D moved.</summary>
    public Tensor StackedA(int identity, string module, ReadOnlySpan<int> targets)
    {
        var factors = adapter.Identities[identity];
        var versions = VersionsOf(factors, targets);
        var key = (identity, module);
        if (Grouped)
        {
            if (entries.TryGetValue(key, out var current) && current.Versions.AsSpan().SequenceEqual(versions)) return current.A;
            FormAll(identity);
            return entries[key].A;
        }
        if (entries.TryGetValue(key, out var cached))
        {
            if (cached.Versions.AsSpan().SequenceEqual(versions)) return cached.A;
            cached.A.Dispose();
            entries.Remove(key);
        }
        var be = adapter.Backend;
        int dIn = adapter.Down[targets[0]].Shape[1], rows = 0;
        foreach (int t in targets) rows += Mid(factors, t).Shape[0];
        var a = be.Empty([rows, dIn], Precision.Master);                                           // every target's rows written below
        for (int j = 0, row = 0; j < targets.Length; row += Mid(factors, targets[j]).Shape[0], j++)
        {
            var m = Mid(factors, targets[j]).Value;                                                 // (r2, r1)
            be.GemmSlice(m, false, adapter.Down[targets[j]].Value, false, new MatrixSlice(a, row, m.Shape[0], 0, dIn));   // A_j = M·D
        }
        Formations += targets.Length;
        entries[key] = new(a, versions);
        return a;
    }

    /// <summary>
    /// Grouped formation: A = M·D for every target of every module of the identity whose M or D moved, in one
    /// GemmGroup. A module's stacked A is kept and written again in place (beta 0) when its shape is unchanged.
    /// </summary>
    void FormAll(int identity)
    {
        var factors = adapter.Identities[identity];
        var be = adapter.Backend;
        var products = new List<GemmEntry>();
        foreach (var module in adapter.Modules)
        {
            var targets = adapter.TargetsOf(module);
            var versions = VersionsOf(factors, targets);
            var key = (identity, module);
            int dIn = adapter.Down[targets[0]].Shape[1], rows = 0;
            foreach (int t in targets) rows += Mid(factors, t).Shape[0];
            Tensor a;
            if (entries.TryGetValue(key, out var cached))
            {
                if (cached.Versions.AsSpan().SequenceEqual(versions)) continue;
                if (cached.A.Shape[0] == rows && cached.A.Shape[1] == dIn) a = cached.A;
                else
                {
                    cached.A.Dispose();
                    a = be.Empty([rows, dIn], Precision.Master);
                }
            }
            else a = be.Empty([rows, dIn], Precision.Master);                                      // every target's rows written (beta 0)
            for (int j = 0, row = 0; j < targets.Length; row += Mid(factors, targets[j]).Shape[0], j++)
            {
                var m = Mid(factors, targets[j]).Value;                                             // (r2, r1)
                products.Add(new(m, false, adapter.Down[targets[j]].Value, false, new MatrixSlice(a, row, m.Shape[0], 0, dIn)));   // A_j = M·D
            }
            Formations += targets.Length;
            entries[key] = new(a, versions);
        }
        if (products.Count == 0) return;
        be.GemmGroup(products);
        GroupCalls++;
    }

    /// <summary>
    /// Grouped backward: the G (Σ r2, d_in), fp32, of a module's group, kept here so that the dM products that read it
    /// can wait for <see cref="FinishBackward"/>. When this slot still has pending products they are issued first.
    /// </summary>
    public Tensor DeferredG(string module, int group, int rows, int dIn)
    {
        var slot = (module, group);
        if (deferredSlots.Contains(slot)) FinishBackward();
        deferredSlots.Add(slot);
        if (gradients.TryGetValue(slot, out var g))
        {
            if (g.Shape[0] == rows && g.Shape[1] == dIn) return g;
            g.Dispose();
        }
        return gradients[slot] = adapter.Backend.Empty([rows, dIn], Precision.Master);             // G = dmidᵀ·x writes all of it
    }

    /// <summary>Queues one dM += Gⱼ·Dᵀ (reading a <see cref="DeferredG"/>) for <see cref="FinishBackward"/>.</summary>
    public void Defer(in GemmEntry product) => deferred.Add(product);

    /// <summary>The deferred dM products of the backward so far, as one GemmGroup; nothing when none is pending.</summary>
    public void FinishBackward()
    {
        if (deferred.Count > 0)
        {
            adapter.Backend.GemmGroup(deferred);
            GroupCalls++;
        }
        deferred.Clear();
        deferredSlots.Clear();
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
        foreach (var g in gradients.Values) g.Dispose();
        gradients.Clear();
        deferred.Clear();
        deferredSlots.Clear();
    }
}
