using System.Collections.Concurrent;
using MetaLoraNative.Engine;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Testing;

/// <summary>
/// Central finite-difference gradient checks in fp64.
///
/// The numeric derivative of coordinate i is the fourth-order central difference
///   n_i = (f(x − 2h·e_i) − 8 f(x − h·e_i) + 8 f(x + h·e_i) − f(x + 2h·e_i)) / (12h),
/// whose truncation error is ≈ h⁴·f⁽⁵⁾/30 and whose roundoff is ≈ ε·|f|/h (ε = 2.2e-16). With the default
/// h = 1e-4 and O(1) inputs both are below 1e-11, far under the tolerance, so a failure means a wrong gradient,
/// not a noisy check. (A plain two-point difference at h = 1e-6 reaches only ≈ 1e-7 to 1e-8.) Ops whose input is
/// scaled up inside (the timestep embedding multiplies t by 1000) pass a proportionally smaller h.
///
/// Error per coordinate: |a − n| / max(|a| + |n|, floor), floor = 1e-3 · max_j |a_j|. The floor stops coordinates
/// whose true gradient is nearly zero from turning the absolute roundoff into a large relative error, while a
/// wrong small coordinate still fails (a 100% error on a coordinate 1e-4 of the largest scores ≈ 0.1).
/// Tolerance: 1e-5 (documented, not tuned): four orders above the expected error of an exact fp64 gradient and
/// four below the typical error of a missing or mis-scaled term.
///
/// The usual scalar is L(x) = Σ op(x) ∘ R with a fixed random R, so the analytic gradient is backward(R);
/// <see cref="Projected"/> builds that L for any tensor function, including a whole model.
/// </summary>
public static class GradCheck
{
    public const double DefaultStep = 1e-4;
    public const double DefaultTolerance = 1e-5;
    public const int DefaultMaxCoordinates = 64;

    /// <summary>The outcome of one check: the worst coordinate and its two values.</summary>
    public sealed record Result(
        string Name, int Checked, int Total, double WorstRelError, int WorstIndex, double Analytic, double Numeric)
    {
        public override string ToString() =>
            $"{Name}: worst rel err {WorstRelError:E2} over {Checked}/{Total} coords " +
            $"(at {WorstIndex}: analytic {Analytic:G10}, numeric {Numeric:G10})";
    }

    /// <summary>
    /// Compares <paramref name="analytic"/> (∂f/∂x at <paramref name="x"/>) with finite differences of f at every
    /// coordinate, or at a seeded random subset of <paramref name="maxCoordinates"/> when x is larger.
    /// x is perturbed in place and restored. Does not assert; see <see cref="Assert"/>.
    /// </summary>
    public static Result Compare(string name, Func<double[], double> f, double[] x, double[] analytic,
        double h = DefaultStep, int maxCoordinates = DefaultMaxCoordinates, int seed = 1234)
    {
        if (analytic.Length != x.Length)
            throw new ArgumentException($"{name}: analytic gradient has {analytic.Length} entries, x has {x.Length}");
        int[] coords = Choose(x.Length, maxCoordinates, seed);
        var numeric = new double[coords.Length];
        for (int c = 0; c < coords.Length; c++)
        {
            int i = coords[c];
            double xi = x[i];
            x[i] = xi + h; double p1 = f(x);
            x[i] = xi - h; double m1 = f(x);
            x[i] = xi + 2 * h; double p2 = f(x);
            x[i] = xi - 2 * h; double m2 = f(x);
            x[i] = xi;
            numeric[c] = (m2 - 8 * m1 + 8 * p1 - p2) / (12 * h);
        }
        double scale = 0;
        foreach (int i in coords) scale = Math.Max(scale, Math.Abs(analytic[i]));
        double floor = Math.Max(1e-3 * scale, 1e-300);
        var worst = new Result(name, coords.Length, x.Length, 0, -1, 0, 0);
        for (int c = 0; c < coords.Length; c++)
        {
            double a = analytic[coords[c]], n = numeric[c];
            double err = RelativeError(a, n, floor);
            if (double.IsNaN(err) || err > worst.WorstRelError || worst.WorstIndex < 0)
                worst = worst with { WorstRelError = double.IsNaN(err) ? double.PositiveInfinity : err,
                    WorstIndex = coords[c], Analytic = a, Numeric = n };
        }
        return worst;
    }

    /// <summary>|a − n| / max(|a| + |n|, floor).</summary>
    public static double RelativeError(double a, double n, double floor) =>
        Math.Abs(a - n) / Math.Max(Math.Abs(a) + Math.Abs(n), floor);

    /// <summary>Fails the test when the worst error exceeds the tolerance; records the result either way.</summary>
    public static Result Assert(Result r, ITestOutputHelper? output = null, double tolerance = DefaultTolerance)
    {
        Report.Record(r.ToString(), r.Name, r.WorstRelError, output);
        Xunit.Assert.True(r.WorstRelError <= tolerance, $"gradient check failed (tolerance {tolerance:E1}): {r}");
        return r;
    }

    /// <summary><see cref="Compare"/> then <see cref="Assert"/>.</summary>
    public static Result Check(string name, Func<double[], double> f, double[] x, double[] analytic,
        ITestOutputHelper? output = null, double h = DefaultStep, int maxCoordinates = DefaultMaxCoordinates,
        double tolerance = DefaultTolerance) =>
        Assert(Compare(name, f, x, analytic, h, maxCoordinates), output, tolerance);

    /// <summary>
    /// L(x) = Σ forward(x) ∘ r: uploads x (shape <paramref name="shape"/>) to the backend, runs forward and
    /// projects its output on r in fp64. Use the fp64 CPU backend, whose uploads are exact.
    /// </summary>
    public static Func<double[], double> Projected(IBackend backend, int[] shape, Func<Tensor, Tensor> forward, double[] r) =>
        x =>
        {
            using var t = backend.Upload(x, shape);
            using var y = forward(t);
            var v = backend.DownloadDouble(y);
            if (v.Length != r.Length)
                throw new ArgumentException($"projection has {r.Length} entries, the output {y} has {v.Length}");
            double s = 0;
            for (int i = 0; i < v.Length; i++) s += v[i] * r[i];
            return s;
        };

    private static int[] Choose(int n, int max, int seed)
    {
        var all = Enumerable.Range(0, n).ToArray();
        if (n <= max) return all;
        new Random(seed).Shuffle(all);
        return all[..max];
    }
}

/// <summary>
/// Collects the per-check numbers of a test run (gradient errors, fp32-vs-fp64 differences) for reports: each
/// line goes to the test's output and to gradcheck-report.txt next to the test assembly (rewritten each run).
/// </summary>
public static class Report
{
    private static readonly ConcurrentDictionary<string, double> Worst = new();
    private static readonly object FileLock = new();

    public static IReadOnlyDictionary<string, double> Results => Worst;

    public static string FilePath { get; } = Path.Combine(AppContext.BaseDirectory, "gradcheck-report.txt");

    // Each test run starts a fresh report.
    static Report() => File.Delete(FilePath);

    public static void Record(string line, string key, double value, ITestOutputHelper? output)
    {
        Worst[key] = value;
        output?.WriteLine(line);
        lock (FileLock) File.AppendAllText(FilePath, line + Environment.NewLine);
    }
}
