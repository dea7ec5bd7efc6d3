using System.Runtime.InteropServices;
using MetaLoraNative.Kernels.Native;

namespace MetaLoraNative.Kernels;

/// <summary>
/// What `metalora doctor` says about CUDA: which libraries load, their versions, the GPU. One line per fact and
/// one clear line per missing piece. Never throws: a machine without a GPU gets lines, not a crash.
/// </summary>
public static class CudaProbe
{
    public static IReadOnlyList<string> Report()
    {
        var lines = new List<string>();
        Safe(lines, "NVRTC", () => ProbeNvrtc(lines));
        Safe(lines, "cuBLASLt", () => ProbeCublasLt(lines));
        Safe(lines, "NVTX", () => lines.Add(Nvtx.IsAvailable
            ? "NVTX: libnvToolsExt loaded (op ranges visible in Nsight Systems)"
            : "NVTX: libnvToolsExt.so.1 not found; op ranges are no-ops (optional)"));
        Safe(lines, "CUDA driver", () => ProbeDriver(lines));
        return lines;
    }

    static void ProbeNvrtc(List<string> lines)
    {
        if (NativeLibraries.TryLoad(NativeLibraries.Nvrtc, out string report) == IntPtr.Zero)
        {
            lines.Add($"NVRTC: MISSING, kernels cannot be compiled ({report}); on Debian run .ci/install-nvrtc.sh, on a GPU server install the CUDA toolkit's cuda-nvrtc");
            return;
        }
        CudaCheck.Nvrtc(Nvrtc.nvrtcVersion(out int major, out int minor));
        lines.Add($"NVRTC: {major}.{minor} ({report}); supported archs: {string.Join(" ", KernelCompiler.SupportedArchs())}");
    }

    static void ProbeCublasLt(List<string> lines)
    {
        if (NativeLibraries.TryLoad(NativeLibraries.CublasLt, out string report) == IntPtr.Zero)
        {
            lines.Add($"cuBLASLt: MISSING, GEMMs cannot run on the GPU ({report})");
            return;
        }
        ulong v = CublasLt.cublasLtGetVersion();
        // Encoded as major*10000 + minor*100 + patch since CUDA 11 (e.g. 120804 = 12.8.4).
        lines.Add($"cuBLASLt: {v / 10000}.{v / 100 % 100}.{v % 100} ({report})");
    }

    static void ProbeDriver(List<string> lines)
    {
        if (NativeLibraries.TryLoad(NativeLibraries.Cuda, out string report) == IntPtr.Zero)
        {
            lines.Add($"CUDA driver: MISSING, no NVIDIA driver on this machine ({report}); the GPU backend is unavailable");
            return;
        }
        int init = CuDriver.cuInit(0);
        if (init != CuDriver.CUDA_SUCCESS)
        {
            lines.Add($"CUDA driver: loaded ({report}) but cuInit failed: {CuDriver.ErrorString(init)}");
            return;
        }
        CudaCheck.Cu(CuDriver.cuDriverGetVersion(out int driver));
        lines.Add($"CUDA driver: supports CUDA {driver / 1000}.{driver % 1000 / 10} ({report})");
        CudaCheck.Cu(CuDriver.cuDeviceGetCount(out int count));
        if (count == 0)
        {
            lines.Add("GPU: none visible (CUDA_VISIBLE_DEVICES?)");
            return;
        }
        for (int i = 0; i < count; i++)
        {
            var info = DeviceInfo.Query(i);
            lines.Add($"GPU {i}: {info.Name}, {info.Arch} (compute capability {info.Major}.{info.Minor}), {info.Multiprocessors} SMs, " +
                      $"{info.TotalMemory / (1024.0 * 1024 * 1024):F1} GiB" + (info.Major < 8 ? "; bf16 kernels need sm_80 or newer" : ""));
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
