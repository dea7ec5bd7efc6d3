using System.Runtime.InteropServices;

namespace MetaLoraNative.Kernels.Native;

// Driver calls only the NCCL communicator needs: its watchdog thread asks whether queued work has finished without
// blocking, on the context the backend made current. Kept beside the communicator while CuDriver.cs is being moved.
public static partial class CuDriver
{
    /// <summary>cuEventQuery's answer while the work before the event is still running.</summary>
    public const int CUDA_ERROR_NOT_READY = 600;

    [LibraryImport(Lib)] public static partial int cuEventQuery(IntPtr hEvent);
    [LibraryImport(Lib)] public static partial int cuCtxGetCurrent(out IntPtr pctx);
}
