using System.Runtime.InteropServices;

namespace MetaLoraNative.Kernels.Native;

// Driver objects as SafeHandles. ReleaseHandle runs on the finalizer thread too, so it never throws: it returns
// false on a failed release (the runtime reports that through its own channel) and swallows a missing library.

/// <summary>A retained primary context of one device.</summary>
public sealed class CudaContextHandle : SafeHandle
{
    public CudaContextHandle(IntPtr ctx, int device) : base(IntPtr.Zero, true)
    {
        SetHandle(ctx);
        Device = device;
    }

    public int Device { get; }
    public override bool IsInvalid => handle == IntPtr.Zero;

    /// <summary>
    /// Makes this context current on the calling thread unless it already is. The current context is per thread and
    /// any library in the process may change it (another backend, ONNX Runtime's CUDA provider), so every driver call
    /// path asks the driver rather than trusting a cached flag; cuCtxGetCurrent is a thread-local read.
    /// </summary>
    public void MakeCurrent()
    {
        ObjectDisposedException.ThrowIf(IsClosed, this);
        CudaCheck.Cu(CuDriver.cuCtxGetCurrent(out IntPtr current));
        if (current != handle) CudaCheck.Cu(CuDriver.cuCtxSetCurrent(handle));
    }

    protected override bool ReleaseHandle()
    {
        try { return CuDriver.cuDevicePrimaryCtxRelease_v2(Device) == CuDriver.CUDA_SUCCESS; }
        catch { return false; }
    }
}

public sealed class CudaStreamHandle : SafeHandle
{
    public CudaStreamHandle(IntPtr stream) : base(IntPtr.Zero, true) => SetHandle(stream);
    public override bool IsInvalid => handle == IntPtr.Zero;

    protected override bool ReleaseHandle()
    {
        try { return CuDriver.cuStreamDestroy_v2(handle) == CuDriver.CUDA_SUCCESS; }
        catch { return false; }
    }
}

public sealed class CudaEventHandle : SafeHandle
{
    public CudaEventHandle(IntPtr ev) : base(IntPtr.Zero, true) => SetHandle(ev);
    public override bool IsInvalid => handle == IntPtr.Zero;

    protected override bool ReleaseHandle()
    {
        try { return CuDriver.cuEventDestroy_v2(handle) == CuDriver.CUDA_SUCCESS; }
        catch { return false; }
    }
}

public sealed class CudaModuleHandle : SafeHandle
{
    public CudaModuleHandle(IntPtr module) : base(IntPtr.Zero, true) => SetHandle(module);
    public override bool IsInvalid => handle == IntPtr.Zero;

    protected override bool ReleaseHandle()
    {
        try { return CuDriver.cuModuleUnload(handle) == CuDriver.CUDA_SUCCESS; }
        catch { return false; }
    }
}

public sealed class CublasLtHandle : SafeHandle
{
    public CublasLtHandle(IntPtr h) : base(IntPtr.Zero, true) => SetHandle(h);
    public override bool IsInvalid => handle == IntPtr.Zero;

    protected override bool ReleaseHandle()
    {
        try { return CublasLt.cublasLtDestroy(handle) == CublasLt.CUBLAS_STATUS_SUCCESS; }
        catch { return false; }
    }
}
