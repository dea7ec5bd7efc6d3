using System.Runtime.InteropServices;

namespace MetaLoraNative.Kernels.Native;

/// <summary>
/// CUDA driver API (libcuda), C names kept so NVIDIA's documentation can be searched. CUresult is an int;
/// CUdevice an int; CUdeviceptr an unsigned 64-bit integer; every other driver object an opaque pointer.
/// Call through <see cref="CudaCheck"/>.
/// </summary>
public static unsafe partial class CuDriver
{
    static CuDriver() => NativeLibraries.EnsureRegistered();

    const string Lib = NativeLibraries.Cuda;

    public const int CUDA_SUCCESS = 0;

    // CUdevice_attribute
    public const int CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16;
    public const int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75;
    public const int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76;

    public const uint CU_EVENT_DEFAULT = 0;
    /// <summary>An event used only for ordering and completion queries (cheaper than a timing event).</summary>
    public const uint CU_EVENT_DISABLE_TIMING = 2;
    /// <summary>cuEventQuery's answer while the work before the event is still running.</summary>
    public const int CUDA_ERROR_NOT_READY = 600;
    /// <summary>cuStreamCreate flag: no implicit synchronisation with the legacy default stream (stream 0).</summary>
    public const uint CU_STREAM_NON_BLOCKING = 1;

    [LibraryImport(Lib)] public static partial int cuInit(uint flags);
    [LibraryImport(Lib)] public static partial int cuDriverGetVersion(out int driverVersion);
    [LibraryImport(Lib)] public static partial int cuGetErrorString(int error, out IntPtr pStr);
    [LibraryImport(Lib)] public static partial int cuGetErrorName(int error, out IntPtr pStr);

    [LibraryImport(Lib)] public static partial int cuDeviceGetCount(out int count);
    [LibraryImport(Lib)] public static partial int cuDeviceGet(out int device, int ordinal);
    [LibraryImport(Lib)] public static partial int cuDeviceGetName(byte* name, int len, int dev);
    [LibraryImport(Lib)] public static partial int cuDeviceGetAttribute(out int pi, int attrib, int dev);
    [LibraryImport(Lib)] public static partial int cuDeviceTotalMem_v2(out nuint bytes, int dev);

    [LibraryImport(Lib)] public static partial int cuDevicePrimaryCtxRetain(out IntPtr pctx, int dev);
    [LibraryImport(Lib)] public static partial int cuDevicePrimaryCtxRelease_v2(int dev);
    [LibraryImport(Lib)] public static partial int cuCtxSetCurrent(IntPtr ctx);
    [LibraryImport(Lib)] public static partial int cuCtxGetCurrent(out IntPtr pctx);

    [LibraryImport(Lib)] public static partial int cuMemGetInfo_v2(out nuint free, out nuint total);
    [LibraryImport(Lib)] public static partial int cuMemAlloc_v2(out ulong dptr, nuint bytesize);
    [LibraryImport(Lib)] public static partial int cuMemFree_v2(ulong dptr);
    [LibraryImport(Lib)] public static partial int cuMemcpyHtoDAsync_v2(ulong dstDevice, void* srcHost, nuint byteCount, IntPtr hStream);
    [LibraryImport(Lib)] public static partial int cuMemcpyDtoDAsync_v2(ulong dstDevice, ulong srcDevice, nuint byteCount, IntPtr hStream);
    [LibraryImport(Lib)] public static partial int cuMemcpyDtoHAsync_v2(void* dstHost, ulong srcDevice, nuint byteCount, IntPtr hStream);
    /// <summary>Page-locked host memory the copy engines read directly (block swap's host copies); flags 0.</summary>
    [LibraryImport(Lib)] public static partial int cuMemHostAlloc(out IntPtr pp, nuint bytesize, uint flags);
    [LibraryImport(Lib)] public static partial int cuMemFreeHost(IntPtr p);
    [LibraryImport(Lib)] public static partial int cuMemsetD8Async(ulong dstDevice, byte uc, nuint n, IntPtr hStream);

    [LibraryImport(Lib)] public static partial int cuStreamCreate(out IntPtr phStream, uint flags);
    [LibraryImport(Lib)] public static partial int cuStreamDestroy_v2(IntPtr hStream);
    [LibraryImport(Lib)] public static partial int cuStreamSynchronize(IntPtr hStream);
    /// <summary>Work queued on hStream after this waits for the event's most recent record (flags 0).</summary>
    [LibraryImport(Lib)] public static partial int cuStreamWaitEvent(IntPtr hStream, IntPtr hEvent, uint flags);

    [LibraryImport(Lib)] public static partial int cuEventCreate(out IntPtr phEvent, uint flags);
    [LibraryImport(Lib)] public static partial int cuEventDestroy_v2(IntPtr hEvent);
    [LibraryImport(Lib)] public static partial int cuEventRecord(IntPtr hEvent, IntPtr hStream);
    [LibraryImport(Lib)] public static partial int cuEventSynchronize(IntPtr hEvent);
    [LibraryImport(Lib)] public static partial int cuEventQuery(IntPtr hEvent);
    [LibraryImport(Lib)] public static partial int cuEventElapsedTime(out float pMilliseconds, IntPtr hStart, IntPtr hEnd);

    [LibraryImport(Lib)] public static partial int cuModuleLoadData(out IntPtr module, void* image);
    [LibraryImport(Lib)] public static partial int cuModuleUnload(IntPtr hmod);
    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int cuModuleGetFunction(out IntPtr hfunc, IntPtr hmod, string name);

    // The capture range of `nsys profile --capture-range=cudaProfilerApi` and `ncu --profile-from-start off`.
    [LibraryImport(Lib)] public static partial int cuProfilerStart();
    [LibraryImport(Lib)] public static partial int cuProfilerStop();

    [LibraryImport(Lib)]
    public static partial int cuLaunchKernel(IntPtr f, uint gridDimX, uint gridDimY, uint gridDimZ,
        uint blockDimX, uint blockDimY, uint blockDimZ, uint sharedMemBytes, IntPtr hStream, void** kernelParams, void** extra);

    /// <summary>The driver's message for a CUresult, or its number when the driver cannot say.</summary>
    public static string ErrorString(int result)
    {
        try
        {
            string name = cuGetErrorName(result, out IntPtr n) == CUDA_SUCCESS && n != IntPtr.Zero ? Marshal.PtrToStringUTF8(n)! : $"CUresult {result}";
            string text = cuGetErrorString(result, out IntPtr s) == CUDA_SUCCESS && s != IntPtr.Zero ? Marshal.PtrToStringUTF8(s)! : "";
            return text.Length > 0 ? $"{name}: {text}" : name;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return $"CUresult {result}";
        }
    }
}
