using System.Runtime.InteropServices;
using MetaLoraNative.Kernels.Native;

namespace MetaLoraNative.Tests.Kernels;

/// <summary>
/// NVTX3's injection handshake as the engine does it (Nvtx3Loader), driven by a stand-in tool written here the way a
/// profiler's InitializeInjectionNvtx2 is: it asks for the export tables, checks their sizes and version, takes the
/// CORE module's table and writes its own RangePushA and RangePop into the slots. The engine's pushes and pops must
/// then reach it, with the names intact.
/// </summary>
public unsafe class NvtxInjectionTests
{
    static readonly List<string> Events = [];
    static int moduleCount;
    static uint coreSize;

    [UnmanagedCallersOnly]
    static int RecordPush(byte* message)
    {
        lock (Events) Events.Add("push " + Marshal.PtrToStringUTF8((IntPtr)message));
        return 0;
    }

    [UnmanagedCallersOnly]
    static int RecordPop()
    {
        lock (Events) Events.Add("pop");
        return 0;
    }

    /// <summary>The stand-in tool's InitializeInjectionNvtx2.</summary>
    [UnmanagedCallersOnly]
    static int Initialize(delegate* unmanaged<uint, void*> getExportTable)
    {
        var callbacks = (Nvtx3Loader.ExportTableCallbacks*)getExportTable(Nvtx3Loader.EtidCallbacks);
        var version = (Nvtx3Loader.ExportTableVersionInfo*)getExportTable(Nvtx3Loader.EtidVersionInfo);
        if (callbacks == null || version == null || getExportTable(2) != null) return 0;
        if (callbacks->StructSize < (nuint)sizeof(Nvtx3Loader.ExportTableCallbacks) || version->Version != 3) return 0;
        version->SetInjectionNvtxVersion(3);
        moduleCount = 0;
        for (int module = 1; module <= 7; module++)
        {
            IntPtr** table;
            uint size;
            if (callbacks->GetModuleFunctionTable(module, &table, &size) == 0) continue;
            moduleCount++;
            if (table[0] != null || table[size] != null) return 0;   // first and last entries are null
            if (module == Nvtx3Loader.ModuleCore)
            {
                coreSize = size;
                *table[Nvtx3Loader.CoreRangePushA] = (IntPtr)(delegate* unmanaged<byte*, int>)&RecordPush;
                *table[Nvtx3Loader.CoreRangePop] = (IntPtr)(delegate* unmanaged<int>)&RecordPop;
            }
        }
        return 1;
    }

    [UnmanagedCallersOnly]
    static int Refuse(delegate* unmanaged<uint, void*> getExportTable) => 0;

    [Fact]
    public void AToolAttachedThroughTheExportTablesReceivesTheRanges()
    {
        var loader = new Nvtx3Loader();
        Assert.Equal(IntPtr.Zero, loader.CoreSlot(Nvtx3Loader.CoreRangePushA));
        loader.RangePop();   // before a tool: a no-op, not a crash
        Assert.True(loader.Attach(&Initialize, out string why), why);
        Assert.Equal(6, moduleCount);          // CORE, CUDA, OPENCL, CUDART, CORE2, SYNC; module 7 is refused
        Assert.Equal(16u, coreSize);           // NVTX_CBID_CORE_SIZE
        Assert.NotEqual(IntPtr.Zero, loader.CoreSlot(Nvtx3Loader.CoreRangePushA));
        lock (Events) Events.Clear();
        byte[] name = "double_blocks.3\0"u8.ToArray();
        fixed (byte* p = name) loader.RangePushA(p);
        loader.RangePop();
        lock (Events) Assert.Equal(["push double_blocks.3", "pop"], Events);
    }

    [Fact]
    public void AToolThatRefusesLeavesTheRangesNoOps()
    {
        var loader = new Nvtx3Loader();
        Assert.False(loader.Attach(&Refuse, out string why));
        Assert.Contains("returned 0", why);
        Assert.False(loader.IsAttached);
        Assert.False(loader.AttachLibrary("/nonexistent/libToolsInjection64.so", out why));
        Assert.Contains("does not load", why);
    }

    [Fact]
    public void TheStatusSaysHowRangesReachAProfiler()
    {
        // Without a profiler (the test runner sets no NVTX_INJECTION64_PATH) the ranges are no-ops, and say so.
        Assert.False(string.IsNullOrEmpty(Nvtx.Status));
        if (Environment.GetEnvironmentVariable("NVTX_INJECTION64_PATH") == null && !Nvtx.IsAvailable)
            Assert.Contains("no profiler attached", Nvtx.Status);
        Nvtx.RangePush("a range with no profiler");
        Nvtx.RangePop();
    }
}
