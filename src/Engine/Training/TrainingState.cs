using System.Globalization;
using System.Text.Json;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Lora;

namespace MetaLoraNative.Engine.Training;

/// <summary>
/// Resumable training state in one safetensors file (a run's "state", never a model checkpoint): every factor, its
/// AdamW moments ("adam.m.KEY", "adam.v.KEY"), and in metadata the stage, the iteration, the identities and the
/// per-tensor step counts. Randomness is a function of (seed, iteration), so a resumed run continues exactly where the
/// interrupted one would have. Written atomically.
/// </summary>
public static class TrainingState
{
    /// <summary>Metadata key of the stage ("stage1", "stage2"); files written before the rename carry <see cref="OldStageKey"/>.</summary>
    public const string StageKey = "metalora.state";
    public const string OldStageKey = "metalora.checkpoint";
    /// <summary>The iteration a state was saved at (the queue reads it to say where a person resumes).</summary>
    public const string IterationKey = "metalora.iteration";
    const string IdentitiesKey = "metalora.identities", StepsKey = "metalora.adam_steps";

    static IEnumerable<(string Key, LoraParameter P)> All(LoraAdapter a)
    {
        for (int t = 0; t < a.Down.Length; t++) yield return (a.Down[t].Name, a.Down[t]);
        for (int i = 0; i < a.Identities.Count; i++)
            foreach (var p in a.Identities[i].Parameters()) yield return ($"identity.{i}.{p.Name}", p);
    }

    /// <summary>Metadata key of the non-finite steps a run skipped so far (<see cref="NonFiniteGuard"/>).</summary>
    public const string SkippedKey = "metalora.nonfinite_skips";

    /// <summary>Writes the state; <paramref name="run"/> records the options that define the run (<see cref="RunIdentity"/>).</summary>
    public static void Save(string path, LoraAdapter a, long iteration, string stage, RunIdentity? run = null, int skipped = 0)
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
            [StageKey] = stage,
            [IterationKey] = iteration.ToString(CultureInfo.InvariantCulture),
            [IdentitiesKey] = string.Join("\n", a.Identities.Select(i => i.Name)),
            [StepsKey] = JsonSerializer.Serialize(steps, TrainingStateJson.Default.DictionaryStringInt32),
        };
        if (run != null)
        {
            meta[RunIdentity.MetadataKey] = run.ToJson();
            meta[SkippedKey] = skipped.ToString(CultureInfo.InvariantCulture);
        }
        SafetensorsWriter.Write(path, tensors, meta);
    }

    /// <summary>
    /// Loads values and optimiser state into an adapter of the same layout; returns the iteration to continue from.
    /// The file must be the state of <paramref name="stage"/> with this run's identities.
    /// </summary>
    public static long Restore(string path, LoraAdapter a, string stage)
    {
        using var f = SafetensorsFile.Open(path);
        if (!f.Metadata.TryGetValue(IterationKey, out var it) || !f.Metadata.TryGetValue(StepsKey, out var stepsJson))
            throw new InputFileException(path, $"not a metalora training state file (metadata is missing)");
        CheckStage(f, path, stage);
        var names = f.Metadata.GetValueOrDefault(IdentitiesKey, "").Split('\n', StringSplitOptions.RemoveEmptyEntries);
        if (names.Length != a.Identities.Count || !names.SequenceEqual(a.Identities.Select(i => i.Name)))
            throw new InputFileException(path, $"the state's identities ({names.Length}) differ from this run's ({a.Identities.Count}); resume with the same data");
        // Metadata is checked for type and range before anything is restored.
        if (!long.TryParse(it, NumberStyles.None, CultureInfo.InvariantCulture, out long iteration))
            throw new InputFileException(path, $"metadata '{IterationKey}' is '{it}', expected a whole number ≥ 0");
        Dictionary<string, int> steps;
        try { steps = JsonSerializer.Deserialize(stepsJson, TrainingStateJson.Default.DictionaryStringInt32) ?? []; }
        catch (JsonException e) { throw new InputFileException(path, $"metadata '{StepsKey}' is not a JSON object of step counts ({e.Message})"); }
        if (steps.FirstOrDefault(kv => kv.Value < 0) is { Key: not null } negative)
            throw new InputFileException(path, $"metadata '{StepsKey}' gives '{negative.Key}' {negative.Value} steps, expected ≥ 0");
        var be = a.Backend;
        foreach (var (key, p) in All(a))
        {
            if (!f.Contains(key)) throw new InputFileException(path, $"tensor '{key}' is missing");
            if (!f[key].Shape.AsSpan().SequenceEqual(p.Shape))
                throw new InputFileException(path, $"'{key}' has shape {Shapes.Format(f[key].Shape)}, this run has {Shapes.Format(p.Shape)}");
            using (var v = be.Upload(f.ReadFloats(key), p.Shape, Precision.Master)) be.Copy(v, p.Value);
            if (steps.TryGetValue(key, out int s))
            {
                foreach (var moment in new[] { "adam.m." + key, "adam.v." + key })
                    if (!f.Contains(moment) || !f[moment].Shape.AsSpan().SequenceEqual(p.Shape))
                        throw new InputFileException(path, $"'{moment}' is {(f.Contains(moment) ? $"of shape {Shapes.Format(f[moment].Shape)}" : "missing")}, " +
                                                       $"expected {Shapes.Format(p.Shape)} as '{key}' has AdamW steps");
                // AdamW's second moment is a running mean of squares: a negative one is corruption (its root would be NaN; non-finite
                // values are the numeric guard's to report once the state is restored).
                var m2 = f.ReadFloats("adam.v." + key);
                if (Array.FindIndex(m2, x => x < 0) is int neg and >= 0)
                    throw new InputFileException(path, $"tensor 'adam.v.{key}' holds a negative second moment ({m2[neg]} at element {neg})");
                p.SetMoments(f.ReadFloats("adam.m." + key), m2, s);
            }
        }
        return iteration;
    }

    /// <summary>The run record of a state file and its skipped non-finite steps; (null, 0) for states written before runs were recorded.</summary>
    public static (IReadOnlyDictionary<string, string>? Run, int Skipped) ReadRun(string path, string stage)
    {
        using var f = SafetensorsFile.Open(path);
        CheckStage(f, path, stage);
        if (!f.Metadata.TryGetValue(RunIdentity.MetadataKey, out var json)) return (null, 0);
        int skipped = f.Metadata.TryGetValue(SkippedKey, out var s) && int.TryParse(s, CultureInfo.InvariantCulture, out int n) && n >= 0 ? n
            : throw new InputException(path, $"metadata '{SkippedKey}' is missing or not a count");
        return (RunIdentity.ParseJson(json, path), skipped);
    }

    static void CheckStage(SafetensorsFile f, string path, string stage)
    {
        if (!(f.Metadata.TryGetValue(StageKey, out var saved) || f.Metadata.TryGetValue(OldStageKey, out saved)))
            throw new InputFileException(path, $"not a metalora training state file (metadata is missing)");
        if (saved != stage)
            throw new InputFileException(path, $"holds the state of {saved}, this run is {stage}; pass another --state");
    }
}

/// <summary>Source-generated JSON for training-state metadata (the CLI is published trimmed).</summary>
[System.Text.Json.Serialization.JsonSerializable(typeof(Dictionary<string, int>))]
[System.Text.Json.Serialization.JsonSerializable(typeof(Dictionary<string, string>))]
internal sealed partial class TrainingStateJson : System.Text.Json.Serialization.JsonSerializerContext;
