using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using MetaLoraNative.Engine.Benchmarks;

namespace MetaLoraNative.Engine.Backends.Cpu;

/// <summary>The two CPU engines: fp32 (the normal CPU engine) and fp64 (the oracle the gradient checks use).</summary>
public static class CpuBackend
{
    /// <summary>A new fp32 engine ("cpu-f32"); reductions still accumulate in fp64.</summary>
    public static IBackend F32() => new CpuBackend<float>();

    /// <summary>A new fp64 engine ("cpu-f64"); every op is exact to fp64 rounding.</summary>
    public static IBackend F64() => new CpuBackend<double>();
}

/// <summary>
/// The CPU reference implementation of <see cref="IBackend"/>, generic over the element type.
///
/// Contract (on top of the interface's):
/// - Storage is <typeparamref name="T"/>; every op computes in fp64 and rounds once when it stores, so the fp32
///   engine differs from the fp64 one only by storage rounding (plus the fp32 lse kept between attention passes).
/// - Reductions (dot products, norms, softmax sums, losses) accumulate in fp64 for both element types.
/// - Work is split over threads with Parallel.For only when it is large enough to pay for the hand-off.
/// - Outputs never alias inputs; in-place ops (AddInPlace, AddNarrow, Gemm's c, AdamW) say so in their names or docs.
/// The op bodies live in the partial files next to this one, one op group of IBackend (forward and backward ops
/// side by side) per file, named by the group: CpuBackend.Memory, .Gemm, .Elementwise, .Layout, .Norm, .Attention,
/// .Conditioning, .Objective, .Quant.
/// - Every op is counted as the GPU issues it (<see cref="Counters"/>): one launch per op that runs as kernels there,
///   a GEMM per product, a synchronisation per value handed to the host, an allocation per tensor.
/// - Memory is counted as the CUDA pool counts it: every tensor's array (and every quantised weight) from its
///   allocation until its last view is disposed (<see cref="PeakBytes"/>, <see cref="LiveBytes"/>, a cap from
///   <see cref="CapMemory"/>). Scratch that an op allocates and drops inside itself (Gemm's transposed operand
///   blocks, attention's row accumulators) is host workspace outside that count.
/// </summary>
public sealed partial class CpuBackend<T> : IBackend where T : unmanaged, IFloatingPointIeee754<T>
{
    /// <summary>Below this many multiply-adds a loop runs on the calling thread.</summary>
    private const long ParallelThreshold = 1 << 15;

    public CpuBackend()
    {
        if (typeof(T) != typeof(float) && typeof(T) != typeof(double))
            throw new NotSupportedException($"CpuBackend<{typeof(T).Name}>: only float and double storage are supported");
        Name = typeof(T) == typeof(float) ? "cpu-f32" : "cpu-f64";
        _ledger = new MemoryLedger(Name);
    }

    public string Name { get; }

    /// <summary>The ops this backend ran, counted as a GPU would issue them (<see cref="LaunchCounters"/>).</summary>
    public LaunchCounters? Counters => Counted;
    internal LaunchCounters Counted { get; } = new();
    /// <summary>The route the counters give the CPU's GEMMs.</summary>
    const string CpuRoute = "cpu";

    public void Dispose() { }

    public override string ToString() => Name;

    // ---------------------------------------------------------------- helpers

    /// <summary>Widens one element to fp64 (exact for float and double).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static double Wide(T x)
    {
        if (typeof(T) == typeof(double)) return Unsafe.As<T, double>(ref x);
        if (typeof(T) == typeof(float)) return Unsafe.As<T, float>(ref x);
        return double.CreateTruncating(x);
    }

    /// <summary>Rounds an fp64 value to the element type (round to nearest).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static T Store(double x)
    {
        if (typeof(T) == typeof(double)) return Unsafe.As<double, T>(ref x);
        if (typeof(T) == typeof(float)) { float f = (float)x; return Unsafe.As<float, T>(ref f); }
        return T.CreateTruncating(x);
    }

    /// <summary>The CPU view of an argument, or an ArgumentException naming the op and the argument.</summary>
    private CpuTensor<T> Cpu(Tensor t, string op, string arg)
    {
        ArgumentNullException.ThrowIfNull(t, arg);
        return t as CpuTensor<T>
            ?? throw new ArgumentException($"{op}: {arg} is a {t} tensor, but this backend is {Name}");
    }

    /// <summary>A fresh zero tensor, counted in the ledger (and refused there when it would pass the cap).</summary>
    private CpuTensor<T> New(params int[] shape)
    {
        long n = Shapes.Numel(shape);
        var storage = new CpuStorage(_ledger, n * Unsafe.SizeOf<T>());
        Counted.Allocation(n * Unsafe.SizeOf<T>());
        return new(this, storage, new T[n], 0, (int[])shape.Clone());
    }

    private static int[] WithLast(int[] shape, int last)
    {
        var s = (int[])shape.Clone();
        s[^1] = last;
        return s;
    }

    private static string S(Tensor t) => Shapes.Format(t.Shape);

    /// <summary>
    /// Runs body(start, end) over [0, n) in chunks; in parallel when n · costPerItem multiply-adds are worth it.
    /// </summary>
    private static void ForChunks(int n, long costPerItem, Action<int, int> body)
    {
        if (n <= 0) return;
        int chunks = (int)Math.Min(n, Environment.ProcessorCount * 4L);
        if (chunks <= 1 || n * Math.Max(1, costPerItem) < ParallelThreshold)
        {
            body(0, n);
            return;
        }
        Parallel.For(0, chunks, c =>
        {
            int start = (int)((long)n * c / chunks), end = (int)((long)n * (c + 1) / chunks);
            if (end > start) body(start, end);
        });
    }

    /// <summary>Σ a·b accumulated in fp64 (float products are exact in fp64, so only the sum rounds).</summary>
    internal static double Dot(ReadOnlySpan<T> a, ReadOnlySpan<T> b)
    {
        if (typeof(T) == typeof(float))
            return DotF32(MemoryMarshal.Cast<T, float>(a), MemoryMarshal.Cast<T, float>(b));
        if (typeof(T) == typeof(double))
            return DotF64(MemoryMarshal.Cast<T, double>(a), MemoryMarshal.Cast<T, double>(b));
        double s = 0;
        for (int i = 0; i < a.Length; i++) s += Wide(a[i]) * Wide(b[i]);
        return s;
    }

    private static double DotF32(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        int n = a.Length, i = 0, w = Vector<float>.Count;
        double s = 0;
        if (Vector.IsHardwareAccelerated && n >= w)
        {
            Vector<double> acc0 = Vector<double>.Zero, acc1 = Vector<double>.Zero;
            for (; i <= n - w; i += w)
            {
                Vector.Widen(new Vector<float>(a[i..]), out var al, out var ah);
                Vector.Widen(new Vector<float>(b[i..]), out var bl, out var bh);
                acc0 += al * bl;
                acc1 += ah * bh;
            }
            s = Vector.Sum(acc0 + acc1);
        }
        for (; i < n; i++) s += (double)a[i] * b[i];
        return s;
    }

    private static double DotF64(ReadOnlySpan<double> a, ReadOnlySpan<double> b)
    {
        int n = a.Length, i = 0, w = Vector<double>.Count;
        double s = 0;
        if (Vector.IsHardwareAccelerated && n >= 2 * w)
        {
            Vector<double> acc0 = Vector<double>.Zero, acc1 = Vector<double>.Zero;
            for (; i <= n - 2 * w; i += 2 * w)
            {
                acc0 += new Vector<double>(a[i..]) * new Vector<double>(b[i..]);
                acc1 += new Vector<double>(a[(i + w)..]) * new Vector<double>(b[(i + w)..]);
            }
            s = Vector.Sum(acc0 + acc1);
        }
        for (; i < n; i++) s += a[i] * b[i];
        return s;
    }

    /// <summary>acc[i] += alpha · x[i] in fp64 (attention's row accumulators).</summary>
    private static void Axpy(Span<double> acc, double alpha, ReadOnlySpan<T> x)
    {
        for (int i = 0; i < acc.Length; i++) acc[i] += alpha * Wide(x[i]);
    }
}
