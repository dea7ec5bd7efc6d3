using MetaLoraNative.Engine;
using MetaLoraNative.Engine.IO;

namespace MetaLoraNative.Kernels.Verification;

/// <summary>One comparison inside a check: a tensor or a scalar, its error, what was allowed and the bf16 baseline.</summary>
/// <param name="Baseline">The baseline's own error against the reference (NaN where the rule has none: fp32 and exact comparisons).</param>
public sealed record ParityMeasure(string What, double Error, double Allowed, double Baseline, double MaxRef)
{
    public bool Pass => !double.IsNaN(Error) && Error <= Allowed;
}

/// <summary>
/// The outcome of one named check: its worst comparison (highest error/allowed ratio), whether all passed, every
/// comparison made, and the failure message when the check could not run to the end (an exception or a broken
/// structural requirement such as a shape).
/// </summary>
public sealed record ParityResult(string Name, double Error, double Allowed, double Baseline, bool Pass,
                                  IReadOnlyList<ParityMeasure> Measures, string? Failure, TimeSpan Elapsed)
{
    public string Worst => Measures.Count == 0 ? "" : Measures.OrderByDescending(Ratio).First().What;

    internal static double Ratio(ParityMeasure m) =>
        double.IsNaN(m.Error) ? double.PositiveInfinity : m.Allowed > 0 ? m.Error / m.Allowed : m.Error > 0 ? double.PositiveInfinity : 0;
}

/// <summary>Thrown when a structural requirement of a check fails (a shape, a count): the check stops there.</summary>
public sealed class ParityFailure(string message) : Exception(message);

/// <summary>What a check body sees: both backends and the recorder of comparisons.</summary>
public sealed class ParityContext(CudaBackend gpu, IBackend oracle)
{
    readonly List<ParityMeasure> measures = [];

    public CudaBackend Gpu { get; } = gpu;
    public IBackend Cpu { get; } = oracle;
    public IReadOnlyList<ParityMeasure> Measures => measures;

    /// <summary>The floor every bf16 comparison gets: 2^-10 · max|ref|, a quarter bf16 ulp at the largest value.</summary>
    public const double FloorFraction = 1.0 / 1024;

    // ---------------------------------------------------------------- inputs

    /// <summary>Uniform values in offset ± scale, rounded to bf16 (so every backend holds exactly these values).</summary>
    public static float[] Rand(int n, int seed, float scale = 1f, float offset = 0f)
    {
        var rng = new Random(seed);
        var v = new float[n];
        for (int i = 0; i < n; i++) v[i] = HalfPrecision.RoundToBFloat16(offset + scale * (float)(rng.NextDouble() * 2 - 1));
        return v;
    }

    public static double[] RoundBf16(double[] v) => Array.ConvertAll(v, x => (double)HalfPrecision.RoundToBFloat16((float)x));
    public static float[] RoundBf16(float[] v) => Array.ConvertAll(v, HalfPrecision.RoundToBFloat16);

    /// <summary>Uploads the same values to both backends.</summary>
    public (Tensor G, Tensor C) Both(float[] values, params int[] shape) => (Gpu.Upload(values, shape), Cpu.Upload(values, shape));

    /// <summary>Re-uploads an oracle tensor rounded to bf16 (the value the GPU keeps between ops).</summary>
    public Tensor RoundedCopy(Tensor t) => Cpu.Upload(RoundBf16(Cpu.Download(t)), t.Shape);

    // ---------------------------------------------------------------- comparisons

    /// <summary>
    /// The bf16 rule: max|ours − ref| ≤ 2 · max|baseline − ref| + 2^-10 · max|ref|. A NaN in ours fails.
    /// </summary>
    public ParityMeasure Bf16(string what, double[] ours, double[] reference, double[] baseline)
    {
        Require(ours.Length == reference.Length, $"{what}: {ours.Length} values, the reference has {reference.Length}");
        double errOurs = 0, errBase = 0, maxRef = 0;
        for (int i = 0; i < ours.Length; i++)
        {
            if (double.IsNaN(ours[i])) { errOurs = double.NaN; break; }
            errOurs = Math.Max(errOurs, Math.Abs(ours[i] - reference[i]));
            errBase = Math.Max(errBase, Math.Abs(baseline[i] - reference[i]));
            maxRef = Math.Max(maxRef, Math.Abs(reference[i]));
        }
        return Add(new ParityMeasure(what, errOurs, 2 * errBase + maxRef * FloorFraction + 1e-30, errBase, maxRef));
    }

    public ParityMeasure Bf16(string what, Tensor ours, double[] reference, double[] baseline) =>
        Bf16(what, ours.Backend.DownloadDouble(ours), reference, baseline);

    /// <summary>The bf16 rule with the output-rounding baseline: the oracle's result rounded to bf16.</summary>
    public ParityMeasure Bf16(string what, Tensor ours, Tensor reference)
    {
        double[] r = reference.Backend.DownloadDouble(reference);
        return Bf16(what, ours, r, RoundBf16(r));
    }

    /// <summary>
    /// The bf16 rule where the reference is another bf16 kernel S on the same GPU (the fp64 oracle being too slow at the
    /// size), for a result X of a new kernel. With T the exact result, the rule against an oracle would allow
    /// |X − T| ≤ 2·max|round(T) − T| + 2^-10·max|T|, and |X − S| ≤ |X − T| + |S − T|. S's own error is its output
    /// rounding (its fp32 accumulation is far smaller), at most h = max over elements of half a bf16 ulp, which bounds
    /// max|round(T) − T| too. So a correct X satisfies max|X − S| ≤ 3·h + 2^-10·max|S|; a wrong formula moves results
    /// by far more than a few roundings. The measure's baseline is h.
    /// </summary>
    public ParityMeasure Bf16AgainstKernel(string what, Tensor ours, Tensor reference)
    {
        double[] o = ours.Backend.DownloadDouble(ours), r = reference.Backend.DownloadDouble(reference);
        Require(o.Length == r.Length, $"{what}: {o.Length} values, the reference kernel gave {r.Length}");
        double err = 0, maxRef = 0, halfUlp = 0;
        for (int i = 0; i < o.Length; i++)
        {
            if (double.IsNaN(o[i]) || double.IsNaN(r[i])) { err = double.NaN; break; }
            err = Math.Max(err, Math.Abs(o[i] - r[i]));
            maxRef = Math.Max(maxRef, Math.Abs(r[i]));
            if (r[i] != 0) halfUlp = Math.Max(halfUlp, Math.Pow(2, Math.Floor(Math.Log2(Math.Abs(r[i]))) - 8));   // bf16: 8 significant bits
        }
        return Add(new ParityMeasure(what, err, 3 * halfUlp + maxRef * FloorFraction + 1e-30, halfUlp, maxRef));
    }

    /// <summary>fp32 results: max|ours − ref| ≤ rel · max|ref| + 1e-12.</summary>
    public ParityMeasure F32(string what, Tensor ours, Tensor reference, double rel = 1e-5) =>
        F32(what, ours.Backend.DownloadDouble(ours), reference.Backend.DownloadDouble(reference), rel);

    /// <summary>The fp32 rule on downloaded values.</summary>
    public ParityMeasure F32(string what, double[] o, double[] r, double rel)
    {
        Require(o.Length == r.Length, $"{what}: {o.Length} values, the reference has {r.Length}");
        double maxRef = 0, err = 0;
        for (int i = 0; i < o.Length; i++)
        {
            if (double.IsNaN(o[i])) { err = double.NaN; break; }
            err = Math.Max(err, Math.Abs(o[i] - r[i]));
            maxRef = Math.Max(maxRef, Math.Abs(r[i]));
        }
        return Add(new ParityMeasure(what, err, rel * maxRef + 1e-12, double.NaN, maxRef));
    }

    /// <summary>A scalar within an absolute tolerance.</summary>
    public ParityMeasure Scalar(string what, double ours, double reference, double tolerance) =>
        Add(new ParityMeasure(what, double.IsNaN(ours) ? double.NaN : Math.Abs(ours - reference), tolerance, double.NaN, Math.Abs(reference)));

    /// <summary>Bit-exact equality (allowed error 0).</summary>
    public ParityMeasure Exact(string what, float[] ours, float[] reference)
    {
        Require(ours.Length == reference.Length, $"{what}: {ours.Length} values, expected {reference.Length}");
        double err = 0, maxRef = 0;
        for (int i = 0; i < ours.Length; i++)
        {
            if (float.IsNaN(ours[i]) != float.IsNaN(reference[i])) { err = double.NaN; break; }
            if (!float.IsNaN(ours[i])) err = Math.Max(err, Math.Abs((double)ours[i] - reference[i]));
            maxRef = Math.Max(maxRef, Math.Abs(reference[i]));
        }
        return Add(new ParityMeasure(what, err, 0, double.NaN, maxRef));
    }

    /// <summary>A structural requirement: stops the check with a failure when false.</summary>
    public static void Require(bool condition, string message)
    {
        if (!condition) throw new ParityFailure(message);
    }

    public static void RequireShape(Tensor t, int[] expected, string what) =>
        Require(t.Shape.AsSpan().SequenceEqual(expected), $"{what}: shape {Shapes.Format(t.Shape)}, expected {Shapes.Format(expected)}");

    ParityMeasure Add(ParityMeasure m)
    {
        measures.Add(m);
        return m;
    }
}
