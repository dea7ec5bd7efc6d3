using System.Runtime.InteropServices;
using MetaLoraNative.Kernels.Native;

namespace MetaLoraNative.Kernels;

// The kernel cache (one module per kernel file, compiled by NVRTC on first use for the device's arch, PTX as the
// fallback) and the launch helpers every launcher in Ops/ and Dev/ goes through.
public sealed partial class CudaBackend
{
    const int Block = 256;      // the block size of every 1-D and one-warp-per-row launch
    const int ChunkRows = 64;   // CHUNK_ROWS in common.cuh: rows per block-row of the chunked column reductions

    readonly Dictionary<string, CudaModuleHandle> modules = [];
    readonly Dictionary<(string, string), IntPtr> functions = [];
    readonly object moduleGate = new();

    /// <summary>Kernel <paramref name="kernel"/> of <paramref name="file"/> ("norm.cu", "dev/attention/02_mma_forward.cu").</summary>
    IntPtr Function(string file, string kernel)
    {
        lock (moduleGate)
        {
            if (functions.TryGetValue((file, kernel), out IntPtr f)) return f;
            if (!modules.TryGetValue(file, out var module))
            {
                module = new CudaModuleHandle(LoadModule(file));
                modules[file] = module;
            }
            CudaCheck.Cu(CuDriver.cuModuleGetFunction(out f, module.DangerousGetHandle(), kernel));
            functions[(file, kernel)] = f;
            return f;
        }
    }

    static int ptxFallbackLogged;

    /// <summary>
    /// The file's cubin for <see cref="ArchOf"/>; when the driver refuses it (a cubin from an NVRTC newer than the
    /// driver, an arch it does not know), the file's PTX for compute_XY instead, which the driver JIT-compiles.
    /// The first fallback of the process is logged.
    /// </summary>
    IntPtr LoadModule(string file)
    {
        string arch = ArchOf(file);
        int rc = TryLoadModule(compiler.GetImage(file, arch), out IntPtr m);
        if (rc == CuDriver.CUDA_SUCCESS) return m;
        string ptxArch = KernelCompiler.PtxArch(Device.Major, Device.Minor);
        if (Interlocked.Exchange(ref ptxFallbackLogged, 1) == 0)
            Log($"note: the driver did not load the {arch} cubin of {file} ({CuDriver.ErrorString(rc)}); loading {ptxArch} PTX instead " +
                "(JIT-compiled by the driver), for this and any other file whose cubin fails");
        int ptxRc = TryLoadModule(compiler.GetImage(file, ptxArch), out m);
        if (ptxRc != CuDriver.CUDA_SUCCESS)
            throw new CudaException("CUDA driver", ptxRc, CuDriver.ErrorString(ptxRc),
                $"cuModuleLoadData of {file} as {ptxArch} PTX, after its {arch} cubin failed with {CuDriver.ErrorString(rc)}");
        return m;
    }

    /// <summary>cuModuleLoadData's result; PTX images carry their terminating NUL (nvrtcGetPTX writes it).</summary>
    static unsafe int TryLoadModule(byte[] image, out IntPtr module)
    {
        fixed (byte* p = image) return CuDriver.cuModuleLoadData(out module, p);
    }

    void DisposeModules()
    {
        foreach (var m in modules.Values) m.Dispose();
        modules.Clear();
        functions.Clear();
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
        Expect(nameof(AttnParams), sizeof(AttnParams), 112);
        Expect(nameof(AdamWParams), sizeof(AdamWParams), 80);
        Expect(nameof(SumSquaresRanges), sizeof(SumSquaresRanges), 200);
        Expect(nameof(AdamWRanges), sizeof(AdamWRanges), 480);
        Expect(nameof(GroupedEntry), sizeof(GroupedEntry), 64);
        Expect(nameof(GroupedParams), sizeof(GroupedParams), 16);
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
        AfterLaunch(CuDriver.cuLaunchKernel(f, grid.X, grid.Y, grid.Z, block.X, block.Y, block.Z, sharedBytes, Stream, ptrs, null),
            new LaunchRecord(file, kernel, grid, block, sharedBytes));
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
        AfterLaunch(CuDriver.cuLaunchKernel(f, grid.X, grid.Y, grid.Z, block.X, block.Y, block.Z, 0, Stream, ptrs, null),
            new LaunchRecord(file, kernel, grid, block, 0));
    }
}
