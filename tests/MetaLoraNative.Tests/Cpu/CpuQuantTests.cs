using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Quantization;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cpu;

/// <summary>
/// The Quant group on the CPU (CpuBackend.Quant.cs) and the host quantiser it is fed by (Fp8Rows): LinearQuantized
/// against the fp64 product with the weight dequantised independently here, its input gradient by finite
/// differences, the fp32 engine against the fp64 one, and the per-row quantisation rule.
/// </summary>
public sealed class CpuQuantTests(ITestOutputHelper output) : CpuOpTests(output)
{
    /// <summary>Sizes off the 16 × 64 tile and the 4-wide kernel: d_out 70 spans two column blocks.</summary>
    const int Rows = 70, Cols = 37;

    /// <summary>W[j, k] = scale[j] · e4m3(codes[j, k]), decoded from the OCP definition rather than the engine's table.</summary>
    static double[] Dequantized(Fp8Rows q)
    {
        var w = new double[q.Codes.Length];
        for (int i = 0; i < w.Length; i++) w[i] = IO.HalfPrecisionTests.OcpE4M3(q.Codes[i]) * q.Scale[i / q.Cols];
        return w;
    }

    Fp8Rows RandomWeight(int rows = Rows, int cols = Cols) =>
        Fp8Rows.Quantize([.. _rand.Normal(rows * cols, 0.2).Select(v => (float)v)], rows, cols, "test weight");

    // ---------------------------------------------------------------- forward

    [Fact]
    public void LinearQuantizedIsTheProductWithTheDequantizedWeight()
    {
        var q = RandomWeight();
        var w = Dequantized(q);
        var x = _rand.Normal(2 * 5 * Cols);
        var b = _rand.Normal(Rows);
        using var wq = q.Upload(_be);
        using var xt = Up(x, 2, 5, Cols);
        using var bt = Up(b, Rows);
        using var y = _be.LinearQuantized(xt, wq, bt);
        Assert.Equal(new[] { 2, 5, Rows }, y.Shape);
        var expected = new double[10 * Rows];
        for (int r = 0; r < 10; r++)
        for (int j = 0; j < Rows; j++)
        {
            double s = b[j];
            for (int k = 0; k < Cols; k++) s += x[r * Cols + k] * w[j * Cols + k];
            expected[r * Rows + j] = s;
        }
        Close(expected, Down(y), Tight, "y");
        using var d = _be.Dequantize(wq);
        Assert.Equal(w, Down(d));                                              // exact in fp64
        using var y0 = _be.LinearQuantized(xt, wq, null);
        using var yd = _be.Linear(xt, d, null);
        Close(Down(yd), Down(y0), Tight, "y without bias vs Linear on the dequantised weight");
    }

    [Fact]
    public void LinearQuantizedBackwardIsTheProductWithTheDequantizedWeight()
    {
        var q = RandomWeight();
        var w = Dequantized(q);
        var dy = _rand.Normal(3 * Rows);
        using var wq = q.Upload(_be);
        using var dyt = Up(dy, 3, Rows);
        using var dx = _be.LinearQuantizedBackward(dyt, wq);
        Assert.Equal(new[] { 3, Cols }, dx.Shape);
        var expected = new double[3 * Cols];
        for (int r = 0; r < 3; r++)
        for (int k = 0; k < Cols; k++)
        {
            double s = 0;
            for (int j = 0; j < Rows; j++) s += dy[r * Rows + j] * w[j * Cols + k];
            expected[r * Cols + k] = s;
        }
        Close(expected, Down(dx), Tight, "dx");
    }

    [Fact]
    public void MismatchedShapesAndForeignWeightsFailNamingTheOp()
    {
        using var wq = RandomWeight(4, 5).Upload(_be);
        var e = Assert.Throws<ArgumentException>(() => _be.LinearQuantized(_be.Zeros(2, 3), wq, null));
        Assert.Contains("LinearQuantized", e.Message);
        Assert.Contains("(2, 3)", e.Message);
        Assert.Contains("(4, 5)", e.Message);
        e = Assert.Throws<ArgumentException>(() => _be.LinearQuantizedBackward(_be.Zeros(2, 5), wq));
        Assert.Contains("LinearQuantizedBackward", e.Message);
        e = Assert.Throws<ArgumentException>(() => _be.LinearQuantized(_be.Zeros(2, 5), wq, _be.Zeros(3)));
        Assert.Contains("bias", e.Message);
        using var other = CpuBackend.F32();
        using var foreign = RandomWeight(4, 5).Upload(other);
        e = Assert.Throws<ArgumentException>(() => _be.LinearQuantized(_be.Zeros(2, 5), foreign, null));
        Assert.Contains("cpu-f32", e.Message);
        e = Assert.Throws<ArgumentException>(() => _be.UploadQuantized(new byte[20], new float[3], 4, 5));
        Assert.Contains("UploadQuantized", e.Message);
    }

    // ---------------------------------------------------------------- backward (finite differences)

    [Fact]
    public void LinearQuantizedBackwardIsTheInputGradientOfLinearQuantized()
    {
        int[] xs = [2, 3, Cols];
        var x = _rand.Normal(2 * 3 * Cols);
        using var wq = RandomWeight().Upload(_be);
        using var bias = Up(_rand.Normal(Rows), Rows);
        var r = _rand.Normal(2 * 3 * Rows);
        using var rt = Up(r, 2, 3, Rows);
        using var dx = _be.LinearQuantizedBackward(rt, wq);
        Check("LinearQuantized dx", x, xs, t => _be.LinearQuantized(t, wq, bias), r, Down(dx));
    }

    // ---------------------------------------------------------------- fp32 vs fp64

    [Fact]
    public void LinearQuantizedFp32MatchesFp64()
    {
        var q = Fp8Rows.Quantize([.. new Testing.TestData(5).Normal(2 * C * C, 0.1).Select(v => (float)v)], 2 * C, C, "w");
        Fp32MatchesFp64("LinearQuantized", (be, r) =>
        {
            var x = be.Upload(r.Normal(B * L * C), B, L, C);
            var w = q.Upload(be);
            var bias = be.Upload(r.Normal(2 * C), 2 * C);
            var dy = be.Upload(r.Normal(B * L * 2 * C), B, L, 2 * C);
            return [be.DownloadDouble(be.LinearQuantized(x, w, bias)), be.DownloadDouble(be.LinearQuantizedBackward(dy, w))];
        });
    }

    // ---------------------------------------------------------------- the quantisation rule (Fp8Rows)

    [Fact]
    public void EachRowsLargestMagnitudeMapsTo448AndEveryValueKeepsE4M3sPrecision()
    {
        const int rows = 9, cols = 300;
        var values = _rand.Normal(rows * cols).Select((v, i) => (float)(v * Math.Pow(10, i / cols - 4))).ToArray();   // rows 1e-4 … 1e4
        Array.Clear(values, 5 * cols, cols);                                   // an all-zero row
        var q = Fp8Rows.Quantize(values, rows, cols, "w");
        var w = Dequantized(q);
        for (int j = 0; j < rows; j++)
        {
            var row = values.AsSpan(j * cols, cols);
            float amax = 0;
            foreach (float v in row) amax = Math.Max(amax, Math.Abs(v));
            Assert.Equal(amax == 0 ? 1f : amax / 448f, q.Scale[j]);
            if (amax > 0) Assert.Contains(q.Codes.Skip(j * cols).Take(cols), c => (c & 0x7F) == 0x7E);   // ±448 is used
            double s = q.Scale[j];
            for (int k = 0; k < cols; k++)
            {
                double v = row[k], err = Math.Abs(w[j * cols + k] - v);
                // Half an ulp: 2^-4 of the value in E4M3's normal range (|v| ≥ 2^-6 · s), 2^-10 · s below it.
                double bound = Math.Abs(v) >= Math.ScaleB(s, -6) ? Math.ScaleB(Math.Abs(v), -4) : Math.ScaleB(s, -10);
                Assert.True(err <= bound * (1 + 1e-6), $"row {j}, col {k}: {v} became {w[j * cols + k]}, error {err:E3} > {bound:E3}");
            }
        }
    }

    [Fact]
    public void QuantizingStackedRowsEqualsStackingQuantizedRows()
    {
        var top = _rand.Normal(6 * 20).Select(v => (float)v).ToArray();
        var bottom = _rand.Normal(4 * 20).Select(v => (float)(3 * v)).ToArray();
        var whole = Fp8Rows.Quantize([.. top, .. bottom], 10, 20, "whole");
        var parts = Fp8Rows.ConcatRows([Fp8Rows.Quantize(top, 6, 20, "top"), Fp8Rows.Quantize(bottom, 4, 20, "bottom")], "parts");
        Assert.Equal(whole.Codes, parts.Codes);
        Assert.Equal(whole.Scale, parts.Scale);
    }

    [Fact]
    public void BadWeightsAndStoredCodesFailNamingTheTensor()
    {
        var nan = new float[12];
        nan[7] = float.NaN;
        var e = Assert.Throws<InvalidDataException>(() => Fp8Rows.Quantize(nan, 3, 4, "ckpt: 'w'"));
        Assert.Contains("ckpt: 'w'", e.Message);
        Assert.Contains("row 1", e.Message);
        var codes = new byte[12];
        codes[5] = 0xFF;
        e = Assert.Throws<InvalidDataException>(() => Fp8Rows.Stored(codes, [1f], 3, 4, "ckpt: 'w'"));
        Assert.Contains("NaN", e.Message);
        Assert.Contains("row 1, column 1", e.Message);
        e = Assert.Throws<InvalidDataException>(() => Fp8Rows.Stored(new byte[12], [1f, 2f], 3, 4, "ckpt: 'w'"));
        Assert.Contains("2 scales for 3 rows", e.Message);
        e = Assert.Throws<InvalidDataException>(() => Fp8Rows.Stored(new byte[12], [0f], 3, 4, "ckpt: 'w'"));
        Assert.Contains("scale 0", e.Message);
        var stored = Fp8Rows.Stored([0x38, 0xB8, 0x40, 0x00], [0.5f], 2, 2, "w");
        Assert.Equal(new[] { 0.5f, 0.5f }, stored.Scale);                     // a per-tensor scale applies to every row
        Assert.Equal(new double[] { 0.5, -0.5, 1, 0 }, Dequantized(stored));
    }

    // ---------------------------------------------------------------- memory

    [Fact]
    public void AQuantizedWeightCostsOneBytePerCodeAndFourPerScaleUntilDisposed()
    {
        long before = _be.LiveBytes;
        var wq = RandomWeight().Upload(_be);
        Assert.Equal(Rows * Cols + 4L * Rows, wq.Bytes);
        Assert.Equal(before + wq.Bytes, _be.LiveBytes);
        wq.Dispose();
        wq.Dispose();
        Assert.Equal(before, _be.LiveBytes);
    }
}
