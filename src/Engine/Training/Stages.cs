using System.Diagnostics;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;

namespace MetaLoraNative.Engine.Training;

/// <summary>Algorithm 1's settings. Defaults are the paper's (lr 4e-4, bs 4, 50,000 / 2,500 / 1,000 iterations).</summary>
public sealed record Stage1Options
{
    public TrainOptions Train { get; init; } = new();
    public int TotalIterations { get; init; } = 50_000;
    public int BucketIterations { get; init; } = 2_500;
    /// <summary>First iterations of each bucket visit that train only the bucket's M/U (paper: 0.4 · q_bucket).</summary>
    public int WarmupIterations { get; init; } = 1_000;
    /// <summary>Identities per bucket (N). 50 × 20 images × ~10 uses ≈ 2,500 iterations at bs 4.</summary>
    public int IdentitiesPerBucket { get; init; } = 50;
    public int Rank1 { get; init; } = 16;
    public int Rank2 { get; init; } = 1;
    /// <summary>The resumable training state is written here every <see cref="StateEvery"/> iterations (and at the end).</summary>
    public string? StatePath { get; init; }
    public int StateEvery { get; init; } = 250;
    public IReadOnlyCollection<string>? Include { get; init; }
    public IReadOnlyCollection<string>? Exclude { get; init; }
    public TrainingMonitor? Monitor { get; init; }
}

/// <summary>Algorithm 2's settings: D frozen, one fresh identity, bs 1, 375 iterations.</summary>
public sealed record Stage2Options
{
    public TrainOptions Train { get; init; } = new() { BatchSize = 1 };
    public int Iterations { get; init; } = 375;
    public int Rank2 { get; init; } = 1;
    /// <summary>The resumable training state is written here every <see cref="StateEvery"/> iterations (and at the end).</summary>
    public string? StatePath { get; init; }
    public int StateEvery { get; init; } = 125;
    public TrainingMonitor? Monitor { get; init; }
}

/// <summary>The two training stages of Meta-LoRA, on cached latents and text embeddings.</summary>
public static partial class Stages
{
    /// <summary>
    /// Stage 1 (Algorithm 1): identities are grouped into buckets; each bucket visit runs q_bucket iterations whose first
    /// q_warmup update only that bucket's M/U, the rest D too. Every identity keeps its M/U and optimiser state across
    /// visits. Resumes from <see cref="Stage1Options.StatePath"/> when it exists. Returns the adapter (D + bank).
    /// With <paramref name="parallel"/>, this process is one rank of a data-parallel run (<see cref="Stage1Parallel"/>):
    /// the same result as one rank, only rank 0 writes the state.
    /// </summary>
    public static LoraAdapter Stage1(FluxModel model, IReadOnlyList<Identity> identities, Stage1Options o, Action<string> log,
                                     Stage1Parallel? parallel = null)
    {
        if (identities.Count == 0) throw new InputException("--data", "Stage 1 needs at least one identity");
        foreach (var id in identities) id.CheckFits(model.Config);
        var targets = FluxNames.LoraTargets(model.Config, o.Include, o.Exclude);
        var adapter = LoraAdapter.Create(model.Backend, model.Config, targets, LoraMode.Meta, o.Rank1, o.Rank2, o.Train.Seed);
        foreach (var id in identities) adapter.AddIdentity(id.Name, o.Train.Seed);
        var buckets = identities.Select((id, i) => i).Chunk(Math.Max(1, o.IdentitiesPerBucket)).ToArray();
        log($"Stage 1: {targets.Count} targets, r1 {o.Rank1}, r2 {o.Rank2}, {identities.Count} identities in {buckets.Length} buckets, " +
            $"{o.TotalIterations} iterations ({o.BucketIterations} per bucket, {o.WarmupIterations} warm-up)" +
            (parallel != null ? $", data parallel over {parallel.WorldSize} ranks (this is rank {parallel.Rank})" : ""));

        var run = RunIdentity.Stage1(model, identities, targets, o);
        Run(model, adapter, identities, "Stage 1", "stage1", o.TotalIterations, o.Train, run, o.StatePath, o.StateEvery, o.Monitor, log, parallel, AllFactors(adapter), i =>
        {
            // position inside the schedule: while i < q_total: for bucket in buckets: for batch while i_cb < q_bucket
            long visit = i / o.BucketIterations;
            bool warmup = i % o.BucketIterations < o.WarmupIterations;
            var (batch, ids) = Batches.Sample(identities, buckets[visit % buckets.Length], o.Train.BatchSize, o.Train.Seed, $"batch.{i}");
            return (batch, ids, new LoraBinding(adapter, ids, trainDown: !warmup, trainIdentity: true), warmup ? "warm-up" : "meta");
        });
        return adapter;
    }

    /// <summary>
    /// Stage 2 (Algorithm 2): D from Stage 1 stays frozen; a fresh identity (M kaiming, U zero) is trained on the
    /// augmented crops of one photo. Resumes from <see cref="Stage2Options.StatePath"/>. Returns the adapter
    /// with that single identity at index 0.
    /// </summary>
    public static LoraAdapter Stage2(FluxModel model, LoraAdapter metaDown, Identity person, Stage2Options o, Action<string> log)
    {
        var be = model.Backend;
        person.CheckFits(model.Config);
        if (metaDown.Mode != LoraMode.Meta) throw new InputException("--down", "Stage 2 needs a Meta-Down (lora_down) file from Stage 1, not a merged LoRA");
        var adapter = new LoraAdapter(be, model.Config, metaDown.Targets, LoraMode.Meta, metaDown.Rank1, o.Rank2,
            metaDown.Down.Select(d => new LoraParameter(d.Name, Clone(be, d.Value))).ToArray());
        adapter.AddIdentity(person.Name, o.Train.Seed);
        log($"Stage 2: '{person.Name}', {person.Examples.Count} images, D frozen (r1 {adapter.Rank1}), fresh M/U (r2 {o.Rank2}), {o.Iterations} iterations");

        var run = RunIdentity.Stage2(model, person, metaDown, o);
        Run(model, adapter, [person], "Stage 2", "stage2", o.Iterations, o.Train, run, o.StatePath, o.StateEvery, o.Monitor, log, null, [.. adapter.Identities[0].Parameters()], i =>
        {
            var (batch, ids) = Batches.Sample([person], [0], o.Train.BatchSize, o.Train.Seed, $"stage2.batch.{i}");
            return (batch, ids, new LoraBinding(adapter, ids, trainDown: false, trainIdentity: true), "person");
        });
        return adapter;
    }

    /// <summary>
    /// The loop all three trainers share (Stage 1, Stage 2, the standard LoRA): resume from the state file when it
    /// exists and belongs to this <paramref name="run"/>, decide recomputation once for the largest batch, then per
    /// iteration pick (batch, ids, binding, phase), step under the numeric guard, report it (the monitor, else one
    /// log line; a device step is judged and reported during the next one, or at the flush before a save) and save the state every <paramref name="stateEvery"/> iterations and at the end (after checking the
    /// factors are finite). With <paramref name="parallel"/> every rank reads the state, steps through it, checks that
    /// the replicas agree before each save, and only rank 0 saves.
    /// </summary>
    static void Run(FluxModel model, LoraAdapter adapter, IReadOnlyList<Identity> identities, string stage, string stateName, long total, TrainOptions train,
                    RunIdentity run, string? statePath, int stateEvery, TrainingMonitor? monitor, Action<string> log, Stage1Parallel? parallel,
                    IReadOnlyList<LoraParameter> trained, Func<long, (Example[] Batch, int[] Ids, LoraBinding Binding, string Phase)> pick)
    {
        var (start, skipped) = run.Open(statePath, adapter, stateName, train.ForceNew, log);
        if (start > 0) log($"resumed {stage} from {statePath} at iteration {start}");
        var guard = new NonFiniteGuard(train.OnNonFinite, train.MaxNonFiniteSkips, stage, statePath, start > 0, skipped);
        var examples = identities.SelectMany(id => id.Examples).ToArray();
        bool recompute = train.Recompute.Decide(model, train.BatchSize, examples.Max(e => e.ImageTokens), examples.Max(e => e.T5Length), out var reason);
        log(reason);
        parallel?.CheckReplicas(adapter, start);

        monitor?.Begin(model, adapter, train, start);
        var progress = new Trainer.Progress(total);
        // One rank steps on the device (StepPipeline: a step is reported during the next one, or at the flush before
        // a save); data-parallel ranks all-reduce their gradients on the host path.
        using var pipeline = parallel == null ? new StepPipeline(model.Backend, FlatParameters.Create(model.Backend, trained)) : null;
        using var _flat = pipeline?.Flat;
        var queued = new Dictionary<long, (double Ms, long Tokens, string Phase)>();
        void Report(CompletedStep d)
        {
            var (ms, tokens, phase) = queued[d.Step];
            queued.Remove(d.Step);
            var report = progress.Report(d.Step + 1, d.Loss, d.GradNorm, train.LearningRate, ms, tokens, phase);
            if (monitor != null) monitor.Step(report, guard.LastSkipped);
            else log(report + (guard.LastSkipped ? " | skipped (non-finite)" : ""));
        }
        for (long i = start; i < total; i++)
        {
            var (batch, ids, binding, phase) = pick(i);
            var clock = Stopwatch.StartNew();
            long tokens = batch.Sum(e => (long)e.ImageTokens + e.T5Length);
            if (pipeline != null)
            {
                pipeline.Step(model, binding, batch, train, i, recompute, guard, Report);
                queued[i] = (clock.Elapsed.TotalMilliseconds, tokens, phase);
            }
            else
            {
                var (loss, norm) = parallel!.Step(model, binding, batch, ids, train, i, recompute, guard);
                queued[i] = (clock.Elapsed.TotalMilliseconds, tokens, phase);
                Report(new CompletedStep(i, loss, norm, !guard.LastSkipped));
            }
            if (i == start && model.Blocks.TakeOverlap() is { } overlap) log($"first step: {overlap}");
            if ((i + 1) % stateEvery != 0 && i + 1 != total) continue;
            if (pipeline?.Flush(guard) is { } last) Report(last);
            guard.CheckFactors(adapter, i + 1);
            parallel?.CheckReplicas(adapter, i + 1);
            if (statePath == null || !(parallel?.WritesOutputs ?? true)) continue;
            TrainingState.Save(statePath, adapter, i + 1, stateName, run, guard.Skipped);
            guard.Saved();
            monitor?.StateSaved(i + 1);
        }
    }

    /// <summary>Every factor of the adapter, in the training state's order (D, then each identity's M and U).</summary>
    static LoraParameter[] AllFactors(LoraAdapter a) => [.. a.Down, .. a.Identities.SelectMany(i => i.Parameters())];

    static Tensor Clone(IBackend be, Tensor t)
    {
        var c = be.Zeros(t.Shape, Precision.Master);
        be.Copy(t, c);
        return c;
    }
}
