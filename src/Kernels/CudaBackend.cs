using System.Runtime.InteropServices;
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
/// Everything runs on one stream; Download synchronises it. Launchers follow one shape: NVTX range (the op's name),
/// fixed block size, size checks, ceil-div grid, launch, check.
/// </summary>
public sealed partial class CudaBackend : IBackend
{
    const int Block = 256;

    readonly CudaContextHandle context;
    readonly CudaStreamHandle streamHandle;
    readonly CublasLtHandle blasLt;
    readonly KernelCompiler compiler;
    readonly Dictionary<string, CudaModuleHandle> modules = [];
    readonly Dictionary<(string, string), IntPtr> functions = [];
    readonly object moduleGate = new();
    bool disposed;

    // Which backend instance last made its context current on this thread. An id rather than the context pointer:
    // a primary context released and retained again may come back at the same address.
    [ThreadStatic] static long currentOwner;
    static long nextId;
    readonly long id = Interlocked.Increment(ref nextId);

    CudaBackend(int ordinal, string? kernelCache)
    {
        CheckParamLayouts();
        CudaCheck.Cu(CuDriver.cuInit(0));
        Device = DeviceInfo.Query(ordinal);
        CudaCheck.Cu(CuDriver.cuDeviceGet(out int dev, ordinal));
        CudaCheck.Cu(CuDriver.cuDevicePrimaryCtxRetain(out IntPtr ctx, dev));
        context = new CudaContextHandle(ctx, dev);
        MakeCurrent();
        CudaCheck.Cu(CuDriver.cuStreamCreate(out IntPtr s, 0));
        streamHandle = new CudaStreamHandle(s);
        Pool = new DevicePool(s);
        CudaCheck.Blas(CublasLt.cublasLtCreate(out IntPtr lt));
        blasLt = new CublasLtHandle(lt);
        workspace = Pool.Rent(WorkspaceBytes, out _);
        compiler = new KernelCompiler(kernelCache);
        Arch = KernelCompiler.ArchFor(Device.Major, Device.Minor, KernelCompiler.NvrtcVersion().Major);
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
    /// <summary>The arch the kernels are compiled for (sm_90a on an H100 with NVRTC 12+).</summary>
    public string Arch { get; }
    public DevicePool Pool { get; }
    /// <summary>Peak bytes of tensors alive at once (pool size classes), since creation or <see cref="ResetPeak"/>.</summary>
    public long PeakBytes => Pool.PeakBytes;
    public void ResetPeak() => Pool.ResetPeak();

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

    internal IntPtr Stream => streamHandle.DangerousGetHandle();

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

    // ---------------------------------------------------------------- kernels and launches

    IntPtr Function(string file, string kernel)
    {
        lock (moduleGate)
        {
            if (functions.TryGetValue((file, kernel), out IntPtr f)) return f;
            if (!modules.TryGetValue(file, out var module))
            {
                module = new CudaModuleHandle(LoadModule(compiler.GetImage(file, Arch)));
                modules[file] = module;
            }
            CudaCheck.Cu(CuDriver.cuModuleGetFunction(out f, module.DangerousGetHandle(), kernel));
            functions[(file, kernel)] = f;
            return f;
        }
    }

    static unsafe IntPtr LoadModule(byte[] image)
    {
        IntPtr m;
        fixed (byte* p = image) CudaCheck.Cu(CuDriver.cuModuleLoadData(out m, p));
        return m;
    }

    /// <summary>The parameter structs' sizes, as the static_asserts in the .cu files state them.</summary>
    internal static unsafe void CheckParamLayouts()
    {
        void Expect(string name, int actual, int expected)
        {
            if (actual != expected) throw new InvalidOperationException($"{name} is {actual} bytes; the kernel expects {expected}");
        }
        Expect(nameof(LnParams), sizeof(LnParams), 88);
        Expect(nameof(RopeTableParams), sizeof(RopeTableParams), 72);
        Expect(nameof(AdamWParams), sizeof(AdamWParams), 80);
        Expect(nameof(AttnParams), sizeof(AttnParams), 112);
    }

    /// <summary>A kernel argument: any 4- or 8-byte scalar held in a 64-bit slot (little-endian, so 32-bit reads work).</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal readonly struct KArg
    {
        readonly ulong bits;
        KArg(ulong bits) => this.bits = bits;
        public ulong Bits => bits;
        public static implicit operator KArg(ulong v) => new(v);
        public static implicit operator KArg(long v) => new((ulong)v);
        public static implicit operator KArg(int v) => new((ulong)(uint)v);
        public static implicit operator KArg(float v) => new(BitConverter.SingleToUInt32Bits(v));
    }

    internal static uint CeilDiv(long n, long d)
    {
        long g = (n + d - 1) / d;
        if (g > int.MaxValue) throw new ArgumentException($"grid of {g} blocks is too large");
        return (uint)Math.Max(g, 1);
    }

    /// <summary>Grid of a 1-D grid-stride launch over n elements (capped: each thread loops).</summary>
    internal static uint Grid1D(long n) => (uint)Math.Min(CeilDiv(n, Block), 1L << 16);

    internal unsafe void Launch(string file, string kernel, (uint X, uint Y, uint Z) grid, (uint X, uint Y, uint Z) block,
        uint sharedBytes, params ReadOnlySpan<KArg> args)
    {
        IntPtr f = Function(file, kernel);
        int n = args.Length;
        ulong* slots = stackalloc ulong[Math.Max(n, 1)];
        void** ptrs = stackalloc void*[Math.Max(n, 1)];
        for (int i = 0; i < n; i++)
        {
            slots[i] = args[i].Bits;
            ptrs[i] = &slots[i];
        }
        CudaCheck.Cu(CuDriver.cuLaunchKernel(f, grid.X, grid.Y, grid.Z, block.X, block.Y, block.Z, sharedBytes, Stream, ptrs, null));
    }

    internal void Launch1D(string file, string kernel, long n, params ReadOnlySpan<KArg> args)
    {
        if (n == 0) return;
        Launch(file, kernel, (Grid1D(n), 1, 1), (Block, 1, 1), 0, args);
    }

    /// <summary>Launches a kernel whose only argument is a parameter struct (mirrored with LayoutKind.Sequential).</summary>
    internal unsafe void LaunchParams<T>(string file, string kernel, (uint X, uint Y, uint Z) grid, (uint X, uint Y, uint Z) block, in T p)
        where T : unmanaged
    {
        IntPtr f = Function(file, kernel);
        T copy = p;
        void** ptrs = stackalloc void*[1];
        ptrs[0] = &copy;
        CudaCheck.Cu(CuDriver.cuLaunchKernel(f, grid.X, grid.Y, grid.Z, block.X, block.Y, block.Z, 0, Stream, ptrs, null));
    }

    // ---------------------------------------------------------------- tensors

    internal CudaTensor Alloc(int[] shape, Precision precision = Precision.Compute)
    {
        long numel = Shapes.Numel(shape);
        long bytes = numel * (precision == Precision.Master ? 4 : 2);
        ulong ptr = Pool.Rent(bytes, out long cls);
        return new CudaTensor(this, new DeviceStorage(Pool, ptr, cls), (int[])shape.Clone(), precision);
    }

    internal CudaTensor T(Tensor t, string what = "tensor")
    {
        if (t is CudaTensor c && ReferenceEquals(c.Backend, this)) return c;
        throw new ArgumentException($"{what} {t} does not belong to this CUDA backend");
    }

    /// <summary>The tensor as bf16: itself, or a converted temporary that <see cref="Borrowed.Dispose"/> frees.</summary>
    internal Borrowed Bf16(Tensor t, string what = "tensor")
    {
        var c = T(t, what);
        if (c.Precision == Precision.Compute) return new Borrowed(c, false);
        var tmp = Alloc(c.Shape, Precision.Compute);
        Convert(c, tmp);
        return new Borrowed(tmp, true);
    }

    /// <summary>The tensor as fp32: itself, or a converted temporary.</summary>
    internal Borrowed F32(Tensor t, string what = "tensor")
    {
        var c = T(t, what);
        if (c.Precision == Precision.Master) return new Borrowed(c, false);
        var tmp = Alloc(c.Shape, Precision.Master);
        Convert(c, tmp);
        return new Borrowed(tmp, true);
    }

    internal readonly struct Borrowed(CudaTensor tensor, bool owned) : IDisposable
    {
        public CudaTensor T { get; } = tensor;
        public ulong Ptr => T.Ptr;
        public void Dispose()
        {
            if (owned) T.Dispose();
        }
    }

    void Convert(CudaTensor src, CudaTensor dst) =>
        Launch1D("memory.cu", "convert_kernel", src.Length, dst.Ptr, dst.Dt, src.Ptr, src.Dt, src.Length);

    // ---------------------------------------------------------------- memory ops

    public Tensor Zeros(params int[] shape) => Zeros(shape, Precision.Compute);

    public Tensor Zeros(int[] shape, Precision precision)
    {
        using var _ = Op("zeros");
        var t = Alloc(shape, precision);
        if (t.Bytes > 0) CudaCheck.Cu(CuDriver.cuMemsetD8Async(t.Ptr, 0, (nuint)t.Bytes, Stream));
        return t;
    }

    public Tensor Upload(ReadOnlySpan<float> values, params int[] shape) => Upload(values, shape, Precision.Compute);

    public unsafe Tensor Upload(ReadOnlySpan<float> values, int[] shape, Precision precision)
    {
        using var _ = Op("upload");
        Shapes.Require(values.Length == Shapes.Numel(shape), $"upload: {values.Length} values for shape {Shapes.Format(shape)}");
        var t = Alloc(shape, precision);
        if (values.Length == 0) return t;
        if (precision == Precision.Master)
        {
            fixed (float* p = values) CudaCheck.Cu(CuDriver.cuMemcpyHtoDAsync_v2(t.Ptr, p, (nuint)t.Bytes, Stream));
        }
        else
        {
            var bits = new ushort[values.Length];
            for (int i = 0; i < bits.Length; i++) bits[i] = Bf16Bits.FromFloat(values[i]);
            fixed (ushort* p = bits) CudaCheck.Cu(CuDriver.cuMemcpyHtoDAsync_v2(t.Ptr, p, (nuint)t.Bytes, Stream));
        }
        // Pageable sources are staged before the call returns, so the managed arrays may go now.
        return t;
    }

    public Tensor Upload(ReadOnlySpan<double> values, params int[] shape)
    {
        var f = new float[values.Length];
        for (int i = 0; i < f.Length; i++) f[i] = (float)values[i];
        return Upload(f, shape, Precision.Compute);
    }

    public unsafe float[] Download(Tensor t)
    {
        using var _ = Op("download");
        var c = T(t);
        var result = new float[c.Length];
        if (c.Length == 0) return result;
        if (c.Precision == Precision.Master)
        {
            fixed (float* p = result) CudaCheck.Cu(CuDriver.cuMemcpyDtoHAsync_v2(p, c.Ptr, (nuint)c.Bytes, Stream));
            CudaCheck.Cu(CuDriver.cuStreamSynchronize(Stream));
        }
        else
        {
            var bits = new ushort[c.Length];
            fixed (ushort* p = bits) CudaCheck.Cu(CuDriver.cuMemcpyDtoHAsync_v2(p, c.Ptr, (nuint)c.Bytes, Stream));
            CudaCheck.Cu(CuDriver.cuStreamSynchronize(Stream));
            for (int i = 0; i < bits.Length; i++) result[i] = Bf16Bits.ToFloat(bits[i]);
        }
        return result;
    }

    public double[] DownloadDouble(Tensor t) => Array.ConvertAll(Download(t), v => (double)v);

    public void Copy(Tensor src, Tensor dst)
    {
        using var _ = Op("copy");
        var s = T(src, "src");
        var d = T(dst, "dst");
        Shapes.Require(s.Length == d.Length, $"copy: {s} into {d}");
        Convert(s, d);
    }

    public void Fill(Tensor t, float value)
    {
        using var _ = Op("fill");
        var c = T(t);
        Launch1D("memory.cu", "fill_kernel", c.Length, c.Ptr, c.Dt, c.Length, value);
    }

    // ---------------------------------------------------------------- lifetime

    public void Dispose()
    {
        if (disposed) return;
        try { MakeCurrent(); CuDriver.cuStreamSynchronize(Stream); }
        catch (CudaException) { /* a sticky error: release what we can */ }
        disposed = true;
        DisposeGemmCache();
        foreach (var m in modules.Values) m.Dispose();
        modules.Clear();
        functions.Clear();
        blasLt.Dispose();
        Pool.Dispose();
        streamHandle.Dispose();
        context.Dispose();
        currentOwner = 0;
    }
}

/// <summary>bf16 bit conversions on the host, the same rounding as common.cuh (nearest, ties to even; NaN stays NaN).</summary>
public static class Bf16Bits
{
    public static ushort FromFloat(float f)
    {
        uint u = BitConverter.SingleToUInt32Bits(f);
        if ((u & 0x7fffffffu) > 0x7f800000u) return (ushort)((u >> 16) | 0x40);
        u += 0x7fffu + ((u >> 16) & 1u);
        return (ushort)(u >> 16);
    }

    public static float ToFloat(ushort h) => BitConverter.UInt32BitsToSingle((uint)h << 16);

    /// <summary>The bf16 value nearest to f, as a float.</summary>
    public static float Round(float f) => ToFloat(FromFloat(f));
}
