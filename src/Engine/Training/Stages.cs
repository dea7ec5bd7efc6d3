using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
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
    /// <summary>Resumable state is written here every <see cref="CheckpointEvery"/> iterations (and at the end).</summary>
    public string? CheckpointPath { get; init; }
    public int CheckpointEvery { get; init; } = 250;
    public IReadOnlyCollection<string>? Include { get; init; }
    public IReadOnlyCollection<string>? Exclude { get; init; }
}

/// <summary>Algorithm 2's settings: D frozen, one fresh identity, bs 1, 375 iterations.</summary>
public sealed record Stage2Options
{
    public TrainOptions Train { get; init; } = new() { BatchSize = 1 };
    public int Iterations { get; init; } = 375;
    public int Rank2 { get; init; } = 1;
    public string? CheckpointPath { get; init; }
    public int CheckpointEvery { get; init; } = 125;
}

/// <summary>The two training stages of Meta-LoRA, on cached latents and text embeddings.</summary>
public static class Stages
{
    /// <summary>
    /// Stage 1 (Algorithm 1): identities are grouped into buckets; each bucket visit runs q_bucket iterations whose first
    /// q_warmup update only that bucket's M/U, the rest D too. Every identity keeps its M/U and optimiser state across
    /// visits. Resumes from <see cref="Stage1Options.CheckpointPath"/> when it exists. Returns the adapter (D + bank).
    /// </summary>
    public static LoraAdapter Stage1(FluxModel model, IReadOnlyList<Identity> identities, Stage1Options o, Action<string> log)
    {
        var be = model.Backend;
        if (identities.Count == 0) throw new ArgumentException("Stage 1 needs at least one identity");
        foreach (var id in identities)
        {
            if (id.Examples.Count == 0) throw new InvalidDataException($"identity '{id.Name}' has no examples");
            foreach (var e in id.Examples) e.CheckFits(model.Config, id.Name);
        }
        var targets = FluxNames.LoraTargets(model.Config, o.Include, o.Exclude);
        var adapter = LoraAdapter.Create(be, model.Config, targets, LoraMode.Meta, o.Rank1, o.Rank2, o.Train.Seed);
        foreach (var id in identities) adapter.AddIdentity(id.Name, o.Train.Seed);
        var buckets = identities.Select((id, i) => i).Chunk(Math.Max(1, o.IdentitiesPerBucket)).ToArray();

        long start = 0;
        if (o.CheckpointPath != null && File.Exists(o.CheckpointPath))
        {
            start = Checkpoint.Restore(o.CheckpointPath, adapter);
            log($"resumed Stage 1 from {o.CheckpointPath} at iteration {start}");
        }
        log($"Stage 1: {targets.Count} targets, r1 {o.Rank1}, r2 {o.Rank2}, {identities.Count} identities in {buckets.Length} buckets, " +
            $"{o.TotalIterations} iterations ({o.BucketIterations} per bucket, {o.WarmupIterations} warm-up)");

        var progress = new Trainer.Progress(o.TotalIterations, start);
        for (long i = start; i < o.TotalIterations; i++)
        {
            // position inside the schedule: while i < q_total: for bucket in buckets: for batch while i_cb < q_bucket
            long visit = i / o.BucketIterations;
            int inBucket = (int)(i % o.BucketIterations);
            var bucket = buckets[visit % buckets.Length];
            bool warmup = inBucket < o.WarmupIterations;
            var (batch, ids) = SampleBatch(identities, bucket, o.Train.BatchSize, o.Train.Seed, i);

            var binding = new LoraBinding(adapter, ids, trainDown: !warmup, trainIdentity: true);
            var clock = Stopwatch.StartNew();
            var (loss, norm) = Trainer.Step(model, binding, batch, o.Train, i);
            log(progress.Report(i + 1, loss, norm, o.Train.LearningRate, clock.Elapsed.TotalMilliseconds,
                                batch.Sum(e => (long)e.ImageTokens + e.TxtLength), warmup ? "warm-up" : "meta").ToString());

            if (o.CheckpointPath != null && ((i + 1) % o.CheckpointEvery == 0 || i + 1 == o.TotalIterations))
                Checkpoint.Save(o.CheckpointPath, adapter, i + 1, "stage1");
        }
        return adapter;
    }

    /// <summary>
    /// bs examples from the bucket's identities, all of one image size (the first pick fixes it), deterministic in
    /// (seed, iteration). Returns the examples and each one's identity index.
    /// </summary>
    static (Example[] Batch, int[] Ids) SampleBatch(IReadOnlyList<Identity> identities, int[] bucket, int bs, ulong seed, long iteration)
    {
        var u = new float[4 * bs + 1];
        RandomWeights.Uniform($"batch.{iteration}", seed, 0, u);
        int Pick(float v, int n) => Math.Min(n - 1, (int)((v + 1f) / 2f * n));
        var pool = bucket.SelectMany(id => identities[id].Examples.Select(e => (Id: id, Example: e))).ToArray();
        var first = pool[Pick(u[0], pool.Length)];
        var same = pool.Where(p => p.Example.GridH == first.Example.GridH && p.Example.GridW == first.Example.GridW
                                   && p.Example.TxtLength == first.Example.TxtLength).ToArray();
        var picks = new List<(int Id, Example Example)> { first };
        for (int b = 1; b < bs; b++) picks.Add(same[Pick(u[b], same.Length)]);
        // group samples of one identity together so the LoRA runs as few GEMMs as possible
        picks.Sort((x, y) => x.Id.CompareTo(y.Id));
        return (picks.Select(p => p.Example).ToArray(), picks.Select(p => p.Id).ToArray());
    }

    /// <summary>
    /// Stage 2 (Algorithm 2): D from Stage 1 stays frozen; a fresh identity (M kaiming, U zero) is trained on the
    /// augmented crops of one photo. Resumes from <see cref="Stage2Options.CheckpointPath"/>. Returns the adapter
    /// with that single identity at index 0.
    /// </summary>
    public static LoraAdapter Stage2(FluxModel model, LoraAdapter metaDown, Identity person, Stage2Options o, Action<string> log)
    {
        var be = model.Backend;
        if (person.Examples.Count == 0) throw new InvalidDataException($"identity '{person.Name}' has no examples");
        foreach (var e in person.Examples) e.CheckFits(model.Config, person.Name);
        if (metaDown.Mode != LoraMode.Meta) throw new ArgumentException("Stage 2 needs a Meta-Down (lora_down) file from Stage 1, not a merged LoRA");
        var adapter = new LoraAdapter(be, model.Config, metaDown.Targets, LoraMode.Meta, metaDown.Rank1, o.Rank2,
            metaDown.Down.Select(d => new LoraParameter(d.Name, Clone(be, d.Value))).ToArray());
        adapter.AddIdentity(person.Name, o.Train.Seed);
        long start = 0;
        if (o.CheckpointPath != null && File.Exists(o.CheckpointPath))
        {
            start = Checkpoint.Restore(o.CheckpointPath, adapter);
            log($"resumed Stage 2 from {o.CheckpointPath} at iteration {start}");
        }
        log($"Stage 2: '{person.Name}', {person.Examples.Count} images, D frozen (r1 {adapter.Rank1}), fresh M/U (r2 {o.Rank2}), {o.Iterations} iterations");
        var progress = new Trainer.Progress(o.Iterations, start);
        for (long i = start; i < o.Iterations; i++)
        {
            var u = new float[o.Train.BatchSize];
            RandomWeights.Uniform($"stage2.batch.{i}", o.Train.Seed, 0, u);
            var first = person.Examples[Math.Min(person.Examples.Count - 1, (int)((u[0] + 1f) / 2f * person.Examples.Count))];
            var same = person.Examples.Where(e => e.GridH == first.GridH && e.GridW == first.GridW && e.TxtLength == first.TxtLength).ToArray();
            var batch = u.Select((v, b) => b == 0 ? first : same[Math.Min(same.Length - 1, (int)((v + 1f) / 2f * same.Length))]).ToArray();
            var binding = new LoraBinding(adapter, new int[batch.Length], trainDown: false, trainIdentity: true);
            var clock = Stopwatch.StartNew();
            var (loss, norm) = Trainer.Step(model, binding, batch, o.Train, i);
            log(progress.Report(i + 1, loss, norm, o.Train.LearningRate, clock.Elapsed.TotalMilliseconds,
                                batch.Sum(e => (long)e.ImageTokens + e.TxtLength), "person").ToString());
            if (o.CheckpointPath != null && ((i + 1) % o.CheckpointEvery == 0 || i + 1 == o.Iterations))
                Checkpoint.Save(o.CheckpointPath, adapter, i + 1, "stage2");
        }
        return adapter;
    }

    static Tensor Clone(IBackend be, Tensor t)
    {
        var c = be.Zeros(t.Shape, Precision.Master);
        be.Copy(t, c);
        return c;
    }
}

/// <summary>
/// Resumable training state in one safetensors file: every factor, its AdamW moments ("adam.m.KEY", "adam.v.KEY"),
/// per-tensor step counts and the iteration, in metadata. Randomness is a function of (seed, iteration), so a
/// resumed run continues exactly where the interrupted one would have. Written atomically.
/// </summary>
public static class Checkpoint
{
    static IEnumerable<(string Key, LoraParameter P)> All(LoraAdapter a)
    {
        for (int t = 0; t < a.Down.Length; t++) yield return (a.Down[t].Name, a.Down[t]);
        for (int i = 0; i < a.Identities.Count; i++)
            foreach (var p in a.Identities[i].Parameters()) yield return ($"identity.{i}.{p.Name}", p);
    }

    public static void Save(string path, LoraAdapter a, long iteration, string stage)
    {
        var be = a.Backend;
        var tensors = new List<SafetensorsTensor>();
        var steps = new Dictionary<string, int>();
        foreach (var (key, p) in All(a))
        {
            tensors.Add(new(key, p.Shape, be.Download(p.Value)));
            if (p.Moment1 != null && p.Moment2 != null)
            {
                tensors.Add(new("adam.m." + key, p.Shape, be.Download(p.Moment1)));
                tensors.Add(new("adam.v." + key, p.Shape, be.Download(p.Moment2)));
                steps[key] = p.Step;
            }
        }
        var meta = new Dictionary<string, string>
        {
            ["metalora.checkpoint"] = stage,
            ["metalora.iteration"] = iteration.ToString(CultureInfo.InvariantCulture),
            ["metalora.identities"] = string.Join("\n", a.Identities.Select(i => i.Name)),
            ["metalora.adam_steps"] = JsonSerializer.Serialize(steps, CheckpointJson.Default.DictionaryStringInt32),
        };
        SafetensorsWriter.Write(path, tensors, meta);
    }

    /// <summary>Loads values and optimiser state into an adapter of the same layout; returns the iteration to continue from.</summary>
    public static long Restore(string path, LoraAdapter a)
    {
        using var f = SafetensorsFile.Open(path);
        if (!f.Metadata.TryGetValue("metalora.iteration", out var it) || !f.Metadata.TryGetValue("metalora.adam_steps", out var stepsJson))
            throw new InvalidDataException($"{path}: not a metalora training checkpoint (metadata is missing)");
        var names = f.Metadata.GetValueOrDefault("metalora.identities", "").Split('\n', StringSplitOptions.RemoveEmptyEntries);
        if (names.Length != a.Identities.Count || !names.SequenceEqual(a.Identities.Select(i => i.Name)))
            throw new InvalidDataException($"{path}: the checkpoint's identities ({names.Length}) differ from this run's ({a.Identities.Count}); resume with the same data");
        var steps = JsonSerializer.Deserialize(stepsJson, CheckpointJson.Default.DictionaryStringInt32) ?? [];
        var be = a.Backend;
        foreach (var (key, p) in All(a))
        {
            if (!f.Contains(key)) throw new InvalidDataException($"{path}: tensor '{key}' is missing");
            if (!f[key].Shape.AsSpan().SequenceEqual(p.Shape))
                throw new InvalidDataException($"{path}: '{key}' has shape {Shapes.Format(f[key].Shape)}, this run has {Shapes.Format(p.Shape)}");
            using (var v = be.Upload(f.ReadFloats(key), p.Shape, Precision.Master)) be.Copy(v, p.Value);
            if (steps.TryGetValue(key, out int s))
                p.SetMoments(f.ReadFloats("adam.m." + key), f.ReadFloats("adam.v." + key), s);
        }
        return long.Parse(it, CultureInfo.InvariantCulture);
    }
}

/// <summary>Source-generated JSON for checkpoint metadata (the CLI is published trimmed).</summary>
[System.Text.Json.Serialization.JsonSerializable(typeof(Dictionary<string, int>))]
internal sealed partial class CheckpointJson : System.Text.Json.Serialization.JsonSerializerContext;
