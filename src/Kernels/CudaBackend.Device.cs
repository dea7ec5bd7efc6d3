using MetaLoraNative.Kernels.Native;

namespace MetaLoraNative.Kernels;

// The device services: the context made current on every entry, the one stream, op scopes (NVTX range and the
// synchronous error check), the profiler's capture range, memory figures and timing.
public sealed partial class CudaBackend
{
    internal IntPtr Stream => streamHandle.DangerousGetHandle();

    /// <summary>Where the backend's one-time notices go (the PTX fallback); stderr unless a host redirects it.</summary>
    public static Action<string> Log { get; set; } = line => Console.Error.WriteLine(line);

    /// <summary>
    /// Synchronise and check the stream after every kernel launch and at the end of every op (GEMMs included), so the
    /// first failure names its op, the op's input shapes and the kernel. Costs a round trip per launch: for finding a
    /// fault, not for timing. Defaults to METALORA_SYNC_CHECK=1.
    /// </summary>
    public bool SyncCheck { get; set; } = Environment.GetEnvironmentVariable("METALORA_SYNC_CHECK") is "1" or "true" or "yes";

    // The op being run (outermost when ops nest), what it was handed, and the last kernel it launched: the context a
    // synchronous check reports. Inputs are recorded by T() only while SyncCheck is on.
    string? opName;
    int opDepth;
    bool opFailed;
    readonly List<string> opInputs = [];
    LaunchRecord? lastLaunch;

    readonly record struct LaunchRecord(string File, string Kernel, (uint X, uint Y, uint Z) Grid, (uint X, uint Y, uint Z) Block, uint SharedBytes)
    {
        public override string ToString() =>
            $"kernel {File}:{Kernel} grid ({Grid.X},{Grid.Y},{Grid.Z}) block ({Block.X},{Block.Y},{Block.Z}){(SharedBytes > 0 ? $" smem {SharedBytes}" : "")}";
    }

    /// <summary>The primary context is current per thread; test runners and thread pools move work between threads.</summary>
    void MakeCurrent() => context.MakeCurrent();

    /// <summary>Opens an op: context, NVTX range and, with SyncCheck, the op's error context. <c>using var _ = Op("name");</c></summary>
    OpScope Op(string name)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        MakeCurrent();
        if (opDepth++ == 0)
        {
            opName = name;
            opFailed = false;
            opInputs.Clear();
            lastLaunch = null;
        }
        Nvtx.RangePush(name);
        return new OpScope(this);
    }

    internal readonly struct OpScope(CudaBackend backend) : IDisposable
    {
        public void Dispose() => backend.EndOp();
    }

    void EndOp()
    {
        Nvtx.RangePop();
        if (--opDepth > 0) return;
        // After the op's last launch: catches cuBLASLt's kernels and the copies, which have no launch of ours.
        if (SyncCheck && !opFailed) CheckStream(null);
        opName = null;
    }

    /// <summary>Records an op's input for the sync check's report (called by T() for every tensor an op is handed).</summary>
    void RecordInput(string what, CudaTensor t)
    {
        if (SyncCheck && opDepth > 0 && opInputs.Count < 16) opInputs.Add($"{what} {t}");
    }

    /// <summary>Called right after every cuLaunchKernel with its result.</summary>
    void AfterLaunch(int result, in LaunchRecord launch)
    {
        lastLaunch = launch;
        Counted.Launch();
        if (result != CuDriver.CUDA_SUCCESS)
        {
            opFailed = true;
            throw new CudaException("CUDA driver", result, CuDriver.ErrorString(result), $"cuLaunchKernel of {launch} in {DescribeOp()}");
        }
        if (SyncCheck) CheckStream(launch);
    }

    void CheckStream(LaunchRecord? launch)
    {
        Counted.Sync();
        int rc = CuDriver.cuStreamSynchronize(Stream);
        if (rc == CuDriver.CUDA_SUCCESS) return;
        opFailed = true;
        string where = launch is { } l ? l.ToString() : lastLaunch is { } last ? $"after its last {last}" : "in cuBLASLt or a copy (no kernel of ours ran in it)";
        throw new CudaException("CUDA driver", rc, CuDriver.ErrorString(rc), $"cuStreamSynchronize (METALORA_SYNC_CHECK) {where}, {DescribeOp()}");
    }

    string DescribeOp() =>
        opName == null ? "outside any op" : $"op '{opName}'{(opInputs.Count > 0 ? $" ({string.Join(", ", opInputs)})" : "")}";

    /// <summary>
    /// Waits for the stream. Without SyncCheck an error here may come from any op queued before, so the message
    /// says how to find it.
    /// </summary>
    void SyncStream(string what)
    {
        Counted.Sync();
        int rc = CuDriver.cuStreamSynchronize(Stream);
        if (rc != CuDriver.CUDA_SUCCESS)
            throw new CudaException("CUDA driver", rc, CuDriver.ErrorString(rc),
                $"cuStreamSynchronize ({what}){(SyncCheck ? "" : "; the failing op may be any queued before: run with METALORA_SYNC_CHECK=1 to name it")}");
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

    /// <summary>
    /// Opens the profilers' capture range (cuProfilerStart): `nsys profile --capture-range=cudaProfilerApi` and
    /// `ncu --profile-from-start off` record only between this and <see cref="ProfilerStop"/>, NVTX or not.
    /// Without a profiler it does nothing.
    /// </summary>
    public void ProfilerStart()
    {
        MakeCurrent();
        SyncStream("before cuProfilerStart");
        CheckProfiler(CuDriver.cuProfilerStart(), "cuProfilerStart");
    }

    /// <summary>Closes the capture range after the queued work has finished.</summary>
    public void ProfilerStop()
    {
        MakeCurrent();
        SyncStream("before cuProfilerStop");
        CheckProfiler(CuDriver.cuProfilerStop(), "cuProfilerStop");
    }

    static void CheckProfiler(int result, string call)
    {
        // CUDA_ERROR_PROFILER_DISABLED .. _ALREADY_STOPPED (5..8): no profiler or a repeated call, not a failure.
        if (result is >= 5 and <= 8) return;
        if (result != CuDriver.CUDA_SUCCESS) throw new CudaException("CUDA driver", result, CuDriver.ErrorString(result), call);
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
        SyncStream("Synchronize");
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

    /// <summary>
    /// Captures <paramref name="step"/> on the backend's stream (cuStreamBeginCapture, thread-local mode) and
    /// instantiates it. Opt-in (bench --cuda-graph, METALORA_GRAPH=1) and not yet run on a GPU. Refused with
    /// METALORA_SYNC_CHECK, whose synchronisations a capture forbids.
    /// </summary>
    public Engine.IStepGraph? CaptureGraph(Action step)
    {
        if (SyncCheck) throw new InvalidOperationException("a CUDA graph cannot be captured with METALORA_SYNC_CHECK=1 (it synchronises after every launch)");
        MakeCurrent();
        SyncStream("before graph capture");
        CudaCheck.Cu(CuGraph.cuStreamBeginCapture_v2(Stream, CuGraph.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
        try
        {
            step();
        }
        catch
        {
            if (CuGraph.cuStreamEndCapture(Stream, out IntPtr broken) == CuDriver.CUDA_SUCCESS && broken != IntPtr.Zero) CuGraph.cuGraphDestroy(broken);
            throw;
        }
        CudaCheck.Cu(CuGraph.cuStreamEndCapture(Stream, out IntPtr graph));
        using var captured = new CudaGraphHandle(graph, executable: false);
        CudaCheck.Cu(CuGraph.cuGraphInstantiateWithFlags(out IntPtr exec, graph, 0));
        return new StepGraph(this, new CudaGraphHandle(exec, executable: true));
    }

    sealed class StepGraph(CudaBackend owner, CudaGraphHandle exec) : Engine.IStepGraph
    {
        public void Launch()
        {
            owner.MakeCurrent();
            owner.Counted.Launch();
            CudaCheck.Cu(CuGraph.cuGraphLaunch(exec.DangerousGetHandle(), owner.Stream));
        }

        public void Dispose() => exec.Dispose();
    }
}
