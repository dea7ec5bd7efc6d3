using MetaLoraNative.Engine;
using MetaLoraNative.Kernels.Native;

namespace MetaLoraNative.Kernels;

/// <summary>
/// The GPU backend: bf16 storage for Precision.Compute, fp32 for Precision.Master, fp32 accumulation inside every
/// kernel (fp64 for the loss and gradient-norm sums). GEMMs go through cuBLASLt; every other op is a hand-written
/// kernel from kernels/*.cu, compiled by NVRTC for this device on first use (cached on disk).
///
/// Precision rules beyond IBackend's contract:
/// - Ops return Compute (bf16) tensors, except the saved statistics (LayerNorm stats, RMSNorm rstd, attention lse)
///   and the RoPE table, which stay fp32: they feed backward passes and rotations where bf16's 8 bits would be the
///   dominant error.
/// - Kernels read bf16; an fp32 input is first converted to a bf16 temporary (elementwise kernels with a dtype
///   code per pointer, such as Copy, AddInPlace, losses and AdamW, read fp32 directly).
/// - Gemm: fp32·fp32 into fp32 runs in fp32; any other mix converts fp32 inputs to bf16 and runs bf16·bf16 with
///   fp32 accumulation into c's precision (cuBLASLt needs A and B of one type).
///
/// Everything runs on one non-blocking stream (no implicit synchronisation with the legacy default stream that other
/// libraries may use); Download synchronises it. Launchers follow one shape: NVTX range (the op's name), fixed block
/// size, size checks, ceil-div grid, launch, check. With METALORA_SYNC_CHECK=1 (or <see cref="SyncCheck"/>) every
/// launch and every op ends with a stream synchronisation, so the first failing kernel or GEMM is named with its
/// op and input shapes instead of surfacing at a later download.
///
/// Files: this one holds the handles, bring-up and lifetime; CudaBackend.Device.cs the context, stream and timing
/// services; CudaBackend.Launch.cs the kernel cache and launches; Ops/CudaBackend.&lt;Group&gt;.cs one op group each
/// (the same groups as IBackend, CpuBackend and kernels/*.cu); Dev/ the opt-in kernels of the playground (kernels/dev).
/// </summary>
public sealed partial class CudaBackend : IBackend
{
    readonly CudaContextHandle context;
    readonly CudaStreamHandle streamHandle;
    readonly CublasLtHandle blasLt;
    readonly KernelCompiler compiler;
    readonly int nvrtcMajor;
    bool disposed;

    CudaBackend(int ordinal, string? kernelCache)
    {
        CheckParamLayouts();
        CudaCheck.Cu(CuDriver.cuInit(0));
        Device = DeviceInfo.Query(ordinal);
        CudaCheck.Cu(CuDriver.cuDeviceGet(out int dev, ordinal));
        CudaCheck.Cu(CuDriver.cuDevicePrimaryCtxRetain(out IntPtr ctx, dev));
        context = new CudaContextHandle(ctx, dev);
        MakeCurrent();
        CudaCheck.Cu(CuDriver.cuStreamCreate(out IntPtr s, CuDriver.CU_STREAM_NON_BLOCKING));
        streamHandle = new CudaStreamHandle(s);
        Pool = new DevicePool(s, context);
        CudaCheck.Blas(CublasLt.cublasLtCreate(out IntPtr lt));
        blasLt = new CublasLtHandle(lt);
        workspace = Pool.Rent(WorkspaceBytes, out _);
        compiler = new KernelCompiler(kernelCache);
        nvrtcMajor = KernelCompiler.NvrtcVersion().Major;
        Arch = KernelCompiler.ArchFor(Device.Major, Device.Minor, nvrtcMajor);
    }

    /// <summary>
    /// Opens device <paramref name="ordinal"/>; false with a one-line reason when the driver, a GPU of compute
    /// capability 8.0+, NVRTC or cuBLASLt is missing. Never throws.
    /// </summary>
    public static bool TryCreate(out CudaBackend? backend, out string reason, int ordinal = 0, string? kernelCache = null)
    {
        backend = null;
        try
        {
            foreach (string lib in new[] { NativeLibraries.Cuda, NativeLibraries.Nvrtc, NativeLibraries.CublasLt })
                if (NativeLibraries.TryLoad(lib, out string report) == IntPtr.Zero) { reason = report; return false; }
            int rc = CuDriver.cuInit(0);
            if (rc != CuDriver.CUDA_SUCCESS) { reason = $"cuInit failed: {CuDriver.ErrorString(rc)}"; return false; }
            CudaCheck.Cu(CuDriver.cuDeviceGetCount(out int count));
            if (ordinal >= count) { reason = $"no CUDA device {ordinal} ({count} visible)"; return false; }
            var info = DeviceInfo.Query(ordinal);
            if (info.Major < 8) { reason = $"{info.Name} is {info.Arch}; the bf16 kernels need sm_80 or newer"; return false; }
            backend = new CudaBackend(ordinal, kernelCache);
            reason = $"{info.Name} ({backend.Arch})";
            return true;
        }
        catch (Exception e)
        {
            reason = e.Message;
            return false;
        }
    }

    public string Name => "cuda";
    public DeviceInfo Device { get; }
    /// <summary>The device's arch (sm_90 on an H100); a file marked arch-specific gets sm_90a there (<see cref="ArchOf"/>).</summary>
    public string Arch { get; }

    /// <summary>The arch <paramref name="file"/> is compiled and loaded for on this device (KernelCompiler.DeviceArch).</summary>
    public string ArchOf(string file) => KernelCompiler.DeviceArch(file, Device.Major, Device.Minor, nvrtcMajor);
    public DevicePool Pool { get; }
    /// <summary>Peak bytes of tensors alive at once (pool size classes) since creation.</summary>
    public long PeakBytes => Pool.PeakBytes;
    public long LiveBytes => Pool.InUseBytes;
    public void CapMemory(long bytes) => Pool.CapBytes = bytes >= 0 ? bytes : throw new ArgumentOutOfRangeException(nameof(bytes));

    /// <summary>What this backend issued: each cuLaunchKernel, GEMM (by route), stream synchronisation, read-back and pool allocation.</summary>
    public Engine.Benchmarks.LaunchCounters? Counters => Counted;
    internal Engine.Benchmarks.LaunchCounters Counted { get; } = new();

    public void Dispose()
    {
        if (disposed) return;
        try { MakeCurrent(); CuDriver.cuStreamSynchronize(Stream); }
        catch (CudaException) { /* a sticky error: release what we can */ }
        disposed = true;
        DisposeGemmCache();
        DisposeGroupedTables();
        DisposeModules();
        blasLt.Dispose();
        Pool.Dispose();
        streamHandle.Dispose();
        context.Dispose();
    }
}
