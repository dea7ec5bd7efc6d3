using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Quantization;
using MetaLoraNative.Kernels.Native;

namespace MetaLoraNative.Kernels;

// Quant (quant.cu): fp8 base weights. A quantised weight keeps its E4M3 codes (one byte each, a pool block) and its
// fp32 row scales (a Master tensor). A product first decodes the weight into the backend's one bf16 scratch, sized
// for the largest quantised weight uploaded and reused by every layer (the stream orders each decode after the
// previous layer's GEMM), then runs Linear's or LinearBackward's bf16 cuBLASLt GEMM with fp32 accumulation. So an
// fp8 base costs one byte per weight plus one bf16 copy of its largest layer.
public sealed partial class CudaBackend
{
    DeviceStorage? dequantScratch;   // bf16, dequantCapacity elements
    long dequantCapacity, largestQuantized;

    public unsafe QuantizedWeight UploadQuantized(ReadOnlySpan<byte> codes, ReadOnlySpan<float> scale, int rows, int cols)
    {
        using var _ = Op("upload_quantized");
        Shapes.Require(rows >= 0 && cols >= 0 && codes.Length == (long)rows * cols && scale.Length == rows,
            $"upload_quantized: {codes.Length} codes and {scale.Length} scales do not make a ({rows}, {cols}) weight with one scale per row");
        ulong ptr = Pool.Rent(codes.Length, out long cls);
        var storage = new DeviceStorage(Pool, ptr, cls);
        try
        {
            if (codes.Length > 0)
                fixed (byte* p = codes) CudaCheck.Cu(CuDriver.cuMemcpyHtoDAsync_v2(ptr, p, (nuint)codes.Length, Stream));
            var s = (CudaTensor)Upload(scale, [rows], Precision.Master);
            largestQuantized = Math.Max(largestQuantized, (long)rows * cols);
            return new CudaQuantizedWeight(this, storage, s, rows, cols);
        }
        catch
        {
            storage.Release();
            throw;
        }
    }

    /// <summary>A fresh bf16 copy of the dequantised weight (the caller owns it).</summary>
    public Tensor Dequantize(QuantizedWeight w)
    {
        using var _ = Op("dequantize");
        var q = Q(w, "dequantize");
        var y = Alloc(q.Shape);
        Decode(q, y.Ptr);
        return y;
    }

    public Tensor LinearQuantized(Tensor x, QuantizedWeight w, Tensor? bias)
    {
        using var _ = Op("linear_quantized");
        using var weight = Decoded(Q(w, "linear_quantized"));
        return Linear(x, weight, bias);
    }

    /// <summary>
    /// W8A8 (opt-in: the model issues it only under METALORA_FP8_MATMUL=1): the FP8 GEMM of Dev/CudaBackend.Fp8Matmul.cs
    /// on sm_89+, otherwise (or when cuBLASLt has no FP8 algorithm for the shape) today's W8A16 product, noted once.
    /// </summary>
    public Tensor LinearQuantizedW8A8(Tensor x, QuantizedWeight w, Tensor? bias)
    {
        using var _ = Op("linear_quantized_w8a8");
        var q = Q(w, "linear_quantized_w8a8");
        var cx = T(x, "x");
        Shapes.Require(cx.Cols == q.Cols, $"linear_quantized_w8a8: x {cx} against w {q}");
        if (bias != null) Shapes.Require(bias.Length == q.Rows, $"linear_quantized_w8a8: bias {bias} for d_out {q.Rows}");
        if (TryLinearW8A8(cx, q, bias == null ? null : T(bias, "bias")) is { } y) return y;
        using var weight = Decoded(q);
        return Linear(x, weight, bias);
    }

    public Tensor LinearQuantizedBackward(Tensor dy, QuantizedWeight w)
    {
        using var _ = Op("linear_quantized_backward");
        using var weight = Decoded(Q(w, "linear_quantized_backward"));
        return LinearBackward(dy, weight);
    }

    CudaQuantizedWeight Q(QuantizedWeight w, string op) =>
        w is CudaQuantizedWeight q && ReferenceEquals(q.Backend, this) ? q
            : throw new ArgumentException($"{op}: w {w} does not belong to this CUDA backend");

    void Decode(CudaQuantizedWeight q, ulong output) =>
        Launch1D("quant.cu", "dequantize_e4m3_kernel", q.Length, output, q.CodesPtr, q.Scale.Ptr, (long)q.Rows, q.Cols);

    /// <summary>The weight decoded into the shared scratch, as a (d_out, d_in) bf16 view of it; disposing the view keeps the scratch.</summary>
    CudaTensor Decoded(CudaQuantizedWeight q)
    {
        long need = Math.Max(q.Length, largestQuantized);
        if (dequantScratch == null || dequantCapacity < q.Length)
        {
            dequantScratch?.Release();
            dequantScratch = null;
            ulong ptr = Pool.Rent(need * 2, out long cls);
            dequantScratch = new DeviceStorage(Pool, ptr, cls);
            dequantCapacity = need;
        }
        dequantScratch.AddRef();
        var view = new CudaTensor(this, dequantScratch, q.Shape, Precision.Compute);
        Decode(q, view.Ptr);
        return view;
    }
}

/// <summary>A quantised weight in device memory: E4M3 codes (a pool block) and fp32 row scales.</summary>
internal sealed class CudaQuantizedWeight(CudaBackend backend, DeviceStorage codes, CudaTensor scale, int rows, int cols)
    : QuantizedWeight(rows, cols)
{
    bool disposed;

    public ulong CodesPtr => disposed ? throw new ObjectDisposedException(ToString()) : codes.Ptr;

    /// <summary>(d_out) fp32.</summary>
    public CudaTensor Scale { get; } = scale;

    public override IBackend Backend => backend;

    public override void Dispose()
    {
        if (!disposed)
        {
            disposed = true;
            codes.Release();
            Scale.Dispose();
        }
        base.Dispose();
    }
}
