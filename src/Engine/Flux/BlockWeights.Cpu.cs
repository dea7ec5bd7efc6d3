using System.Diagnostics;
using System.Numerics;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Quantization;

namespace MetaLoraNative.Engine.Flux;

/// <summary>
/// Block swap's transfers on a CPU backend: the "host" copy is a second managed array outside the backend's ledger
/// (so the ledger counts what a device would: resident weights and the slots), and a copy into a slot is a span copy
/// on the calling thread, timed with a stopwatch. The events of <see cref="IBlockTransfer"/> are no-ops: every call
/// completes before it returns, so the order the swapped store issues them in is already the order they take effect.
/// </summary>
public static class CpuBlockTransfer
{
    /// <summary>The transfer for one of the CPU engines, or null for any other backend.</summary>
    public static IBlockTransfer? For(IBackend backend) => backend switch
    {
        CpuBackend<float> => new Transfer<float>(),
        CpuBackend<double> => new Transfer<double>(),
        _ => null,
    };

    sealed class Transfer<T> : IBlockTransfer where T : unmanaged, IFloatingPointIeee754<T>
    {
        readonly Stopwatch clock = new();
        int copies;
        long bytes;

        public IHostWeight Stage(Tensor t) =>
            t is CpuTensor<T> c ? new HostTensor(c.Span.ToArray(), t.Shape) : throw new ArgumentException($"block swap: {t} is not a tensor of this CPU engine");

        public IHostWeight Stage(QuantizedWeight w) =>
            w is CpuQuantizedWeight<T> q ? new HostQuantized((byte[])q.Codes.Clone(), (float[])q.Scale.Clone(), q.Rows, q.Cols)
                : throw new ArgumentException($"block swap: {w} is not a weight of this CPU engine");

        public int BeginCopy(int slot)
        {
            clock.Start();
            return copies++;
        }

        public void CopyIn(IHostWeight host, Tensor slot)
        {
            var h = (HostTensor)host;
            h.Data.CopyTo(((CpuTensor<T>)slot).Span);
            bytes += h.Bytes;
        }

        public void CopyIn(IHostWeight host, QuantizedWeight slot)
        {
            var h = (HostQuantized)host;
            var q = (CpuQuantizedWeight<T>)slot;
            h.Codes.CopyTo(q.Codes, 0);
            h.Scale.CopyTo(q.Scale, 0);
            bytes += h.Bytes;
        }

        public void EndCopy(int copy) => clock.Stop();
        public void ComputeWaits(int copy) { }
        public void Computed(int slot) { }

        public SwapOverlap TakeOverlap()
        {
            double ms = clock.Elapsed.TotalMilliseconds;
            var r = new SwapOverlap(copies, bytes, ms, ms);
            clock.Reset();
            copies = 0;
            bytes = 0;
            return r;
        }

        public void Dispose() { }

        sealed class HostTensor(T[] data, int[] shape) : IHostWeight
        {
            public T[] Data { get; } = data;
            public int[] Shape { get; } = shape;
            public long Bytes => (long)Data.Length * System.Runtime.CompilerServices.Unsafe.SizeOf<T>();
            public bool Quantized => false;
            public float[] Values() => Array.ConvertAll(Data, v => float.CreateTruncating(v));
            public void Dispose() { }
        }
    }

    sealed class HostQuantized(byte[] codes, float[] scale, int rows, int cols) : IHostWeight
    {
        public byte[] Codes { get; } = codes;
        public float[] Scale { get; } = scale;
        public int[] Shape { get; } = [rows, cols];
        public long Bytes => Codes.LongLength + 4L * Scale.Length;
        public bool Quantized => true;
        public float[] Values() => HostFp8.Decode(Codes, Scale, cols);
        public void Dispose() { }
    }
}

/// <summary>The values of host-held E4M3 codes with one scale per row: scale[j] · e4m3(code), in fp64 then rounded once.</summary>
public static class HostFp8
{
    public static float[] Decode(ReadOnlySpan<byte> codes, ReadOnlySpan<float> scale, int cols)
    {
        var v = new float[codes.Length];
        for (int i = 0; i < v.Length; i++) v[i] = (float)(scale[i / cols] * (double)HalfPrecision.Float8E4M3ToFloat(codes[i]));
        return v;
    }
}
