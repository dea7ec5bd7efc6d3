using System.Runtime.InteropServices;

namespace MetaLoraNative.Kernels.Native;

/// <summary>
/// The driver calls of the device step: the pinned host buffer its scalars are read back into, and stream capture
/// and CUDA graphs (capture one step, replay it). C names kept as the driver's; call through <see cref="CudaCheck"/>.
/// A class of their own beside <see cref="CuDriver"/>, so other additions to the driver bindings do not collide.
/// </summary>
public static unsafe partial class CuGraph
{
    static CuGraph() => NativeLibraries.EnsureRegistered();

    const string Lib = NativeLibraries.Cuda;

    // CUstreamCaptureMode: a capture that only this thread's calls may disturb.
    public const int CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1;
    // CUstreamCaptureStatus
    public const int CU_STREAM_CAPTURE_STATUS_NONE = 0;
    public const int CU_STREAM_CAPTURE_STATUS_ACTIVE = 1;

    // Page-locked host memory: the target of an asynchronous device→host copy that does not block the host.
    [LibraryImport(Lib)] public static partial int cuMemAllocHost_v2(out IntPtr pp, nuint bytesize);
    [LibraryImport(Lib)] public static partial int cuMemFreeHost(IntPtr p);

    [LibraryImport(Lib)] public static partial int cuStreamBeginCapture_v2(IntPtr hStream, int mode);
    [LibraryImport(Lib)] public static partial int cuStreamEndCapture(IntPtr hStream, out IntPtr phGraph);
    [LibraryImport(Lib)] public static partial int cuStreamIsCapturing(IntPtr hStream, out int captureStatus);
    [LibraryImport(Lib)] public static partial int cuGraphInstantiateWithFlags(out IntPtr phGraphExec, IntPtr hGraph, ulong flags);
    [LibraryImport(Lib)] public static partial int cuGraphLaunch(IntPtr hGraphExec, IntPtr hStream);
    [LibraryImport(Lib)] public static partial int cuGraphExecDestroy(IntPtr hGraphExec);
    [LibraryImport(Lib)] public static partial int cuGraphDestroy(IntPtr hGraph);
}

/// <summary>A page-locked host buffer (cuMemAllocHost).</summary>
public sealed class PinnedHostHandle : SafeHandle
{
    public PinnedHostHandle(IntPtr p, long bytes) : base(IntPtr.Zero, true)
    {
        SetHandle(p);
        Bytes = bytes;
    }

    public long Bytes { get; }
    public override bool IsInvalid => handle == IntPtr.Zero;

    protected override bool ReleaseHandle()
    {
        try { return CuGraph.cuMemFreeHost(handle) == CuDriver.CUDA_SUCCESS; }
        catch { return false; }
    }
}

/// <summary>A captured graph (cuStreamEndCapture) or its executable instance (cuGraphInstantiateWithFlags).</summary>
public sealed class CudaGraphHandle : SafeHandle
{
    readonly bool executable;

    public CudaGraphHandle(IntPtr graph, bool executable) : base(IntPtr.Zero, true)
    {
        SetHandle(graph);
        this.executable = executable;
    }

    public override bool IsInvalid => handle == IntPtr.Zero;

    protected override bool ReleaseHandle()
    {
        try { return (executable ? CuGraph.cuGraphExecDestroy(handle) : CuGraph.cuGraphDestroy(handle)) == CuDriver.CUDA_SUCCESS; }
        catch { return false; }
    }
}
