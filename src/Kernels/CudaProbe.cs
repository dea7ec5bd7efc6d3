using System.Runtime.InteropServices;
using MetaLoraNative.Kernels.Native;

namespace MetaLoraNative.Kernels;

/// <summary>
/// What `metalora doctor` says about CUDA: the driver's CUDA version, then for NVRTC and cuBLASLt every copy found
/// (path and version) beside it, which one is used and a plain MISMATCH line when it is newer than the driver; NVTX;
/// the GPUs. One line per fact and one clear line per missing piece. Never throws: a machine without a GPU gets
/// lines, not a crash.
/// </summary>
public static class CudaProbe
{
    /// <summary>
    /// Whether the driver loads and sees at least one GPU, without creating a context (cheap, and it touches no
    /// device: a data-parallel worker must not make a context on GPU 0 just to decide).
    /// </summary>
    public static bool GpuPresent()
    {
        if (NativeLibraries.TryLoad(NativeLibraries.Cuda, out _) == IntPtr.Zero) return false;
        try { return CuDriver.cuInit(0) == 0 && CuDriver.cuDeviceGetCount(out int n) == 0 && n > 0; }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { return false; }
    }

    public static IReadOnlyList<string> Report()
    {
        var lines = new List<string>();
        Safe(lines, "CUDA driver", () => ProbeDriver(lines));
        Safe(lines, "NVRTC", () => ProbeNvrtc(lines));
        Safe(lines, "cuBLASLt", () => ProbeCublasLt(lines));
        Safe(lines, "NVTX", () => lines.Add($"NVTX: {Nvtx.Status}"));
        Safe(lines, "GPU", () => ProbeDevices(lines));
        return lines;
    }

    /// <summary>"the driver's CUDA 13.0" or "no driver".</summary>
    static string DriverText => NativeLibraries.DriverVersion is int v ? $"driver {LibrarySelection.FormatDriver(v)}" : "no driver";

    static void ProbeDriver(List<string> lines)
    {
        if (NativeLibraries.TryLoad(NativeLibraries.Cuda, out string report) == IntPtr.Zero)
        {
            lines.Add($"CUDA driver: MISSING, no NVIDIA driver on this machine ({report}); the GPU backend is unavailable");
            return;
        }
        lines.Add(NativeLibraries.DriverVersion is int v
            ? $"CUDA driver: supports up to {LibrarySelection.FormatDriver(v)} ({report})"
            : $"CUDA driver: loaded ({report}) but cuDriverGetVersion failed");
    }

    /// <summary>Every copy found on disk, the one loaded, and whether it matches the driver.</summary>
    static bool ProbeLibrary(List<string> lines, string name, string missing)
    {
        var choice = NativeLibraries.Selection(name);
        string label = NativeLibraries.DisplayName(name);
        IntPtr h = NativeLibraries.TryLoad(name, out string report);
        string? loadedPath = h == IntPtr.Zero ? null : report;
        foreach (var f in choice.Order.Where(f => !f.FromLoader))
            lines.Add($"{label}: found {f.Path} ({f.Version}){(f.Path == loadedPath ? " <- used" : "")}; {DriverText}");
        if (h == IntPtr.Zero)
        {
            lines.Add($"{label}: MISSING, {missing} ({report})");
            return false;
        }
        var used = choice.Order.First(f => f.Path == loadedPath);
        bool matches = NativeLibraries.DriverVersion is not int dv || (used.Major >= 0 && used.Major <= LibrarySelection.DriverMajor(dv));
        if (used.FromLoader) lines.Add($"{label}: {loadedPath} loaded through the loader's search path ({used.Version}); {DriverText}");
        if (!matches) lines.Add($"{label}: MISMATCH: {LibrarySelection.Choose(label, NativeLibraries.DriverVersion, [used]).Message}");
        return true;
    }

    static void ProbeNvrtc(List<string> lines)
    {
        if (!ProbeLibrary(lines, NativeLibraries.Nvrtc,
                "kernels cannot be compiled; on Debian run .ci/install-nvrtc.sh, on a GPU server install cuda-nvrtc or the nvidia-cuda-nvrtc wheel"))
            return;
        CudaCheck.Nvrtc(Nvrtc.nvrtcVersion(out int major, out int minor));
        lines.Add($"NVRTC: version {major}.{minor}; supported archs: {string.Join(" ", KernelCompiler.SupportedArchs())}");
    }

    static void ProbeCublasLt(List<string> lines)
    {
        if (!ProbeLibrary(lines, NativeLibraries.CublasLt, "GEMMs cannot run on the GPU")) return;
        ulong v = CublasLt.cublasLtGetVersion();
        // Encoded as major*10000 + minor*100 + patch since CUDA 11 (e.g. 120804 = 12.8.4).
        lines.Add($"cuBLASLt: version {v / 10000}.{v / 100 % 100}.{v % 100}");
    }

    static void ProbeDevices(List<string> lines)
    {
        if (!NativeLibraries.IsAvailable(NativeLibraries.Cuda)) return;
        int init = CuDriver.cuInit(0);
        if (init != CuDriver.CUDA_SUCCESS)
        {
            lines.Add($"GPU: cuInit failed: {CuDriver.ErrorString(init)}");
            return;
        }
        CudaCheck.Cu(CuDriver.cuDeviceGetCount(out int count));
        if (count == 0)
        {
            lines.Add("GPU: none visible (CUDA_VISIBLE_DEVICES?)");
            return;
        }
        int nvrtcMajor = NativeLibraries.IsAvailable(NativeLibraries.Nvrtc) ? KernelCompiler.NvrtcVersion().Major : 0;
        for (int i = 0; i < count; i++)
        {
            var info = DeviceInfo.Query(i);
            lines.Add($"GPU {i}: {info.Name}, {info.Arch} (compute capability {info.Major}.{info.Minor}), {info.Multiprocessors} SMs, " +
                      $"{info.TotalMemory / (1024.0 * 1024 * 1024):F1} GiB" + (info.Major < 8 ? "; bf16 kernels need sm_80 or newer" : "") +
                      (nvrtcMajor > 0 ? $"; kernels build as {KernelCompiler.ArchFor(info.Major, info.Minor, nvrtcMajor)}" +
                                        (info.Major == 9 && info.Minor == 0 && nvrtcMajor >= 12 ? " (sm_90a for files marked arch-specific)" : "") : ""));
        }
    }

    static void Safe(List<string> lines, string what, Action probe)
    {
        try { probe(); }
        catch (Exception e) { lines.Add($"{what}: probe failed: {e.Message}"); }
    }
}

/// <summary>The facts about one device the engine needs (cuInit must have succeeded).</summary>
public sealed record DeviceInfo(int Ordinal, string Name, int Major, int Minor, int Multiprocessors, long TotalMemory)
{
    /// <summary>"sm_90" style.</summary>
    public string Arch => $"sm_{Major}{Minor}";

    public static unsafe DeviceInfo Query(int ordinal)
    {
        CudaCheck.Cu(CuDriver.cuDeviceGet(out int dev, ordinal));
        byte* name = stackalloc byte[256];
        CudaCheck.Cu(CuDriver.cuDeviceGetName(name, 256, dev));
        CudaCheck.Cu(CuDriver.cuDeviceGetAttribute(out int major, CuDriver.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev));
        CudaCheck.Cu(CuDriver.cuDeviceGetAttribute(out int minor, CuDriver.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev));
        CudaCheck.Cu(CuDriver.cuDeviceGetAttribute(out int sms, CuDriver.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev));
        CudaCheck.Cu(CuDriver.cuDeviceTotalMem_v2(out nuint total, dev));
        return new DeviceInfo(ordinal, Marshal.PtrToStringUTF8((IntPtr)name) ?? "?", major, minor, sms, (long)total);
    }
}
