using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Kernels.Native;

namespace MetaLoraNative.Kernels;

// Memory (memory.cu): allocation from the pool, the precision conversions every op uses for its inputs, and the
// Memory ops (zeros, empty: the same block without the memset, upload, download, copy, fill). Host bf16 conversions are HalfPrecision's, bit for bit the
// rounding of common.cuh's f2bf. Block swap's transfers (pinned host copies, the copy stream) are SwapTransfer.cs.
public sealed partial class CudaBackend : IBlockTransferSource
{
    /// <summary>Block swap's host copies and copies into device slots on a second stream (<see cref="CudaBlockTransfer"/>).</summary>
    public IBlockTransfer OpenBlockTransfer() => new CudaBlockTransfer(this);

    /// <summary>Makes this backend's context current: for the transfers, whose driver calls run outside an op.</summary>
    internal void EnterContext()
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        MakeCurrent();
    }

    internal CudaTensor Alloc(int[] shape, Precision precision = Precision.Compute)
    {
        long numel = Shapes.Numel(shape);
        long bytes = numel * (precision == Precision.Master ? 4 : 2);
        ulong ptr = Pool.Rent(bytes, out long cls);
        Counted.Allocation(cls);
        return new CudaTensor(this, new DeviceStorage(Pool, ptr, cls), (int[])shape.Clone(), precision);
    }

    internal CudaTensor T(Tensor t, string what = "tensor")
    {
        if (t is CudaTensor c && ReferenceEquals(c.Backend, this))
        {
            RecordInput(what, c);
            return c;
        }
        throw new ArgumentException($"{what} {t} does not belong to this CUDA backend");
    }

    /// <summary>The tensor as bf16: itself, or a converted temporary that the Borrowed's Dispose frees.</summary>
    internal Borrowed<CudaTensor> Bf16(Tensor t, string what = "tensor") => As(t, Precision.Compute, what);

    /// <summary>The tensor as fp32: itself, or a converted temporary.</summary>
    internal Borrowed<CudaTensor> F32(Tensor t, string what = "tensor") => As(t, Precision.Master, what);

    Borrowed<CudaTensor> As(Tensor t, Precision precision, string what)
    {
        var c = T(t, what);
        if (c.Precision == precision) return Borrowed<CudaTensor>.Of(c);
        var tmp = Alloc(c.Shape, precision);
        Convert(c, tmp);
        return Borrowed<CudaTensor>.Owned(tmp);
    }

    void Convert(CudaTensor src, CudaTensor dst) =>
        Launch1D("memory.cu", "convert_kernel", src.Length, dst.Ptr, dst.Dt, src.Ptr, src.Dt, src.Length);

    /// <summary>Every element of t = value (rounded to t's precision).</summary>
    internal void FillWith(CudaTensor t, float value) =>
        Launch1D("memory.cu", "fill_kernel", t.Length, t.Ptr, t.Dt, t.Length, value);

    public Tensor Zeros(params int[] shape) => Zeros(shape, Precision.Compute);

    public Tensor Zeros(int[] shape, Precision precision)
    {
        using var _ = Op("zeros");
        var t = Alloc(shape, precision);
        if (t.Bytes > 0) CudaCheck.Cu(CuDriver.cuMemsetD8Async(t.Ptr, 0, (nuint)t.Bytes, Stream));
        return t;
    }

    public Tensor Empty(params int[] shape) => Empty(shape, Precision.Compute);

    /// <summary>The pool block as it is (no memset): the caller writes every element before reading one.</summary>
    public Tensor Empty(int[] shape, Precision precision)
    {
        using var _ = Op("empty");
        var t = Alloc(shape, precision);
        if (PoisonEmpty && t.Length > 0) FillWith(t, float.NaN);
        return t;
    }

    /// <summary>
    /// A check aid, off by default (METALORA_POISON_EMPTY=1): every Empty filled with NaN as the CPU's always is, so a
    /// kernel that reads an element of it before writing it (a GEMM reading C at beta 0, a stream missing its tokens)
    /// turns a parity check's result NaN instead of leaving whatever the pool block held. One fill launch per Empty.
    /// </summary>
    public bool PoisonEmpty { get; set; } = Environment.GetEnvironmentVariable("METALORA_POISON_EMPTY") is "1" or "true" or "yes";

    public Tensor Upload(ReadOnlySpan<float> values, params int[] shape) => Upload(values, shape, Precision.Compute);

    public unsafe Tensor Upload(ReadOnlySpan<float> values, int[] shape, Precision precision)
    {
        using var _ = Op("upload");
        Shapes.Require(values.Length == Shapes.Numel(shape), $"upload: {values.Length} values for shape {Shapes.Format(shape)}");
        var t = Alloc(shape, precision);
        if (values.Length == 0) return t;
        if (precision == Precision.Master)
        {
            fixed (float* p = values) CudaCheck.Cu(CuDriver.cuMemcpyHtoDAsync_v2(t.Ptr, p, (nuint)t.Bytes, Stream));
        }
        else
        {
            var bits = new ushort[values.Length];
            ToBf16(values, bits);
            fixed (ushort* p = bits) CudaCheck.Cu(CuDriver.cuMemcpyHtoDAsync_v2(t.Ptr, p, (nuint)t.Bytes, Stream));
        }
        // Pageable sources are staged before the call returns, so the managed arrays may go now.
        return t;
    }

    public Tensor Upload(ReadOnlySpan<double> values, params int[] shape)
    {
        var f = new float[values.Length];
        for (int i = 0; i < f.Length; i++) f[i] = (float)values[i];
        return Upload(f, shape, Precision.Compute);
    }

    public unsafe float[] Download(Tensor t)
    {
        using var _ = Op("download");
        var c = T(t);
        var result = new float[c.Length];
        if (c.Length == 0) return result;
        if (c.Precision == Precision.Master)
        {
            fixed (float* p = result) CudaCheck.Cu(CuDriver.cuMemcpyDtoHAsync_v2(p, c.Ptr, (nuint)c.Bytes, Stream));
            SyncStream("download");
        }
        else
        {
            var bits = new ushort[c.Length];
            fixed (ushort* p = bits) CudaCheck.Cu(CuDriver.cuMemcpyDtoHAsync_v2(p, c.Ptr, (nuint)c.Bytes, Stream));
            SyncStream("download");
            FromBf16(bits, result);
        }
        return result;
    }

    // The host conversions of large transfers run in parallel chunks: a FLUX.1-dev weight upload converts 12 B
    // values, about 30 s on one core and a few seconds on sixteen.
    const int ConvertChunk = 1 << 20;

    static unsafe void ToBf16(ReadOnlySpan<float> values, ushort[] bits)
    {
        if (values.Length <= ConvertChunk) { HalfPrecision.FloatsToBFloat16(values, bits); return; }
        fixed (float* p = values)
        {
            IntPtr source = (IntPtr)p;   // a span cannot enter the parallel body; the pinned address can
            int length = values.Length;
            Parallel.For(0, (length + ConvertChunk - 1) / ConvertChunk, k =>
            {
                int start = k * ConvertChunk, n = Math.Min(ConvertChunk, length - start);
                HalfPrecision.FloatsToBFloat16(new ReadOnlySpan<float>((float*)source + start, n), bits.AsSpan(start, n));
            });
        }
    }

    static void FromBf16(ushort[] bits, float[] result) =>
        Parallel.For(0, (bits.Length + ConvertChunk - 1) / ConvertChunk, k =>
        {
            int start = k * ConvertChunk, n = Math.Min(ConvertChunk, bits.Length - start);
            HalfPrecision.BFloat16ToFloats(bits.AsSpan(start, n), result.AsSpan(start, n));
        });

    public double[] DownloadDouble(Tensor t) => Array.ConvertAll(Download(t), v => (double)v);

    public void Copy(Tensor src, Tensor dst)
    {
        using var _ = Op("copy");
        var s = T(src, "src");
        var d = T(dst, "dst");
        Shapes.Require(s.Length == d.Length, $"copy: {s} into {d}");
        Convert(s, d);
    }

    public void Fill(Tensor t, float value)
    {
        using var _ = Op("fill");
        FillWith(T(t), value);
    }
}
