using System.Globalization;

namespace MetaLoraNative.Kernels.Native;

/// <summary>
/// One copy of an NVIDIA library on disk (or a soname left to the loader's own search), with the CUDA version its
/// file name tells: libnvrtc.so.12 → 12, libnvrtc.so.11.2 → 11.2 (CUDA 11.2 to 11.8 share that soname),
/// libcublasLt.so.12.8.4.1 → 12.8; Minor is -1 where the name gives only the major, Major is -1 for an unversioned
/// libnvrtc.so.
/// </summary>
/// <param name="FromLoader">True for a soname handed to the loader (LD_LIBRARY_PATH, ld.so.cache) rather than a file found.</param>
public sealed record FoundLibrary(string Path, int Major, int Minor, bool FromLoader = false)
{
    public string Version => Major < 0 ? "unknown version" : Minor < 0 ? $"{Major}.x" : $"{Major}.{Minor}";

    /// <summary>
    /// The version in a library file name: the digits after ".so." (Linux) or the number before ".dll"
    /// (nvrtc64_120_0.dll → 12.0, cublasLt64_12.dll → 12). (-1, -1) when the name has none.
    /// </summary>
    public static (int Major, int Minor) ParseVersion(string fileName)
    {
        string name = System.IO.Path.GetFileName(fileName);
        int so = name.IndexOf(".so.", StringComparison.Ordinal);
        if (so >= 0)
        {
            string[] parts = name[(so + 4)..].Split('.');
            int major = Number(parts[0]), minor = parts.Length > 1 ? Number(parts[1]) : -1;
            return (major, major < 0 ? -1 : minor);
        }
        if (name.EndsWith(".dll", StringComparison.OrdinalIgnoreCase))
        {
            string[] parts = name[..^4].Split('_');
            // nvrtc64_120_0 → "120" (major 12, minor 0); cublasLt64_12 → "12"
            string code = parts.Length > 1 ? parts[1] : "";
            if (code.Length == 3 && Number(code) is int v and >= 0) return (v / 10, v % 10);
            if (Number(code) is int m and >= 0) return (m, -1);
        }
        return (-1, -1);
    }

    static int Number(string s) => s.Length > 0 && s.All(char.IsAsciiDigit) && int.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out int v) ? v : -1;
}

/// <summary>The outcome of <see cref="LibrarySelection.Choose"/>.</summary>
/// <param name="Order">Every candidate in the order to try: the preferred first.</param>
/// <param name="Matches">False when the best candidate is newer than the driver's CUDA: it will not work there.</param>
/// <param name="Message">One line for `metalora doctor`: what is chosen, for which driver, and what to do on a mismatch.</param>
public sealed record LibraryChoice(string Library, int? DriverVersion, IReadOnlyList<FoundLibrary> Order, bool Matches, string Message)
{
    public FoundLibrary? Preferred => Order.Count > 0 ? Order[0] : null;
}

/// <summary>
/// Which NVRTC and cuBLASLt to load for a driver, as a pure function so it is tested without a GPU. A driver supports
/// every CUDA major up to its own (cuDriverGetVersion: 1000·major + 10·minor, 13000 for CUDA 13.0): NVRTC of a newer
/// major writes PTX the driver cannot JIT and cubins it may refuse, and a newer cuBLASLt refuses to start. So the rule
/// is: files found on disk before sonames left to the loader, and among them the newest major not above the driver's
/// (13 → libnvrtc.so.13, else 12, else 11.2), the newest minor within it; a library newer than the driver only as the
/// last resort, flagged as a mismatch. Without a driver (a build machine) nothing can mismatch and the newest wins.
/// </summary>
public static class LibrarySelection
{
    public static int DriverMajor(int driverVersion) => driverVersion / 1000;

    public static string FormatDriver(int driverVersion) => $"CUDA {driverVersion / 1000}.{driverVersion % 1000 / 10}";

    public static LibraryChoice Choose(string library, int? driverVersion, IReadOnlyList<FoundLibrary> found)
    {
        int? driverMajor = driverVersion is int v ? DriverMajor(v) : null;
        bool Supported(FoundLibrary f) => driverMajor is not int d || (f.Major >= 0 && f.Major <= d);
        var order = found
            .DistinctBy(f => f.Path)
            .OrderByDescending(Supported)
            .ThenBy(f => f.FromLoader)   // files that exist before names the loader may or may not resolve
            // among the supported: newest first; among the unsupported, the closest to the driver first
            .ThenBy(f => Supported(f) ? -f.Major : f.Major < 0 ? int.MaxValue : f.Major)
            .ThenByDescending(f => f.Minor)
            .ToList();
        string driver = driverVersion is int dv ? $"the driver's {FormatDriver(dv)}" : "no driver here (compile-only)";
        if (order.Count == 0)
            return new LibraryChoice(library, driverVersion, order, false, $"{library}: not found; {driver}");
        var best = order[0];
        bool matches = Supported(best);
        string where = best.FromLoader ? $"{best.Path} via the loader's search path" : best.Path;
        string message = matches
            ? $"{library} {best.Version} ({where}) for {driver}"
            : best.Major < 0
                ? $"{library} of unknown version ({where}) with {driver}: cannot tell whether they match; prefer a versioned file (libnvrtc.so.{driverMajor}, libcublasLt.so.{driverMajor})"
                : $"{library} {best.Version} ({where}) is NEWER than {driver}: it does not run on this driver. Install the CUDA {driverMajor} " +
                  $"{library} (e.g. pip install nvidia-{(library == "NVRTC" ? "cuda-nvrtc" : "cublas")}-cu{driverMajor}) or update the driver";
        return new LibraryChoice(library, driverVersion, order, matches, message);
    }
}
