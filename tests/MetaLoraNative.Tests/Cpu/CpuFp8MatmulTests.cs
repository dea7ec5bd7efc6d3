using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Quantization;
using MetaLoraNative.Kernels.Verification;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cpu;

/// <summary>
/// The W8A8 forward product on the CPU (LinearQuantizedW8A8, CpuBackend.Quant.cs) and the activation rule it shares
/// with the device (Fp8Activations): against the formula written out here in fp64, against W8A16 within a bound
/// derived from E4M3's step, the edge cases of amax and the scale (zeros, saturation, NaN and infinities), fp32 vs
/// fp64, and the bf16 emulation.
/// </summary>
public sealed class CpuFp8MatmulTests(ITestOutputHelper output) : CpuOpTests(output)
{
    const int Rows = 70, Cols = 48;

    Fp8Rows RandomWeight(int rows = Rows, int cols = Cols) =>
        Fp8Rows.Quantize([.. _rand.Normal(rows * cols, 0.2).Select(v => (float)v)], rows, cols, "test weight");

    /// <summary>y[m, n] = s_x · s_w[n] · Σ_k e4m3(q_x)·e4m3(q_w) + b[n], spelled out (the OCP decode, not the engine's table).</summary>
    static double[] Formula(double[] x, int m, Fp8Rows q, double[]? b)
    {
        int K = q.Cols, N = q.Rows;
        float amax = 0f;
        bool finite = true;
        foreach (double v in x)
        {
            finite &= double.IsFinite(v);
            amax = MathF.Max(amax, MathF.Abs((float)v));
        }
        float sx = !finite ? float.NaN : amax == 0f ? 1f : amax / 448f;
        var y = new double[m * N];
        for (int r = 0; r < m; r++)
        for (int n = 0; n < N; n++)
        {
            double acc = 0;
            for (int k = 0; k < K; k++)
                acc += IO.HalfPrecisionTests.OcpE4M3(HalfPrecision.FloatToFloat8E4M3((float)x[r * K + k] / sx))
                     * IO.HalfPrecisionTests.OcpE4M3(q.Codes[n * K + k]);
            y[r * N + n] = (double)sx * q.Scale[n] * acc + (b?[n] ?? 0);
        }
        return y;
    }

    [Fact]
    public void LinearQuantizedW8A8IsTheFormula()
    {
        var q = RandomWeight();
        var x = _rand.Normal(2 * 5 * Cols);
        var b = _rand.Normal(Rows);
        using var wq = q.Upload(_be);
        using var xt = Up(x, 2, 5, Cols);
        using var bt = Up(b, Rows);
        using var y = _be.LinearQuantizedW8A8(xt, wq, bt);
        Assert.Equal(new[] { 2, 5, Rows }, y.Shape);
        Close(Formula(x, 10, q, b), Down(y), Tight, "y");
        using var y0 = _be.LinearQuantizedW8A8(xt, wq, null);
        Close(Formula(x, 10, q, null), Down(y0), Tight, "y without bias");
    }

    /// <summary>
    /// W8A8 against W8A16 on the same weight: only x's rounding differs. Each activation's error is at most half an
    /// E4M3 step (relative step 2^-3, so 2^-4 of |x|) in the normal range and 2^-10 · s_x below it, so per output
    /// |Δy[n]| ≤ Σ_k (2^-4 |x_k| + 2^-10 s_x) |w_nk| (the worst case, every error aligned). For independent errors the
    /// typical size is √K times smaller than that sum's K terms: we also report RMS(Δy) / (2^-3 · √K · RMS(|x w|)).
    /// </summary>
    [Fact]
    public void W8A8DiffersFromW8A16ByAtMostHalfAnE4M3StepPerActivation()
    {
        var q = RandomWeight(Rows, 256);
        int K = q.Cols;
        var x = _rand.Normal(6 * K).Select((v, i) => v * Math.Pow(10, (i % 7) - 3)).ToArray();   // 1e-3 … 1e3: subnormals too
        using var wq = q.Upload(_be);
        using var xt = Up(x, 6, K);
        using var y8 = _be.LinearQuantizedW8A8(xt, wq, null);
        using var y16 = _be.LinearQuantized(xt, wq, null);
        using var wd = _be.Dequantize(wq);
        double[] a = Down(y8), r = Down(y16), w = Down(wd);
        double sx = x.Max(Math.Abs) / 448;
        double sumSq = 0, termSq = 0;
        bool differs = false;
        for (int m = 0; m < 6; m++)
        for (int n = 0; n < Rows; n++)
        {
            double bound = 0;
            for (int k = 0; k < K; k++)
            {
                double wk = Math.Abs(w[n * K + k]);
                bound += (Math.ScaleB(Math.Abs(x[m * K + k]), -4) + Math.ScaleB(sx, -10)) * wk;
                termSq += x[m * K + k] * x[m * K + k] * wk * wk;
            }
            double d = Math.Abs(a[m * Rows + n] - r[m * Rows + n]);
            differs |= d > 0;
            sumSq += d * d;
            Assert.True(d <= bound * (1 + 1e-9), $"y[{m}, {n}]: |W8A8 − W8A16| = {d:E3} > {bound:E3}");
        }
        Assert.True(differs, "W8A8 equals W8A16: the activations were not quantised");
        double ratio = Math.Sqrt(sumSq / (6 * Rows)) / (Math.ScaleB(1, -3) * Math.Sqrt(K) * Math.Sqrt(termSq / (6 * Rows * K)));
        Output.WriteLine($"RMS(W8A8 − W8A16) / (2^-3 · √K · RMS|x·w|) = {ratio:E3} (K = {K})");
        Assert.True(ratio < 1, $"the typical error {ratio:E3} of 2^-3·√K·RMS|x·w| is not below one step");
    }

    // ---------------------------------------------------------------- amax, scale and rounding edge cases

    [Fact]
    public void AllZeroActivationsGiveTheBiasExactly()
    {
        var q = RandomWeight();
        var b = _rand.Normal(Rows);
        using var wq = q.Upload(_be);
        using var xt = _be.Zeros(3, Cols);
        using var bt = Up(b, Rows);
        using var y = _be.LinearQuantizedW8A8(xt, wq, bt);
        var got = Down(y);
        for (int i = 0; i < got.Length; i++) Assert.Equal(b[i % Rows], got[i]);
        Assert.Equal(1f, Fp8Activations.Scale(0f));
        Assert.Equal(0f, Fp8Activations.Amax([0f, -0f]));
    }

    [Fact]
    public void TheLargestMagnitudeMapsTo448AndNothingSaturatesBeyondIt()
    {
        foreach (float amax in new[] { 1e-30f, 3e-3f, 1f, 448f, 7.5e4f, 3e38f })
        {
            float s = Fp8Activations.Scale(amax);
            Assert.Equal(amax / 448f, s);
            byte top = Fp8Activations.Quantize(amax, s), bottom = Fp8Activations.Quantize(-amax, s);
            Assert.Equal(0x7E, top);                                  // +448: the division rounds to within an ulp of 448
            Assert.Equal(0xFE, bottom);
            Assert.Equal(0x7E, Fp8Activations.Quantize(amax * 1.5f, s));   // beyond amax (never from the tensor itself): saturates
        }
        // half the smallest subnormal rounds to zero (ties to even), just above it to the smallest subnormal
        Assert.Equal(0x00, Fp8Activations.Quantize(MathF.ScaleB(1, -10), 1f));
        Assert.Equal(0x01, Fp8Activations.Quantize(MathF.ScaleB(1.0001f, -10), 1f));
    }

    [Fact]
    public void ANonFiniteActivationMakesEveryOutputNaN()
    {
        var q = RandomWeight();
        using var wq = q.Upload(_be);
        foreach (double bad in new[] { double.NaN, double.PositiveInfinity, double.NegativeInfinity })
        {
            var x = _rand.Normal(3 * Cols);
            x[Cols + 5] = bad;
            Assert.True(float.IsNaN(Fp8Activations.Scale(Fp8Activations.Amax([.. x.Select(v => (float)v)]))));
            using var xt = Up(x, 3, Cols);
            using var y = _be.LinearQuantizedW8A8(xt, wq, null);
            Assert.All(Down(y), v => Assert.True(double.IsNaN(v), $"x holding {bad} gave a finite output {v}"));
        }
        // NaN outranks infinity in the bit order the device's atomicMax uses
        Assert.True(float.IsNaN(Fp8Activations.Amax([float.PositiveInfinity, float.NaN, 1f])));
        Assert.Equal(float.PositiveInfinity, Fp8Activations.Amax([-float.PositiveInfinity, 2f]));
    }

    [Fact]
    public void ShapeAndOwnershipErrorsNameTheOp()
    {
        var q = RandomWeight(3, 16);
        using var wq = q.Upload(_be);
        var e = Assert.Throws<ArgumentException>(() => _be.LinearQuantizedW8A8(_be.Zeros(2, 5), wq, null));
        Assert.Contains("LinearQuantizedW8A8", e.Message);
        e = Assert.Throws<ArgumentException>(() => _be.LinearQuantizedW8A8(_be.Zeros(2, 16), wq, _be.Zeros(4)));
        Assert.Contains("bias", e.Message);
        using var other = CpuBackend.F64();
        using var foreign = q.Upload(other);
        e = Assert.Throws<ArgumentException>(() => _be.LinearQuantizedW8A8(_be.Zeros(2, 16), foreign, null));
        Assert.Contains("LinearQuantizedW8A8", e.Message);
    }

    // ---------------------------------------------------------------- fp32 vs fp64, bf16 emulation

    [Fact]
    public void LinearQuantizedW8A8Fp32MatchesFp64()
    {
        var q = Fp8Rows.Quantize([.. new Testing.TestData(5).Normal(2 * C * C, 0.1).Select(v => (float)v)], 2 * C, C, "w");
        Fp32MatchesFp64("LinearQuantizedW8A8", (be, r) =>
        {
            var x = be.Upload(r.Normal(B * L * C), B, L, C);
            var w = q.Upload(be);
            var bias = be.Upload(r.Normal(2 * C), 2 * C);
            return [be.DownloadDouble(be.LinearQuantizedW8A8(x, w, bias))];
        });
    }

    /// <summary>The emulation is the exact product of the bf16-rounded inputs, rounded to bf16: within half a bf16 ulp (2^-9) of it.</summary>
    [Fact]
    public void TheBf16EmulationRoundsTheExactProductOfBf16Inputs()
    {
        var q = RandomWeight();
        var x = _rand.Normal(4 * Cols).Select(v => (double)HalfPrecision.RoundToBFloat16((float)v)).ToArray();
        var b = _rand.Normal(Rows).Select(v => (double)HalfPrecision.RoundToBFloat16((float)v)).ToArray();
        using var emu = new Bf16EmulationBackend();
        using var wq = q.Upload(emu);
        using var xt = emu.Upload(x, 4, Cols);
        using var bt = emu.Upload(b, Rows);
        using var y = emu.LinearQuantizedW8A8(xt, wq, bt);
        var got = emu.DownloadDouble(y);
        var exact = Formula(x, 4, q, b);
        for (int i = 0; i < got.Length; i++)
        {
            Assert.Equal(got[i], HalfPrecision.RoundToBFloat16((float)got[i]));
            Assert.True(Math.Abs(got[i] - exact[i]) <= Math.ScaleB(Math.Abs(exact[i]), -8) + 1e-30, $"y[{i}]: {got[i]} vs {exact[i]}");
        }
    }
}
