using System.Numerics;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Quantization;

namespace MetaLoraNative.Engine.Backends.Cpu;

// Quant: fp8 base weights (E4M3 codes, one fp32 scale per output row). The products run Gemm's tile loop with the
// weight read through a dequantising row source: each block of TJ rows of Bt is decoded into the thread's scratch,
// w = scale[j] · e4m3(code) computed in fp64 (exact: 24 × 4 significant bits) and stored once as T, so no full
// dequantised copy of a weight is ever made and the fp64 engine computes exactly the product with the dequantised
// weight (the fp32 engine rounds each decoded weight to fp32, as it stores every value).
public sealed partial class CpuBackend<T>
{
    public QuantizedWeight UploadQuantized(ReadOnlySpan<byte> codes, ReadOnlySpan<float> scale, int rows, int cols)
    {
        if (rows < 0 || cols < 0 || codes.Length != (long)rows * cols || scale.Length != rows)
            throw new ArgumentException(
                $"UploadQuantized: {codes.Length} codes and {scale.Length} scales do not make a ({rows}, {cols}) weight with one scale per row");
        return new CpuQuantizedWeight<T>(this, _ledger, codes.ToArray(), scale.ToArray(), rows, cols);
    }

    /// <summary>The dequantised weight (d_out, d_in), exact in fp64.</summary>
    public Tensor Dequantize(QuantizedWeight w)
    {
        Counted.Launch();
        var q = Quantized(w, "Dequantize");
        var y = New(q.Rows, q.Cols);
        for (int j = 0; j < q.Rows; j++) DecodeRow(q.Codes.AsSpan(j * q.Cols, q.Cols), q.Scale[j], y.Data.AsSpan(j * q.Cols, q.Cols));
        return y;
    }

    /// <summary>y = x·Wᵀ + b with W (d_out, d_in) decoded block by block as Bt. x (.., d_in) → (.., d_out).</summary>
    public Tensor LinearQuantized(Tensor x, QuantizedWeight w, Tensor? bias)
    {
        const string op = "LinearQuantized";
        var q = Quantized(w, op);
        return Product(op, x, q.Rows, q.Cols, Shapes.Format(q.Shape), new DequantizedRows(q.Codes, q.Scale), bias);
    }

    /// <summary>dx = dy·W with Wᵀ (d_in, d_out) decoded block by block as Bt. dy (.., d_out) → (.., d_in).</summary>
    public Tensor LinearQuantizedBackward(Tensor dy, QuantizedWeight w)
    {
        const string op = "LinearQuantizedBackward";
        var q = Quantized(w, op);
        return InputGradient(op, dy, q.Rows, q.Cols, Shapes.Format(q.Shape), new DequantizedColumns(q.Codes, q.Scale, q.Cols));
    }

    /// <summary>
    /// W8A8: y[m, n] = s_x · s_w[n] · Σ_k q_x[m, k]·q_w[n, k] + b[n], x quantised to E4M3 with one per-tensor scale
    /// (<see cref="Fp8Activations"/>: amax and the scale in fp32, the division in fp32, nearest-even, saturating).
    /// The sum runs in fp64 over the decoded codes and is exact: each product has at most 8 significant bits and
    /// magnitudes in [2^-18, 448²], so a sum of K &lt; 2^18 of them needs at most 8 + 35 + 18 bits ≤ 53 (fp64's).
    /// Then s_x · s_w[n] · sum + b[n] in fp64, stored once as T. x (.., d_in) → (.., d_out).
    /// </summary>
    public Tensor LinearQuantizedW8A8(Tensor x, QuantizedWeight w, Tensor? bias)
    {
        const string op = "LinearQuantizedW8A8";
        var q = Quantized(w, op);
        var X = Cpu(x, op, "x");
        int K = q.Cols, N = q.Rows;
        if (x.Rank < 1 || x.Cols != K)
            throw new ArgumentException($"{op}: x {S(x)} needs last dim d_in, w {Shapes.Format(q.Shape)} must be (d_out, d_in)");
        if (bias is not null && bias.Length != N)
            throw new ArgumentException($"{op}: bias {S(bias)} must have d_out = {N} elements (w {Shapes.Format(q.Shape)})");
        var y = New(WithLast(x.Shape, N));
        int M = checked((int)x.Rows);
        // the activations as the device holds them (fp32), their amax and scale, then the decoded codes
        Counted.Launch();
        var xf = new float[(long)M * K];
        for (int i = 0; i < xf.Length; i++) xf[i] = (float)Wide(X.Data[X.Offset + i]);
        float sx = Fp8Activations.Scale(Fp8Activations.Amax(xf));
        Counted.Launch();
        var qx = new double[xf.Length];
        for (int i = 0; i < xf.Length; i++) qx[i] = HalfPrecision.Float8E4M3ToFloat(Fp8Activations.Quantize(xf[i], sx));
        var qw = new double[(long)N * K];
        for (int i = 0; i < qw.Length; i++) qw[i] = HalfPrecision.Float8E4M3ToFloat(q.Codes[i]);
        double[]? b = null;
        if (bias is not null)
        {
            var bs = Cpu(bias, op, "bias");
            b = new double[N];
            for (int j = 0; j < N; j++) b[j] = Wide(bs.Data[bs.Offset + j]);
        }
        if (M > 0 && N > 0 && K > 0) Counted.Gemm(CpuRoute);
        T[] yd = y.Data;
        float[] sw = q.Scale;
        ForChunks(M, (long)N * K, (r0, r1) =>
        {
            for (int m = r0; m < r1; m++)
            {
                var xr = qx.AsSpan(m * K, K);
                for (int n = 0; n < N; n++)
                {
                    var wr = qw.AsSpan(n * K, K);
                    double acc = 0;
                    for (int k = 0; k < K; k++) acc += xr[k] * wr[k];
                    yd[(long)m * N + n] = Store((double)sx * sw[n] * acc + (b?[n] ?? 0.0));
                }
            }
        });
        return y;
    }

    private CpuQuantizedWeight<T> Quantized(QuantizedWeight w, string op)
    {
        ArgumentNullException.ThrowIfNull(w);
        return w as CpuQuantizedWeight<T> is { } q && ReferenceEquals(q.Backend, this) ? q
            : throw new ArgumentException($"{op}: w is a {w} weight, but this backend is {Name}");
    }

    /// <summary>dst[k] = scale · e4m3(codes[k]), computed in fp64 and stored once.</summary>
    private static void DecodeRow(ReadOnlySpan<byte> codes, double scale, Span<T> dst)
    {
        for (int k = 0; k < codes.Length; k++) dst[k] = Store(scale * HalfPrecision.Float8E4M3ToFloat(codes[k]));
    }

    /// <summary>Linear's fp8 weight as Bt: W (d_out, d_in) itself, rows [j0, j1) decoded into scratch.</summary>
    private readonly struct DequantizedRows(byte[] codes, float[] scale) : IRowSource
    {
        public ReadOnlySpan<T> Rows(int j0, int j1, int K, scoped ref T[]? scratch)
        {
            var dst = Scratch(ref scratch, (j1 - j0) * K);
            for (int j = j0; j < j1; j++) DecodeRow(codes.AsSpan(j * K, K), scale[j], dst.Slice((j - j0) * K, K));
            return dst;
        }
    }

    /// <summary>
    /// LinearBackward's fp8 weight as Bt = Wᵀ (d_in, d_out): rows [n0, n1) are W's columns, decoded by walking W's
    /// rows (each row's codes [n0, n1) are contiguous), so K here is d_out.
    /// </summary>
    private readonly struct DequantizedColumns(byte[] codes, float[] scale, int dIn) : IRowSource
    {
        public ReadOnlySpan<T> Rows(int n0, int n1, int K, scoped ref T[]? scratch)
        {
            int n = n1 - n0;
            var dst = Scratch(ref scratch, n * K);
            for (int j = 0; j < K; j++)
            {
                double s = scale[j];
                var src = codes.AsSpan(j * dIn + n0, n);
                for (int r = 0; r < n; r++) dst[r * K + j] = Store(s * HalfPrecision.Float8E4M3ToFloat(src[r]));
            }
            return dst;
        }
    }
}

/// <summary>
/// A quantised weight in host memory: the E4M3 codes (one byte each) and fp32 row scales as uploaded, counted in its
/// backend's ledger until disposed.
/// </summary>
public sealed class CpuQuantizedWeight<T> : QuantizedWeight where T : unmanaged, IFloatingPointIeee754<T>
{
    private readonly CpuBackend<T> _backend;
    private readonly CpuStorage _storage;
    private bool _disposed;

    internal CpuQuantizedWeight(CpuBackend<T> backend, MemoryLedger ledger, byte[] codes, float[] scale, int rows, int cols) : base(rows, cols)
    {
        _storage = new CpuStorage(ledger, Bytes);
        _backend = backend;
        Codes = codes;
        Scale = scale;
    }

    /// <summary>(d_out·d_in) E4M3 codes, row-major.</summary>
    public byte[] Codes { get; }

    /// <summary>(d_out) fp32 scales.</summary>
    public float[] Scale { get; }

    public override IBackend Backend => _backend;

    public override void Dispose()
    {
        if (!_disposed)
        {
            _disposed = true;
            _storage.Release();
        }
        base.Dispose();
    }
}
