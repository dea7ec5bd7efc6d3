using MetaLoraNative.Kernels.Native;

namespace MetaLoraNative.Kernels;

// The device services: the context made current per thread, the one stream, NVTX ranges, memory figures and timing.
public sealed partial class CudaBackend
{
    // Which backend instance last made its context current on this thread. An id rather than the context pointer:
    // a primary context released and retained again may come back at the same address.
    [ThreadStatic] static long currentOwner;
    static long nextId;
    readonly long id = Interlocked.Increment(ref nextId);

    internal IntPtr Stream => streamHandle.DangerousGetHandle();

    /// <summary>The primary context is current per thread; test runners and thread pools move work between threads.</summary>
    void MakeCurrent()
    {
        if (currentOwner != id)
        {
            CudaCheck.Cu(CuDriver.cuCtxSetCurrent(context.DangerousGetHandle()));
            currentOwner = id;
        }
    }

    /// <summary>Opens an op: NVTX range and context. <c>using var _ = Op("name");</c></summary>
    Nvtx.RangeScope Op(string name)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        MakeCurrent();
        return Nvtx.Range(name);
    }

    /// <summary>An NVTX range for a model stage (blocks, layers); ops open their own.</summary>
    public IDisposable Range(string name)
    {
        MakeCurrent();
        Nvtx.RangePush(name);
        return new PopOnDispose();
    }

    sealed class PopOnDispose : IDisposable
    {
        public void Dispose() => Nvtx.RangePop();
    }

    public (long Free, long Total)? MemoryInfo
    {
        get
        {
            MakeCurrent();
            CudaCheck.Cu(CuDriver.cuMemGetInfo_v2(out nuint free, out nuint total));
            return ((long)free, (long)total);
        }
    }

    public void Synchronize()
    {
        MakeCurrent();
        CudaCheck.Cu(CuDriver.cuStreamSynchronize(Stream));
    }

    /// <summary>
    /// Milliseconds per call of <paramref name="action"/> on the GPU, measured with CUDA events around
    /// <paramref name="repetitions"/> calls after one warm-up call (which also compiles and loads kernels).
    /// </summary>
    public float TimeMs(Action action, int repetitions = 10)
    {
        MakeCurrent();
        action();
        CudaCheck.Cu(CuDriver.cuEventCreate(out IntPtr s, CuDriver.CU_EVENT_DEFAULT));
        using var start = new CudaEventHandle(s);
        CudaCheck.Cu(CuDriver.cuEventCreate(out IntPtr e, CuDriver.CU_EVENT_DEFAULT));
        using var end = new CudaEventHandle(e);
        CudaCheck.Cu(CuDriver.cuEventRecord(s, Stream));
        for (int i = 0; i < repetitions; i++) action();
        CudaCheck.Cu(CuDriver.cuEventRecord(e, Stream));
        CudaCheck.Cu(CuDriver.cuEventSynchronize(e));
        CudaCheck.Cu(CuDriver.cuEventElapsedTime(out float ms, s, e));
        return ms / repetitions;
    }
}
