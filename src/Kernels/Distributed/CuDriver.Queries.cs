using System.Runtime.InteropServices;

namespace MetaLoraNative.Kernels.Native;

// Driver calls only the NCCL communicator needs: its watchdog thread asks whether queued work has finished without
// blocking, on the context the backend made current; bucket packing copies device to device. Kept beside the communicator while CuDriver.cs is being moved.
public static unsafe partial class CuDriver
{
    /// <summary>cuEventQuery's answer while the work before the event is still running.</summary>
    public const int CUDA_ERROR_NOT_READY = 600;

    /// <summary>An event used only for ordering and completion queries (cheaper than a timing event).</summary>
    public const uint CU_EVENT_DISABLE_TIMING = 2;

    [LibraryImport(Lib)] public static partial int cuMemcpyDtoDAsync_v2(ulong dstDevice, ulong srcDevice, nuint byteCount, IntPtr hStream);
    [LibraryImport(Lib)] public static partial int cuEventQuery(IntPtr hEvent);
    [LibraryImport(Lib)] public static partial int cuCtxGetCurrent(out IntPtr pctx);
}
