using System.Numerics;
using MetaLoraNative.Engine.Planning;

namespace MetaLoraNative.Engine.Backends.Cpu;

// Memory: allocation (zeroed, or poisoned with NaN for Empty), upload/download, copy and fill. Uploads and downloads convert element by element; fp64 values
// uploaded to the fp64 engine are kept exactly. The ledger counts live bytes and their peak as DevicePool does on the
// GPU (without its size classes: an array costs its elements), so the memory planner's CPU predictions can be checked
// against a measured peak, and a cap makes an allocation past it fail as a card of that size would.
public sealed partial class CpuBackend<T>
{
    private readonly MemoryLedger _ledger;

    /// <summary>The most bytes of tensors and quantised weights alive at once since this backend was created.</summary>
    public long PeakBytes => _ledger.Peak;

    /// <summary>Bytes of tensors and quantised weights alive now.</summary>
    public long LiveBytes => _ledger.Live;

    /// <summary>Refuses any allocation that would take <see cref="LiveBytes"/> past <paramref name="bytes"/> (0: no cap).</summary>
    public void CapMemory(long bytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        _ledger.Cap = bytes;
    }

    public Tensor Zeros(params int[] shape) => New(shape);

    /// <summary>Both precisions are T on the CPU: masters of the fp32 engine are fp32, of the fp64 oracle fp64.</summary>
    public Tensor Zeros(int[] shape, Precision precision) => New(shape);

    /// <summary>
    /// Poisoned: every element NaN, so an op that reads an element its caller promised to write first propagates NaN
    /// into what the tests compare (the fp64 oracle's outputs and gradients). An allocation, no launch.
    /// </summary>
    public Tensor Empty(params int[] shape) => Poisoned(shape);

    public Tensor Empty(int[] shape, Precision precision) => Poisoned(shape);

    /// <summary>
    /// Empty returns zeros instead of NaN: the engine as it was before Empty existed, for the one comparison that
    /// needs it (a step with Empty against the same step with every Empty a Zeros). Off by default, and nothing but
    /// that test sets it: every run and every other test gets the poison.
    /// </summary>
    public bool EmptyAsZeros { get; init; }

    CpuTensor<T> Poisoned(int[] shape)
    {
        var t = New(shape);
        if (!EmptyAsZeros) t.Span.Fill(T.NaN);
        return t;
    }

    public Tensor Upload(ReadOnlySpan<float> values, int[] shape, Precision precision) => Upload(values, shape);

    public Tensor Upload(ReadOnlySpan<float> values, params int[] shape) => UploadFrom(values, shape);

    public Tensor Upload(ReadOnlySpan<double> values, params int[] shape) => UploadFrom(values, shape);

    /// <summary>Host values of either width, each widened to fp64 and stored once (exact for the fp64 oracle).</summary>
    Tensor UploadFrom<TSource>(ReadOnlySpan<TSource> values, int[] shape) where TSource : unmanaged, INumberBase<TSource>
    {
        var t = New(shape);
        if (values.Length != t.Length)
            throw new ArgumentException($"Upload: {values.Length} values do not fill shape {Shapes.Format(shape)}");
        var s = t.Span;
        for (int i = 0; i < s.Length; i++) s[i] = Store(double.CreateTruncating(values[i]));
        return t;
    }

    public float[] Download(Tensor t)
    {
        Counted.Sync();
        var s = Cpu(t, "Download", "t").Span;
        var r = new float[s.Length];
        for (int i = 0; i < s.Length; i++) r[i] = (float)Wide(s[i]);
        return r;
    }

    public double[] DownloadDouble(Tensor t)
    {
        Counted.Sync();
        var s = Cpu(t, "DownloadDouble", "t").Span;
        var r = new double[s.Length];
        for (int i = 0; i < s.Length; i++) r[i] = Wide(s[i]);
        return r;
    }

    public void Copy(Tensor src, Tensor dst)
    {
        Counted.Launch();
        var a = Cpu(src, "Copy", "src");
        var b = Cpu(dst, "Copy", "dst");
        if (a.Length != b.Length)
            throw new ArgumentException($"Copy: element counts differ, src {S(src)} vs dst {S(dst)}");
        a.Span.CopyTo(b.Span); // Span.CopyTo is safe for overlapping views of one array
    }

    public void Fill(Tensor t, float value)
    {
        Counted.Launch();
        Cpu(t, "Fill", "t").Span.Fill(Store(value));
    }
}

/// <summary>Live and peak bytes of one CPU backend, with an optional hard cap. Safe from several threads.</summary>
internal sealed class MemoryLedger(string backend)
{
    private readonly object _gate = new();
    private long _live, _peak, _cap;

    public long Live { get { lock (_gate) return _live; } }
    public long Peak { get { lock (_gate) return _peak; } }
    public long Cap { get { lock (_gate) return _cap; } set { lock (_gate) _cap = value; } }

    /// <summary>Counts an allocation of <paramref name="bytes"/>, or throws when it would pass the cap.</summary>
    public void Take(long bytes)
    {
        lock (_gate)
        {
            if (_cap > 0 && _live + bytes > _cap) throw new MemoryCapExceededException(backend, _cap, bytes, _live);
            _live += bytes;
            _peak = Math.Max(_peak, _live);
        }
    }

    public void Give(long bytes)
    {
        lock (_gate) _live -= bytes;
    }
}

/// <summary>One counted allocation shared by a tensor and its reshapes: its bytes leave the ledger with the last view.</summary>
internal sealed class CpuStorage
{
    private readonly MemoryLedger _ledger;
    private readonly long _bytes;
    private int _refs = 1;

    public CpuStorage(MemoryLedger ledger, long bytes)
    {
        ledger.Take(bytes);
        _ledger = ledger;
        _bytes = bytes;
    }

    public void AddRef() => Interlocked.Increment(ref _refs);

    public void Release()
    {
        if (Interlocked.Decrement(ref _refs) == 0) _ledger.Give(_bytes);
    }
}
