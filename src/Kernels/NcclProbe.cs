using MetaLoraNative.Kernels.Native;

namespace MetaLoraNative.Kernels;

/// <summary>
/// What `metalora doctor` says about NCCL, the multi-GPU collectives: the version and file loaded, or why it is
/// unavailable. Never throws.
/// </summary>
public static class NcclProbe
{
    /// <summary>NCCL's version as "major.minor.patch", or null with <paramref name="reason"/> saying why not.</summary>
    public static string? Version(out string reason)
    {
        if (VersionCode(out reason) is not int code) return null;
        var (major, minor, patch) = Nccl.DecodeVersion(code);
        return $"{major}.{minor}.{patch}";
    }

    /// <summary>One line for doctor: "NCCL: 2.21.5 (/usr/lib/x86_64-linux-gnu/libnccl.so.2)" or "NCCL: MISSING, ... (every path tried)".</summary>
    public static string Report()
    {
        if (VersionCode(out string reason) is not int code)
            return $"NCCL: MISSING, multi-GPU training is unavailable; single-GPU and CPU runs are not affected ({reason}); " +
                   "install libnccl2 (apt) or the nvidia-nccl-cu12 wheel (pip)";
        var (major, minor, patch) = Nccl.DecodeVersion(code);
        string line = $"NCCL: {major}.{minor}.{patch} ({reason})";
        return Nccl.IsSupportedVersion(code) ? line : line + "; multi-GPU training needs NCCL 2.10 or newer (ncclAvg)";
    }

    /// <summary>ncclGetVersion's code, or null; <paramref name="reason"/> is the file loaded or why nothing could be.</summary>
    static int? VersionCode(out string reason)
    {
        try
        {
            if (NativeLibraries.TryLoad(NativeLibraries.Nccl, out reason) == IntPtr.Zero) return null;
            int rc = Nccl.ncclGetVersion(out int code);
            if (rc == Nccl.ncclSuccess) return code;
            reason = $"{reason} loaded, but ncclGetVersion failed: {Nccl.ErrorString(rc)}";
            return null;
        }
        catch (Exception e)
        {
            reason = $"probe failed: {e.Message}";
            return null;
        }
    }
}
