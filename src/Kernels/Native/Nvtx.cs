using System.Runtime.InteropServices;

namespace MetaLoraNative.Kernels.Native;

/// <summary>
/// NVTX ranges (nvtxRangePushA / nvtxRangePop) for Nsight Systems and Nsight Compute. NVTX does nothing unless a
/// profiler is attached; a profiler announces itself by setting NVTX_INJECTION64_PATH to its injection library.
/// Two ways to reach it, the first that is there:
/// 1. libnvToolsExt.so.1 (NVTX2, shipped by CUDA 11–12 toolkits and the nvidia-nvtx-cu12 wheel, absent from CUDA 13):
///    NVIDIA's own library, which runs NVTX's loader itself.
/// 2. NVTX3's loader, done here (<see cref="Nvtx3Loader"/>): CUDA 12/13 ship NVTX3 as headers only, whose inline
///    code loads the injection library named by the variable and hands it a table of function-pointer slots to
///    fill; this class does the same from C#, so no library is needed.
/// Without either, every call is a no-op. `cuProfilerStart`/`cuProfilerStop` (CudaBackend.ProfilerStart) give the
/// profilers a capture range that needs neither.
/// </summary>
public static unsafe class Nvtx
{
    const string InjectionVariable = "NVTX_INJECTION64_PATH";

    static readonly delegate* unmanaged<byte*, int> libraryPush;
    static readonly delegate* unmanaged<int> libraryPop;
    static readonly Nvtx3Loader? loader;

    static Nvtx()
    {
        string? injection = Environment.GetEnvironmentVariable(InjectionVariable);
        NativeLibraries.EnsureRegistered();
        IntPtr lib = NativeLibraries.TryLoad(NativeLibraries.NvToolsExt, out string report);
        if (lib != IntPtr.Zero && NativeLibrary.TryGetExport(lib, "nvtxRangePushA", out IntPtr push)
            && NativeLibrary.TryGetExport(lib, "nvtxRangePop", out IntPtr pop))
        {
            libraryPush = (delegate* unmanaged<byte*, int>)push;
            libraryPop = (delegate* unmanaged<int>)pop;
            Status = string.IsNullOrEmpty(injection)
                ? $"libnvToolsExt ({report}); no profiler attached ({InjectionVariable} unset): ranges are no-ops until nsys/ncu runs the program"
                : $"libnvToolsExt ({report}) with the profiler's injection {injection}: ranges recorded";
            return;
        }
        if (string.IsNullOrEmpty(injection))
        {
            Status = $"no profiler attached ({InjectionVariable} unset): ranges are no-ops; under nsys/ncu they are recorded " +
                     "through NVTX3's injection, no libnvToolsExt needed";
            return;
        }
        var l = new Nvtx3Loader();
        Status = l.AttachLibrary(injection, out string why)
            ? $"NVTX3 injection {injection} attached (no libnvToolsExt here): ranges recorded"
            : $"NVTX3 injection {injection} could not be attached: {why}; ranges are no-ops";
        if (l.IsAttached) loader = l;
    }

    /// <summary>How ranges reach a profiler on this run, in one line (for `metalora doctor`).</summary>
    public static string Status { get; }

    /// <summary>True when ranges go somewhere: libnvToolsExt is loaded or a profiler's injection is attached.</summary>
    public static bool IsAvailable => libraryPush != null || loader != null;

    public static void RangePush(string name)
    {
        if (libraryPush == null && loader == null) return;
        int n = System.Text.Encoding.UTF8.GetMaxByteCount(name.Length) + 1;
        byte* s = stackalloc byte[Math.Min(n, 1024)];
        int len = System.Text.Encoding.UTF8.GetBytes(name.AsSpan(0, Math.Min(name.Length, 255)), new Span<byte>(s, Math.Min(n, 1024) - 1));
        s[len] = 0;
        if (libraryPush != null) libraryPush(s);
        else loader!.RangePushA(s);
    }

    public static void RangePop()
    {
        if (libraryPop != null) libraryPop();
        else loader?.RangePop();
    }

    /// <summary>using var _ = Nvtx.Range("op");</summary>
    public static RangeScope Range(string name)
    {
        RangePush(name);
        return new RangeScope();
    }

    public readonly struct RangeScope : IDisposable
    {
        public void Dispose() => RangePop();
    }
}

/// <summary>
/// NVTX3's injection handshake (the NVTX_LOAD_SEQUENCE of nvtxInit.h, done in C#). The tool's library exports
/// <c>int InitializeInjectionNvtx2(const void* (*getExportTable)(uint32_t id))</c>; it asks the export table
/// NVTX_ETID_CALLBACKS (1), whose <c>GetModuleFunctionTable(module, &amp;table, &amp;size)</c> returns for each module
/// (CORE 1, CUDA 2, OPENCL 3, CUDART 4, CORE2 5, SYNC 6) an array of <c>size + 1</c> pointers to function-pointer
/// slots (entry 0 and the last are null), and writes its own implementations into the slots it supports; and
/// NVTX_ETID_VERSIONINFO (3), which carries the API version (3). We only call CORE's RangePushA (slot 9) and
/// RangePop (slot 11); a slot the tool left empty is a no-op. Each instance owns its slots (native memory, never
/// freed: a tool may keep the table for the process's life).
/// </summary>
internal sealed unsafe class Nvtx3Loader
{
    public const uint EtidCallbacks = 1, EtidVersionInfo = 3, NvtxVersion = 3;
    public const int ModuleCore = 1, CoreRangePushA = 9, CoreRangePop = 11;

    /// <summary>NVTX_CBID_*_SIZE for modules 1..6 (CORE, CUDA, OPENCL, CUDART, CORE2, SYNC).</summary>
    public static readonly int[] ModuleSizes = [16, 9, 15, 7, 16, 7];

    /// <summary>NvtxExportTableCallbacks: { size_t struct_size; GetModuleFunctionTable }.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct ExportTableCallbacks
    {
        public nuint StructSize;
        public delegate* unmanaged<int, IntPtr***, uint*, int> GetModuleFunctionTable;
    }

    /// <summary>NvtxExportTableVersionInfo: { size_t struct_size; uint32_t version; uint32_t reserved0; SetInjectionNvtxVersion }.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct ExportTableVersionInfo
    {
        public nuint StructSize;
        public uint Version;
        public uint Reserved0;
        public delegate* unmanaged<uint, void> SetInjectionNvtxVersion;
    }

    // The export-table callbacks are static (a C function pointer has no closure): they serve the instance attached
    // last, which a tool may still ask after its init returned. Attaching is rare (once per process, once per test)
    // and serialised by the gate.
    static readonly object Gate = new();
    static Nvtx3Loader? current;

    readonly IntPtr*[] slots = new IntPtr*[ModuleSizes.Length];    // module m: ModuleSizes[m] slots, 0 unused
    readonly IntPtr**[] tables = new IntPtr**[ModuleSizes.Length]; // module m: ModuleSizes[m] + 1 slot addresses
    readonly ExportTableCallbacks* callbacks;
    readonly ExportTableVersionInfo* versionInfo;

    public Nvtx3Loader()
    {
        for (int m = 0; m < ModuleSizes.Length; m++)
        {
            int size = ModuleSizes[m];
            slots[m] = (IntPtr*)NativeMemory.AllocZeroed((nuint)(size * sizeof(IntPtr)));
            tables[m] = (IntPtr**)NativeMemory.AllocZeroed((nuint)((size + 1) * sizeof(IntPtr*)));
            for (int i = 1; i < size; i++) tables[m][i] = &slots[m][i];
        }
        callbacks = (ExportTableCallbacks*)NativeMemory.AllocZeroed((nuint)sizeof(ExportTableCallbacks));
        callbacks->StructSize = (nuint)sizeof(ExportTableCallbacks);
        callbacks->GetModuleFunctionTable = &GetModuleFunctionTable;
        versionInfo = (ExportTableVersionInfo*)NativeMemory.AllocZeroed((nuint)sizeof(ExportTableVersionInfo));
        versionInfo->StructSize = (nuint)sizeof(ExportTableVersionInfo);
        versionInfo->Version = NvtxVersion;
        versionInfo->SetInjectionNvtxVersion = &SetInjectionNvtxVersion;
    }

    public bool IsAttached { get; private set; }

    /// <summary>The slot of a CORE function (what the tool wrote there, or zero).</summary>
    public IntPtr CoreSlot(int id) => slots[ModuleCore - 1][id];

    /// <summary>Loads the injection library and runs its InitializeInjectionNvtx2; false with the reason when any step fails.</summary>
    public bool AttachLibrary(string path, out string why)
    {
        if (!NativeLibrary.TryLoad(path, out IntPtr lib)) { why = "the library does not load"; return false; }
        if (!NativeLibrary.TryGetExport(lib, "InitializeInjectionNvtx2", out IntPtr init)) { why = "it exports no InitializeInjectionNvtx2"; return false; }
        return Attach((delegate* unmanaged<delegate* unmanaged<uint, void*>, int>)init, out why);
    }

    /// <summary>Runs a tool's init function against this instance's export tables.</summary>
    public bool Attach(delegate* unmanaged<delegate* unmanaged<uint, void*>, int> initialize, out string why)
    {
        lock (Gate)
        {
            current = this;
            IsAttached = initialize(&GetExportTable) != 0;
        }
        why = IsAttached ? "" : "its InitializeInjectionNvtx2 returned 0";
        return IsAttached;
    }

    public void RangePushA(byte* message)
    {
        IntPtr f = slots[ModuleCore - 1][CoreRangePushA];
        if (f != IntPtr.Zero) ((delegate* unmanaged<byte*, int>)f)(message);
    }

    public void RangePop()
    {
        IntPtr f = slots[ModuleCore - 1][CoreRangePop];
        if (f != IntPtr.Zero) ((delegate* unmanaged<int>)f)();
    }

    [UnmanagedCallersOnly]
    static void* GetExportTable(uint exportTableId)
    {
        var self = current;
        if (self == null) return null;
        return exportTableId switch
        {
            EtidCallbacks => self.callbacks,
            EtidVersionInfo => self.versionInfo,
            _ => null,
        };
    }

    [UnmanagedCallersOnly]
    static int GetModuleFunctionTable(int module, IntPtr*** outTable, uint* outSize)
    {
        var self = current;
        if (self == null || module < 1 || module > ModuleSizes.Length) return 0;
        if (outSize != null) *outSize = (uint)ModuleSizes[module - 1];
        if (outTable != null) *outTable = self.tables[module - 1];
        return 1;
    }

    [UnmanagedCallersOnly]
    static void SetInjectionNvtxVersion(uint version) { }
}
