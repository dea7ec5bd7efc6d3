namespace MetaLoraNative.Engine.Benchmarks;

/// <summary>
/// What a backend issued, tallied per phase of a step (<c>metalora bench --launches</c>). The backend itself feeds it:
/// the CUDA backend counts each cuLaunchKernel, each GEMM by its route (cuBLASLt or our kernels, whose launches also
/// count as launches), each host synchronisation (cuStreamSynchronize, which every blocking device→host read ends
/// with), each asynchronous read-back into pinned memory and each wait on one, and each pool allocation; the CPU
/// backend counts the same events for the ops it runs: every op that a GPU runs as kernels is one launch, a GEMM is
/// a GEMM of route "cpu", and an op that hands a device value to the host (Download, the loss and sums of squares
/// returned as numbers) is a synchronisation. The phase is set by the trainer around its parts
/// (<c>using (be.Counters?.Phase("forward"))</c>); events outside any phase count under "other".
/// </summary>
public sealed class LaunchCounters
{
    /// <summary>The phase events count under when no phase is open.</summary>
    public const string NoPhase = "other";

    readonly object gate = new();
    readonly Dictionary<string, Tally> phases = [];
    string phase = NoPhase;

    /// <summary>The counts of one phase (or of a whole step, <see cref="Sum"/>).</summary>
    /// <param name="Launches">kernel launches (our kernels, GEMM kernels of our routes included; cuBLASLt's own are not seen)</param>
    /// <param name="Gemms">GEMMs by route: "cublaslt", "skinny", "gemv", "rankk" on CUDA, and "grouped" for one launch of
    /// a GemmGroup's fp32 entries (kernels/dev/gemm/02_grouped.cu); "cpu" on the CPU, where a GemmGroup counts once</param>
    /// <param name="Syncs">host synchronisations: stream synchronisations and blocking device→host reads</param>
    /// <param name="ReadBacks">asynchronous device→host copies into pinned memory (a step's scalars)</param>
    /// <param name="Waits">waits on such a read-back, which was queued a step earlier</param>
    /// <param name="Allocations">device allocations (pool hits included: each is one allocation a graph would have to replay)</param>
    public sealed record Counts(long Launches, IReadOnlyDictionary<string, long> Gemms, long Syncs, long ReadBacks, long Waits, long Allocations)
    {
        public static readonly Counts Zero = new(0, new Dictionary<string, long>(), 0, 0, 0, 0);

        public long GemmCount => Gemms.Values.Sum();

        public static Counts operator +(Counts a, Counts b) =>
            new(a.Launches + b.Launches, Merge(a.Gemms, b.Gemms, +1), a.Syncs + b.Syncs, a.ReadBacks + b.ReadBacks, a.Waits + b.Waits, a.Allocations + b.Allocations);

        public static Counts operator -(Counts a, Counts b) =>
            new(a.Launches - b.Launches, Merge(a.Gemms, b.Gemms, -1), a.Syncs - b.Syncs, a.ReadBacks - b.ReadBacks, a.Waits - b.Waits, a.Allocations - b.Allocations);

        static Dictionary<string, long> Merge(IReadOnlyDictionary<string, long> a, IReadOnlyDictionary<string, long> b, int sign)
        {
            var r = new Dictionary<string, long>(a);
            foreach (var (k, v) in b) r[k] = r.GetValueOrDefault(k) + sign * v;
            foreach (var k in r.Where(kv => kv.Value == 0).Select(kv => kv.Key).ToArray()) r.Remove(k);
            return r;
        }

        public override string ToString() =>
            $"{Launches} launches, {GemmCount} GEMMs ({(Gemms.Count == 0 ? "none" : string.Join(", ", Gemms.OrderBy(g => g.Key).Select(g => $"{g.Key} {g.Value}")))}), " +
            $"{Syncs} syncs, {ReadBacks} async read-backs, {Waits} read-back waits, {Allocations} allocations";
    }

    sealed class Tally
    {
        public long Launches, Syncs, ReadBacks, Waits, Allocations;
        public readonly Dictionary<string, long> Gemms = [];
        public Counts Freeze() => new(Launches, new Dictionary<string, long>(Gemms), Syncs, ReadBacks, Waits, Allocations);
    }

    /// <summary>Counts the following events under <paramref name="name"/> until the scope is disposed (phases nest: the inner one counts).</summary>
    public IDisposable Phase(string name)
    {
        lock (gate)
        {
            var scope = new PhaseScope(this, phase);
            phase = name;
            return scope;
        }
    }

    sealed class PhaseScope(LaunchCounters owner, string previous) : IDisposable
    {
        bool done;
        public void Dispose()
        {
            if (done) return;
            done = true;
            lock (owner.gate) owner.phase = previous;
        }
    }

    Tally Current => phases.TryGetValue(phase, out var t) ? t : phases[phase] = new Tally();

    public void Launch() { lock (gate) Current.Launches++; }
    public void Gemm(string route) { lock (gate) { var g = Current.Gemms; g[route] = g.GetValueOrDefault(route) + 1; } }
    public void Sync() { lock (gate) Current.Syncs++; }
    public void ReadBack() { lock (gate) Current.ReadBacks++; }
    public void Wait() { lock (gate) Current.Waits++; }
    /// <summary>
    /// An allocation of <paramref name="bytes"/> (the pool's size class on CUDA). With <see cref="AllocationLog"/> set,
    /// its size is appended there too: a step whose sequence of sizes repeats exactly gets the same blocks back from
    /// the pool every step (its free lists are last-in first-out per size class), the precondition of a CUDA graph.
    /// </summary>
    public void Allocation(long bytes)
    {
        lock (gate)
        {
            Current.Allocations++;
            AllocationLog?.Add(bytes);
        }
    }

    /// <summary>When set, every allocation's size is appended in order (see <see cref="Allocation"/>).</summary>
    public List<long>? AllocationLog { get; set; }

    /// <summary>The counts so far, per phase.</summary>
    public IReadOnlyDictionary<string, Counts> Snapshot()
    {
        lock (gate) return phases.ToDictionary(p => p.Key, p => p.Value.Freeze());
    }

    /// <summary>Per phase, what happened between two snapshots (phases with nothing counted are left out).</summary>
    public static Dictionary<string, Counts> Between(IReadOnlyDictionary<string, Counts> before, IReadOnlyDictionary<string, Counts> after) =>
        after.Select(p => (p.Key, Counts: p.Value - before.GetValueOrDefault(p.Key, Counts.Zero)))
             .Where(p => !IsEmpty(p.Counts))
             .ToDictionary(p => p.Key, p => p.Counts);

    static bool IsEmpty(Counts c) => c.Launches == 0 && c.GemmCount == 0 && c.Syncs == 0 && c.ReadBacks == 0 && c.Waits == 0 && c.Allocations == 0;

    /// <summary>The counts of every phase added up.</summary>
    public static Counts Sum(IEnumerable<Counts> counts) => counts.Aggregate(Counts.Zero, (a, b) => a + b);
}
