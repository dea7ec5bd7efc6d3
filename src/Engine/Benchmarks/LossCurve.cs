using System.Text;
using System.Text.Json;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Quantization;
using MetaLoraNative.Engine.Training;

namespace MetaLoraNative.Engine.Benchmarks;

/// <summary>
/// The adoption rule for an fp8 base (docs/PERF.md, "fp8 W8A8 forward products"): adopt a variant only where its
/// Stage-2 loss curve stays within the bf16 base's seed-to-seed spread. Runs N seeds of three variants on the same
/// data and the same base weights — bf16 base (W16A16), fp8 base (W8A16), fp8 base with W8A8 forward products — each
/// a Stage-2 run (D frozen from the data seed, M and U trained from the run's seed, which also draws the timesteps
/// and noise), and compares windowed means of the loss:
/// <list type="bullet">
/// <item>per run, the mean loss over consecutive windows of <see cref="Options.Window"/> steps;</item>
/// <item>per window, the bf16 spread: max − min of the bf16 runs' windowed means across seeds;</item>
/// <item>a variant stays within when, in every window, |its seed-mean − the bf16 seed-mean| ≤ that window's spread.
/// With one seed the spread is 0 and only an identical curve passes: the rule needs N ≥ 2.</item>
/// </list>
/// The steps are the host path's (<see cref="Trainer.Step"/>), batch 1, cycling over the examples.
/// </summary>
public static class LossCurve
{
    public sealed record Options
    {
        public FluxConfig Config { get; init; } = FluxConfig.Tiny;
        /// <summary>A checkpoint to train against instead of random weights of <see cref="Config"/>.</summary>
        public string? Weights { get; init; }
        public int Steps { get; init; } = 200;
        public int Window { get; init; } = 20;
        public int Seeds { get; init; } = 3;
        public int Examples { get; init; } = 4;
        /// <summary>Image side in latent-grid cells (16 px each: 64 for 1024²) and text tokens of the synthetic examples.</summary>
        public int Grid { get; init; } = 4;
        public int TextTokens { get; init; } = 8;
        public int Rank1 { get; init; } = 16;
        public int Rank2 { get; init; } = 1;
        public float LearningRate { get; init; } = 4e-4f;
        public bool Recompute { get; init; }
        /// <summary>Seeds the base weights (when random), the examples and the frozen D.</summary>
        public ulong DataSeed { get; init; }
        /// <summary>The first run seed; seed k is FirstSeed + k.</summary>
        public ulong FirstSeed { get; init; } = 1;
    }

    public static readonly (string Name, BaseDType Base, bool W8A8)[] Variants =
        [("bf16", BaseDType.Bf16, false), ("fp8", BaseDType.Fp8, false), ("fp8-w8a8", BaseDType.Fp8, true)];

    public sealed record Run(string Variant, ulong Seed, double[] Losses, double[] Windows);

    /// <param name="MaxDeviation">max over windows of |variant seed-mean − bf16 seed-mean|</param>
    /// <param name="WorstRatio">max over windows of that deviation / the window's bf16 spread (∞ where the spread is 0 and they differ)</param>
    public sealed record Verdict(string Variant, double[] SeedMeans, double MaxDeviation, double WorstRatio, bool Within);

    public sealed record Result(Options Options, IReadOnlyList<Run> Runs, double[] Bf16Means, double[] Bf16Spread, IReadOnlyList<Verdict> Verdicts);

    /// <summary>Mean of each consecutive window of <paramref name="window"/> values (the last one may be shorter).</summary>
    public static double[] Windowed(IReadOnlyList<double> losses, int window)
    {
        if (window < 1) throw new ArgumentOutOfRangeException(nameof(window), "a window holds at least one step");
        int n = (losses.Count + window - 1) / window;
        var w = new double[n];
        for (int i = 0; i < n; i++)
        {
            int a = i * window, b = Math.Min(losses.Count, a + window);
            double s = 0;
            for (int k = a; k < b; k++) s += losses[k];
            w[i] = s / (b - a);
        }
        return w;
    }

    /// <summary>The comparison, from the runs alone (pure: tested on made-up curves).</summary>
    public static Result Compare(Options o, IReadOnlyList<Run> runs)
    {
        double[][] Of(string v) => [.. runs.Where(r => r.Variant == v).Select(r => r.Windows)];
        var bf16 = Of("bf16");
        if (bf16.Length == 0) throw new ArgumentException("no bf16 runs to measure the spread with");
        int n = bf16[0].Length;
        double[] Mean(double[][] w) => [.. Enumerable.Range(0, n).Select(i => w.Average(x => x[i]))];
        var means = Mean(bf16);
        double[] spread = [.. Enumerable.Range(0, n).Select(i => bf16.Max(x => x[i]) - bf16.Min(x => x[i]))];
        var verdicts = new List<Verdict>();
        foreach (var (name, _, _) in Variants.Skip(1))
        {
            var w = Of(name);
            if (w.Length == 0) continue;
            var m = Mean(w);
            double dev = 0, ratio = 0;
            for (int i = 0; i < n; i++)
            {
                double d = Math.Abs(m[i] - means[i]);
                dev = Math.Max(dev, d);
                ratio = Math.Max(ratio, d == 0 ? 0 : spread[i] == 0 ? double.PositiveInfinity : d / spread[i]);
            }
            verdicts.Add(new Verdict(name, m, dev, ratio, ratio <= 1));
        }
        return new Result(o, runs, means, spread, verdicts);
    }

    public static Result Measure(IBackend be, Options o, Action<string> log)
    {
        if (o.Steps < 1 || o.Seeds < 1 || o.Examples < 1)
            throw new InputException("--steps", $"the loss curve needs at least one step, seed and example (steps {o.Steps}, seeds {o.Seeds}, examples {o.Examples})");
        var c = o.Weights != null ? FluxLoader.Inspect(o.Weights) : o.Config;
        var examples = Enumerable.Range(0, o.Examples).Select(e => new Example(
            RandomWeights.Normal($"curve.latents.{e}", o.DataSeed, o.Grid * o.Grid * c.InChannels), o.Grid, o.Grid,
            RandomWeights.Normal($"curve.t5.{e}", o.DataSeed, o.TextTokens * c.ContextInDim), o.TextTokens,
            RandomWeights.Normal($"curve.pooled.{e}", o.DataSeed, c.VecInDim))).ToArray();
        var runs = new List<Run>();
        foreach (var (name, dtype, w8a8) in Variants)
        {
            using var weights = o.Weights != null ? FluxLoader.Load(o.Weights, be, null, dtype) : FluxWeights.Random(c, be, o.DataSeed, dtype);
            var model = new FluxModel(weights, fp8Matmul: w8a8);
            for (int k = 0; k < o.Seeds; k++)
            {
                ulong seed = o.FirstSeed + (ulong)k;
                using var adapter = LoraAdapter.Create(be, c, FluxNames.LoraTargets(c), LoraMode.Meta, o.Rank1, o.Rank2, o.DataSeed);
                adapter.AddIdentity("curve", seed);
                var binding = new LoraBinding(adapter, [0], trainDown: false, trainIdentity: true);
                var train = new TrainOptions { BatchSize = 1, Seed = seed, LearningRate = o.LearningRate };
                var losses = new double[o.Steps];
                for (int s = 0; s < o.Steps; s++)
                    losses[s] = Trainer.Step(model, binding, [examples[s % examples.Length]], train, s, o.Recompute).Loss;
                var run = new Run(name, seed, losses, Windowed(losses, o.Window));
                runs.Add(run);
                log($"{name,-9} seed {seed}: windowed mean loss {string.Join(" ", run.Windows.Select(v => v.ToString("F5", System.Globalization.CultureInfo.InvariantCulture)))}");
            }
        }
        return Compare(o, runs);
    }

    /// <summary>The lines the command prints: the spread per window and each variant's verdict.</summary>
    public static IEnumerable<string> Lines(Result r)
    {
        var inv = System.Globalization.CultureInfo.InvariantCulture;
        yield return string.Create(inv, $"{r.Options.Seeds} seeds × {r.Options.Steps} steps, windows of {r.Options.Window}");
        yield return "bf16 mean   " + string.Join(" ", r.Bf16Means.Select(v => v.ToString("F5", inv)));
        yield return "bf16 spread " + string.Join(" ", r.Bf16Spread.Select(v => v.ToString("F5", inv)));
        foreach (var v in r.Verdicts)
            yield return string.Create(inv, $"{v.Variant,-9} mean {string.Join(" ", v.SeedMeans.Select(x => x.ToString("F5", inv)))}; max |Δ| {v.MaxDeviation:E3} = {v.WorstRatio:G3} × spread: {(v.Within ? "WITHIN the bf16 spread" : "OUTSIDE the bf16 spread")}");
    }

    public static string ToJson(Result r)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteString("model", r.Options.Weights ?? r.Options.Config.Name);
            w.WriteNumber("steps", r.Options.Steps);
            w.WriteNumber("window", r.Options.Window);
            w.WriteNumber("seeds", r.Options.Seeds);
            w.WriteNumber("examples", r.Options.Examples);
            w.WriteNumber("image_tokens", r.Options.Grid * r.Options.Grid);
            w.WriteNumber("text_tokens", r.Options.TextTokens);
            w.WriteNumber("learning_rate", r.Options.LearningRate);
            Array(w, "bf16_window_means", r.Bf16Means);
            Array(w, "bf16_spread", r.Bf16Spread);
            w.WriteStartArray("runs");
            foreach (var run in r.Runs)
            {
                w.WriteStartObject();
                w.WriteString("variant", run.Variant);
                w.WriteNumber("seed", run.Seed);
                Array(w, "window_means", run.Windows);
                Array(w, "losses", run.Losses);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteStartArray("verdicts");
            foreach (var v in r.Verdicts)
            {
                w.WriteStartObject();
                w.WriteString("variant", v.Variant);
                Array(w, "window_means", v.SeedMeans);
                w.WriteNumber("max_deviation", v.MaxDeviation);
                if (double.IsFinite(v.WorstRatio)) w.WriteNumber("worst_ratio_to_spread", v.WorstRatio);
                else w.WriteNull("worst_ratio_to_spread");
                w.WriteBoolean("within_bf16_spread", v.Within);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(ms.ToArray()) + "\n";
    }

    static void Array(Utf8JsonWriter w, string name, double[] values)
    {
        w.WriteStartArray(name);
        foreach (double v in values)
            if (double.IsFinite(v)) w.WriteNumberValue(v);
            else w.WriteNullValue();
        w.WriteEndArray();
    }
}
