using System.Globalization;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Quantization;

namespace MetaLoraNative.Engine.Training;

/// <summary>
/// The options that define a training run, as the state file records them ("metalora.run", a JSON object of
/// name → value): seed, learning rate, weight decay, clip, ranks, targets (hash of the target list), iterations,
/// batch size, the Stage-1 bucket settings, timestep sampling, guidance, and fingerprints of the data (identity
/// names, shapes and contents), the model (preset name and a hash of every tensor's name and shape), its base dtype
/// (bf16 or fp8) and, in Stage 2, the frozen Meta-Down (hash of its values). A state is resumed only by a run with the same record;
/// options that change how, not what, a run trains (--state-every, --recompute, --device) are not part of it.
/// </summary>
public sealed class RunIdentity
{
    /// <summary>Metadata key of the record in the state file.</summary>
    public const string MetadataKey = "metalora.run";

    readonly SortedDictionary<string, string> options;

    RunIdentity(SortedDictionary<string, string> options) => this.options = options;

    public IReadOnlyDictionary<string, string> Options => options;

    public static RunIdentity Stage1(FluxModel model, IReadOnlyList<Identity> identities, IReadOnlyList<LoraTarget> targets, Stage1Options o)
    {
        var d = Common(model, identities, targets, o.Train);
        d["iterations"] = Text(o.TotalIterations);
        d["bucket_iterations"] = Text(o.BucketIterations);
        d["warmup_iterations"] = Text(o.WarmupIterations);
        d["identities_per_bucket"] = Text(o.IdentitiesPerBucket);
        d["rank1"] = Text(o.Rank1);
        d["rank2"] = Text(o.Rank2);
        return new RunIdentity(d);
    }

    public static RunIdentity Stage2(FluxModel model, Identity person, LoraAdapter metaDown, Stage2Options o)
    {
        var d = Common(model, [person], metaDown.Targets, o.Train);
        d["iterations"] = Text(o.Iterations);
        d["rank1"] = Text(metaDown.Rank1);
        d["rank2"] = Text(o.Rank2);
        using (var h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256))
        {
            foreach (var p in metaDown.Down) { Add(h, p.Name); Add(h, metaDown.Backend.Download(p.Value)); }
            d["down"] = Hex(h);
        }
        return new RunIdentity(d);
    }

    public static RunIdentity StandardLora(FluxModel model, Identity person, IReadOnlyList<LoraTarget> targets, StandardLoraOptions o)
    {
        var d = Common(model, [person], targets, o.Train);
        d["iterations"] = Text(o.Iterations);
        d["rank"] = Text(o.Rank);
        return new RunIdentity(d);
    }

    static SortedDictionary<string, string> Common(FluxModel model, IReadOnlyList<Identity> identities, IReadOnlyList<LoraTarget> targets, TrainOptions t)
    {
        var d = new SortedDictionary<string, string>(StringComparer.Ordinal)
        {
            ["seed"] = Text(t.Seed), ["lr"] = Text(t.LearningRate), ["weight_decay"] = Text(t.WeightDecay),
            ["max_grad_norm"] = Text(t.MaxGradNorm), ["batch_size"] = Text(t.BatchSize),
            ["timesteps"] = t.Sampling.ToString().ToLowerInvariant(), ["guidance"] = Text(t.Guidance),
            ["base_dtype"] = BaseDTypes.Name(model.BaseDType),    // fp8 rounds the frozen base: another model to train against
        };
        // W8A8 forward products round the activations too: recorded only when on, so earlier states match W8A16 runs
        if (model.Fp8Matmul) d["fp8_matmul"] = "w8a8";
        using (var h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256))
        {
            foreach (var target in targets) Add(h, target.Name);
            d["targets"] = $"{targets.Count} targets, {Hex(h)}";
        }
        using (var h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256))
        {
            foreach (var (name, shape) in model.Config.TensorShapes()) Add(h, $"{name} {Shapes.Format(shape)}");
            d["model"] = $"{model.Config.Name}, {Hex(h)}";
        }
        // the data as loaded: cheap next to the loading itself, and the same wherever the folder was copied
        using (var h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256))
        {
            foreach (var id in identities)
            {
                Add(h, id.Name);
                foreach (var e in id.Examples)
                {
                    Add(h, $"{e.GridH}x{e.GridW} {e.T5Length}");
                    Add(h, e.PackedLatents); Add(h, e.T5); Add(h, e.Pooled);
                }
            }
            d["data"] = $"{identities.Count} identities, {identities.Sum(i => i.Examples.Count)} examples, {Hex(h)}";
        }
        return d;
    }

    /// <summary>
    /// "name: state X, now Y" for every option that differs from a saved record. More iterations than the state's
    /// run is not a difference: it extends the same run (the learning rate is constant, so the steps already taken are
    /// exactly those of the longer run). Fewer is, since the state may already be past the new end.
    /// </summary>
    public IReadOnlyList<string> Differences(IReadOnlyDictionary<string, string> saved) =>
        [.. options.Keys.Union(saved.Keys).Order(StringComparer.Ordinal)
            .Where(k => saved.GetValueOrDefault(k) != options.GetValueOrDefault(k) && !Extends(k, saved.GetValueOrDefault(k), options.GetValueOrDefault(k)))
            .Select(k => $"{k}: state {saved.GetValueOrDefault(k) ?? "(none)"}, now {options.GetValueOrDefault(k) ?? "(none)"}")];

    static bool Extends(string key, string? saved, string? now) =>
        key == "base_dtype" && saved == null && now == BaseDTypes.Name(BaseDType.Bf16)    // states from before the field trained on bf16
        || key == "iterations" && long.TryParse(saved, CultureInfo.InvariantCulture, out long before)
                            && long.TryParse(now, CultureInfo.InvariantCulture, out long after) && after > before;

    public string ToJson() => JsonSerializer.Serialize(new Dictionary<string, string>(options), TrainingStateJson.Default.DictionaryStringString);

    public static IReadOnlyDictionary<string, string> ParseJson(string json, string path)
    {
        try { return JsonSerializer.Deserialize(json, TrainingStateJson.Default.DictionaryStringString) ?? []; }
        catch (JsonException e) { throw new InputException(path, $"metadata '{MetadataKey}' is not a JSON object of strings ({e.Message})", e); }
    }

    /// <summary>
    /// Opens <paramref name="statePath"/> for this run: returns (0, 0) for a fresh start (no state, or
    /// <paramref name="forceNew"/>, which renames an existing state to STATE.old, replacing an earlier one), else
    /// checks that the state belongs to this run (<see cref="InputException"/> listing the differences; a state
    /// written before runs were recorded resumes with a warning), restores it into <paramref name="adapter"/> and
    /// returns the iteration to continue from and the non-finite steps skipped so far.
    /// </summary>
    public (long Start, int Skipped) Open(string? statePath, LoraAdapter adapter, string stage, bool forceNew, Action<string> log)
    {
        if (statePath == null || !File.Exists(statePath)) return (0, 0);
        if (forceNew)
        {
            File.Move(statePath, statePath + ".old", overwrite: true);
            log($"--force-new: starting over; the previous state was moved to {statePath}.old");
            return (0, 0);
        }
        var (saved, skipped) = TrainingState.ReadRun(statePath, stage);
        if (saved == null)
            log($"warning: {statePath} was written before runs were recorded; resuming without checking that its options match this run");
        else if (Differences(saved) is { Count: > 0 } diff)
            throw new InputException(statePath, $"the state belongs to another run ({string.Join("; ", diff)}); " +
                                                 "rerun with the same options, pass another --out/--state, or --force-new to start over");
        long start = TrainingState.Restore(statePath, adapter, stage);
        NonFiniteGuard.CheckRestored(adapter, statePath);
        return (start, skipped);
    }

    static string Text(float v) => v.ToString("R", CultureInfo.InvariantCulture);
    static string Text(long v) => v.ToString(CultureInfo.InvariantCulture);
    static string Text(ulong v) => v.ToString(CultureInfo.InvariantCulture);

    static void Add(IncrementalHash h, string s)
    {
        h.AppendData(Encoding.UTF8.GetBytes(s));
        h.AppendData([0]);
    }

    static void Add(IncrementalHash h, float[] v) => h.AppendData(MemoryMarshal.AsBytes(v.AsSpan()));

    static string Hex(IncrementalHash h) => "sha256:" + Convert.ToHexStringLower(h.GetHashAndReset())[..16];
}
