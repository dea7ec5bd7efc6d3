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
