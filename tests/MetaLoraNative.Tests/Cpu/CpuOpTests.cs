using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Tests.Testing;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cpu;

/// <summary>
/// What every op group's CPU tests share (Cpu&lt;Group&gt;Tests, one file per IBackend group). Three kinds of check:
/// - forward values against naive, independently written formulas on the fp64 engine (<see cref="Close"/>);
/// - finite differences of every backward op on the fp64 engine: each check projects the op's output on a fixed
///   random R (L = Σ op(x) ∘ R) and compares backward(R) with the numeric gradient of L (<see cref="Check"/>);
/// - the fp32 engine against the fp64 oracle on medium random cases (<see cref="Fp32MatchesFp64"/>).
/// </summary>
public abstract class CpuOpTests(ITestOutputHelper output) : IDisposable
{
    /// <summary>Both sides are fp64 with O(1) values: only summation order differs.</summary>
    protected const double Tight = 1e-12;

    protected readonly IBackend _be = CpuBackend.F64();
    protected readonly TestData _rand = new(20240611);

    protected ITestOutputHelper Output { get; } = output;

    public void Dispose() => _be.Dispose();

    protected Tensor Up(double[] v, params int[] shape) => _be.Upload(v, shape);
    protected double[] Down(Tensor t) => _be.DownloadDouble(t);

    protected static void Close(double[] expected, double[] actual, double tol, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(expected[i] - actual[i]) <= tol * Math.Max(1, Math.Abs(expected[i])),
                $"{what}[{i}]: expected {expected[i]:G17}, got {actual[i]:G17}");
    }

    /// <summary>Checks ∂(Σ forward(x) ∘ r)/∂x against <paramref name="analytic"/> (see <see cref="GradCheck"/>).</summary>
    protected void Check(string name, double[] x, int[] shape, Func<Tensor, Tensor> forward, double[] r, double[] analytic,
        double h = GradCheck.DefaultStep) =>
        GradCheck.Check(name, GradCheck.Projected(_be, shape, forward, r), x, analytic, Output, h);

    // ---------------------------------------------------------------- fp32 engine vs fp64 oracle

    /// <summary>Medium sizes: B batches of L tokens with C channels; H heads of D channels for attention.</summary>
    protected const int B = 2, L = 48, C = 96, H = 3, D = 32;

    /// <summary>Max|f32 − f64| / max|f64| per output must stay under this (≈ 100 ulps of fp32).</summary>
    const double Fp32Tolerance = 1e-5;

    /// <summary>Runs one op on a backend with inputs from a fixed seed and returns every output, downloaded.</summary>
    protected delegate double[][] PrecisionCase(IBackend be, TestData rand);

    /// <summary>
    /// The fp32 engine against the fp64 oracle on one case. Both engines receive the same fp32-representable inputs,
    /// so the difference is the fp32 engine's own rounding (stores of intermediates such as attention's lse and
    /// LayerNorm's stats, and of results).
    /// </summary>
    protected void Fp32MatchesFp64(string op, PrecisionCase run)
    {
        using var f32 = CpuBackend.F32();
        using var f64 = CpuBackend.F64();
        var lo = run(f32, new TestData(99));
        var hi = run(f64, new TestData(99));
        Assert.Equal(hi.Length, lo.Length);
        double worst = 0;
        for (int o = 0; o < hi.Length; o++)
        {
            Assert.Equal(hi[o].Length, lo[o].Length);
            double diff = 0, scale = 0;
            for (int i = 0; i < hi[o].Length; i++)
            {
                diff = Math.Max(diff, Math.Abs(lo[o][i] - hi[o][i]));
                scale = Math.Max(scale, Math.Abs(hi[o][i]));
            }
            double rel = diff / Math.Max(scale, 1e-300);
            worst = Math.Max(worst, rel);
            Assert.True(rel <= Fp32Tolerance, $"{op} output {o}: fp32 vs fp64 max diff / max |value| = {rel:E2}");
        }
        Report.Record($"f32-vs-f64 {op}: worst rel diff {worst:E2}", "f32-vs-f64 " + op, worst, Output);
    }

    protected static double Dot(double[] a, double[] b)
    {
        double s = 0;
        for (int i = 0; i < a.Length; i++) s += a[i] * b[i];
        return s;
    }
}
