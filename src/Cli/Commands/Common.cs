using System.CommandLine;
using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Planning;
using MetaLoraNative.Engine.Training;

namespace MetaLoraNative.Cli.Commands;

/// <summary>Options and helpers shared by several commands.</summary>
internal static class Common
{
    public static Option<string> Device() => new Option<string>("--device")
    {
        Description = "Where the transformer runs: 'auto' (CUDA when a usable GPU is found, else the CPU; the choice is logged), " +
                      "'cpu' (the C# reference engine, fp32) or 'cuda' (the GPU engine, bf16 with fp32 masters).",
        DefaultValueFactory = _ => Backends.Auto,
    }.AcceptOnlyFromAmong(Backends.Auto, "cpu", "cuda");

    /// <summary>--recompute auto|on|off (train stage1|stage2, bench); read it with <see cref="RecomputePolicy.Parse"/>.</summary>
    public static Option<string> Recompute() => new Option<string>("--recompute")
    {
        Description = "Per-block recomputation in the backward (less memory, one more forward per block): auto (only when the " +
                      "activations would not fit in free GPU memory; never on the CPU), on, off.",
        DefaultValueFactory = _ => RecomputePolicy.Auto.Name,
    }.AcceptOnlyFromAmong([.. RecomputePolicy.All.Select(p => p.Name)]);

    public static IBackend CreateBackend(string device, bool fp64 = false) => Backends.Create(device, fp64);

    /// <summary>--no-memory-check, valid on every command: skips <see cref="CheckHostMemory"/>.</summary>
    public static readonly Option<bool> NoMemoryCheck = new("--no-memory-check")
    {
        Description = "Build a model on the CPU even when the memory planner predicts it will not fit in the available RAM.",
        Recursive = true,
    };

    /// <summary>
    /// Before a command builds <paramref name="model"/> (a checkpoint or random:PRESET:SEED) on a CPU backend: refuses
    /// the run when its predicted need exceeds MemAvailable (<see cref="HostMemory.Check"/>), as bad input on
    /// <paramref name="flag"/> naming the preset to use instead. Nothing to do on a GPU, where the memory planner and
    /// the allocator's cap decide, or with --no-memory-check.
    /// </summary>
    public static void CheckHostMemory(ParseResult r, IBackend be, string model, (int Image, int Text) tokens, bool training = true,
                                       string flag = "--model", bool recompute = false)
    {
        if (r.GetValue(NoMemoryCheck) || MemoryModel.For(be) is not { } memory || HostMemory.Available() is not long available) return;
        Func<string, string> instead = flag == "--preset" ? p => $"--preset {p}" : p => $"{flag} random:{p}:1";
        HostMemory.Check(FluxLoader.Inspect(model), memory, tokens.Image, tokens.Text, training, available, flag, instead, recompute);
    }

    /// <summary>The largest image and text token counts of a dataset's examples: the step the memory check sizes.</summary>
    public static (int Image, int Text) Tokens(IEnumerable<Engine.Training.Example> examples) =>
        examples.Aggregate((Image: 0, Text: 0), (t, e) => (Math.Max(t.Image, e.ImageTokens), Math.Max(t.Text, e.T5Length)));

    // Flag checks, run by the parser before any work: a failing value is one `error: --flag: ...` line and exit 2.
    // Each returns its option so a declaration reads `new Option<int>("--rank1") {...}.AtLeast(1)`.

    /// <summary>Adds a check to an option: <paramref name="ok"/> must hold for its value (given or default).</summary>
    public static Option<T> Require<T>(this Option<T> option, Func<T, bool> ok, string rule)
    {
        option.Validators.Add(result =>
        {
            T value;
            try { value = result.GetValueOrDefault<T>(); }
            catch (InvalidOperationException) { return; }          // not a T at all: the parser reports that itself
            if (!ok(value)) result.AddError($"{option.Name}: must be {rule}, got {Format(value)}");
        });
        return option;
    }

    public static Option<int> AtLeast(this Option<int> o, int min) => o.Require(v => v >= min, $"at least {min}");
    public static Option<int?> AtLeast(this Option<int?> o, int min) => o.Require(v => v is null || v >= min, $"at least {min}");
    public static Option<int> PositiveMultipleOf(this Option<int> o, int m) => o.Require(v => v >= m && v % m == 0, $"a positive multiple of {m}");
    public static Option<float> Finite(this Option<float> o) => o.Require(float.IsFinite, "a finite number");
    public static Option<float> FinitePositive(this Option<float> o) => o.Require(v => float.IsFinite(v) && v > 0, "a finite number > 0");
    public static Option<float> FiniteNonNegative(this Option<float> o) => o.Require(v => float.IsFinite(v) && v >= 0, "a finite number ≥ 0");

    /// <summary>A model preset name (flux-dev, flux-schnell, tiny, micro).</summary>
    public static Option<string> PresetName(this Option<string> o) =>
        o.Require(v => FluxConfig.Presets.Any(p => p.Name == v), $"a preset ({string.Join(", ", FluxConfig.Presets.Select(p => p.Name))})");

    /// <summary>
    /// --include/--exclude: each filter must match some LoRA target (by kind or name) of the largest model, flux-dev,
    /// so a typo is an error naming the filter and some valid kinds instead of a run that trains nothing.
    /// </summary>
    public static Option<string[]> TargetFilter(this Option<string[]> option)
    {
        option.Validators.Add(result =>
        {
            var filters = result.GetValueOrDefault<string[]>() ?? [];
            if (filters.Length == 0) return;                 // nothing to check: no need to build the target list
            var targets = FluxNames.LoraTargets(FluxConfig.Preset("flux-dev"));
            foreach (var filter in filters)
                if (targets.All(t => t.Kind != filter && !t.Name.Contains(filter, StringComparison.Ordinal)))
                    result.AddError($"{option.Name}: '{filter}' matches no LoRA target; kinds are " +
                                    $"{string.Join(", ", targets.Select(t => t.Kind).Distinct().Take(8))}, ... or a part of a target name");
        });
        return option;
    }

    static string Format<T>(T value) => value switch
    {
        null => "nothing",
        IFormattable f => f.ToString(null, System.Globalization.CultureInfo.InvariantCulture),
        _ => value.ToString() ?? "",
    };

    public static void Log(string line) => Console.WriteLine(line);
}
