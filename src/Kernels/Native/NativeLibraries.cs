using System.Collections.Concurrent;
using System.Reflection;
using System.Runtime.InteropServices;

namespace MetaLoraNative.Kernels.Native;

/// <summary>
/// The one place that finds NVIDIA's shared libraries. Binding classes import logical names ("cuda", "nvrtc",
/// "cublasLt", "nvToolsExt", "nccl"). Each is looked for as a file in $METALORA_CUDA_LIBS, $CUDA_PATH/$CUDA_HOME,
/// LD_LIBRARY_PATH, the folders of /etc/ld.so.conf, the CUDA toolkit and distribution folders, the Python wheels
/// (nvidia/cuda_nvrtc, nvidia/cublas, nvidia/nvtx, nvidia/cu13 under site- or dist-packages) and, for NVTX, the
/// Nsight folders; its sonames are then left to the loader as a last resort. NVRTC and cuBLASLt are matched to the
/// driver (<see cref="LibrarySelection"/>: the newest CUDA major not above the driver's). When nothing loads,
/// <see cref="Require"/> throws a <see cref="DllNotFoundException"/> listing every attempt.
/// </summary>
public static class NativeLibraries
{
    public const string Cuda = "cuda";
    public const string Nvrtc = "nvrtc";
    public const string CublasLt = "cublasLt";
    public const string NvToolsExt = "nvToolsExt";
    public const string Nccl = "nccl";

    /// <summary>Sonames per logical library, newest first (the loader's names; files on disk are matched by them too).</summary>
    static readonly Dictionary<string, string[]> Sonames = new()
    {
        [Cuda] = ["libcuda.so.1", "libcuda.so", "nvcuda.dll"],
        [Nvrtc] = ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2", "libnvrtc.so.11.1", "libnvrtc.so.11.0", "libnvrtc.so",
                   "nvrtc64_130_0.dll", "nvrtc64_120_0.dll", "nvrtc64_112_0.dll"],
        [CublasLt] = ["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so.11", "libcublasLt.so",
                      "cublasLt64_13.dll", "cublasLt64_12.dll", "cublasLt64_11.dll"],
        [NvToolsExt] = ["libnvToolsExt.so.1", "libnvToolsExt.so", "nvToolsExt64_1.dll"],
        [Nccl] = ["libnccl.so.2", "libnccl.so"],
    };

    /// <summary>The names doctor and the messages use.</summary>
    public static string DisplayName(string name) => name switch
    {
        Cuda => "CUDA driver", Nvrtc => "NVRTC", CublasLt => "cuBLASLt", NvToolsExt => "NVTX (libnvToolsExt)", Nccl => "NCCL", _ => name,
    };

    static readonly ConcurrentDictionary<string, Lazy<(IntPtr Handle, string Report, string? Path)>> Loaded = new();
    static readonly ConcurrentDictionary<string, Lazy<LibraryChoice>> Choices = new();
    static readonly Lazy<int?> Driver = new(QueryDriverVersion);
    static int registered;

    /// <summary>Installs the resolver for this assembly once. Every binding class calls it from its static constructor.</summary>
    public static void EnsureRegistered()
    {
        if (Interlocked.Exchange(ref registered, 1) == 0)
            NativeLibrary.SetDllImportResolver(typeof(NativeLibraries).Assembly, Resolve);
    }

    static IntPtr Resolve(string name, Assembly assembly, DllImportSearchPath? searchPath) =>
        Sonames.ContainsKey(name) ? TryLoad(name, out _) : IntPtr.Zero;

    /// <summary>Loads a logical library; IntPtr.Zero when absent. <paramref name="report"/> names the file loaded or every attempt.</summary>
    public static IntPtr TryLoad(string name, out string report)
    {
        var result = Loaded.GetOrAdd(name, n => new Lazy<(IntPtr, string, string?)>(() => Load(n))).Value;
        report = result.Report;
        return result.Handle;
    }

    /// <summary>The handle of a logical library, or a <see cref="DllNotFoundException"/> that lists every attempt.</summary>
    public static IntPtr Require(string name)
    {
        IntPtr h = TryLoad(name, out string report);
        if (h == IntPtr.Zero) throw new DllNotFoundException(report);
        return h;
    }

    public static bool IsAvailable(string name) => TryLoad(name, out _) != IntPtr.Zero;

    /// <summary>The file (or soname) a logical library was loaded from, or null when it did not load.</summary>
    public static string? LoadedPath(string name)
    {
        TryLoad(name, out _);
        return Loaded.TryGetValue(name, out var l) ? l.Value.Path : null;
    }

    /// <summary>
    /// cuDriverGetVersion (1000·major + 10·minor), or null without a driver. Needs no cuInit and no GPU, so it also
    /// works on a machine whose GPU is busy or hidden.
    /// </summary>
    public static int? DriverVersion => Driver.Value;

    static int? QueryDriverVersion()
    {
        if (TryLoad(Cuda, out _) == IntPtr.Zero) return null;
        try { return CuDriver.cuDriverGetVersion(out int v) == CuDriver.CUDA_SUCCESS && v > 0 ? v : null; }
        catch (EntryPointNotFoundException) { return null; }
    }

    /// <summary>Every copy of a library on this machine with its version, and the order they are tried in for this driver.</summary>
    public static LibraryChoice Selection(string name) =>
        Choices.GetOrAdd(name, n => new Lazy<LibraryChoice>(() =>
            LibrarySelection.Choose(DisplayName(n), n is Nvrtc or CublasLt ? DriverVersion : null, Find(n)))).Value;

    static (IntPtr, string, string?) Load(string name)
    {
        if (!Sonames.ContainsKey(name)) return (IntPtr.Zero, $"unknown library '{name}'", null);
        var attempts = new List<string>();
        foreach (var candidate in Selection(name).Order)
        {
            if (NativeLibrary.TryLoad(candidate.Path, out IntPtr h)) return (h, candidate.Path, candidate.Path);
            attempts.Add(candidate.Path);
        }
        return (IntPtr.Zero, $"could not load {name}; tried: {string.Join(", ", attempts)}", null);
    }

    /// <summary>
    /// The files of a library in every search folder, with the version of the file each name finally links to
    /// (libnvrtc.so.11.2 → libnvrtc.so.11.8.89 is 11.8), then its sonames for the loader's own search.
    /// </summary>
    public static IReadOnlyList<FoundLibrary> Find(string name)
    {
        var found = new List<FoundLibrary>();
        if (!Sonames.TryGetValue(name, out var names)) return found;
        var seen = new HashSet<string>();
        foreach (string dir in SearchDirectories(name))
        {
            foreach (string file in names)
            {
                string path = Path.Combine(dir, file);
                if (!File.Exists(path)) continue;
                string real = RealPath(path);
                if (!seen.Add(Identity(real))) continue;   // /lib and /usr/lib are often one folder
                var (major, minor) = FoundLibrary.ParseVersion(real);
                if (major < 0) (major, minor) = FoundLibrary.ParseVersion(file);
                found.Add(new FoundLibrary(path, major, minor));
            }
        }
        foreach (string file in names)
        {
            var (major, minor) = FoundLibrary.ParseVersion(file);
            found.Add(new FoundLibrary(file, major, minor, FromLoader: true));
        }
        return found;
    }

    /// <summary>The same file seen through two folder links has the same name, size and time.</summary>
    static string Identity(string path)
    {
        var f = new FileInfo(path);
        return f.Exists ? $"{f.Name}|{f.Length}|{f.LastWriteTimeUtc.Ticks}" : path;
    }

    static string RealPath(string path)
    {
        try { return File.ResolveLinkTarget(path, returnFinalTarget: true)?.FullName ?? Path.GetFullPath(path); }
        catch (IOException) { return Path.GetFullPath(path); }
        catch (UnauthorizedAccessException) { return Path.GetFullPath(path); }
    }

    /// <summary>Folders to look in, most specific first; only those that exist.</summary>
    static IEnumerable<string> SearchDirectories(string name)
    {
        var dirs = new List<string>();
        void AddList(string? list)
        {
            if (!string.IsNullOrEmpty(list)) dirs.AddRange(list.Split(':', StringSplitOptions.RemoveEmptyEntries));
        }
        AddList(Environment.GetEnvironmentVariable("METALORA_CUDA_LIBS"));
        foreach (string env in new[] { "CUDA_PATH", "CUDA_HOME", "CUDA_ROOT" })
        {
            string? root = Environment.GetEnvironmentVariable(env);
            if (string.IsNullOrEmpty(root)) continue;
            dirs.AddRange([Path.Combine(root, "lib64"), Path.Combine(root, "lib"), Path.Combine(root, "targets", "x86_64-linux", "lib")]);
        }
        AddList(Environment.GetEnvironmentVariable("LD_LIBRARY_PATH"));
        dirs.AddRange(LdSoConfDirectories("/etc/ld.so.conf", 0));
        dirs.AddRange(["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"]);
        foreach (string toolkit in Glob("/usr/local", "cuda-*").OrderDescending(StringComparer.Ordinal))
            dirs.AddRange([Path.Combine(toolkit, "lib64"), Path.Combine(toolkit, "targets", "x86_64-linux", "lib")]);
        dirs.AddRange(["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib/wsl/lib", "/usr/local/nvidia/lib64", "/usr/lib/aarch64-linux-gnu"]);
        // Pip wheels (nvidia-*-cu12, and CUDA 13's nvidia/cu13): a Python-managed GPU server may have nothing else.
        string[] wheelFolders = ["nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib", "nvidia/cublas/lib", "nvidia/nvtx/lib", "nvidia/nccl/lib", "nvidia/cu12/lib"];
        foreach (string site in PythonSitePackages())
            foreach (string sub in wheelFolders)
                dirs.Add(Path.Combine(site, sub));
        if (name == NvToolsExt)
        {
            // Nsight Systems and Nsight Compute ship their own copies next to their injection libraries.
            foreach (string root in new[] { "/opt/nvidia/nsight-systems", "/opt/nvidia/nsight-compute" })
                foreach (string version in Glob(root, "*"))
                    dirs.AddRange([Path.Combine(version, "target-linux-x64"), Path.Combine(version, "target", "linux-desktop-glibc_2_11_3-x64")]);
            foreach (string nsys in Glob("/usr/local/cuda", "nsight-systems-*"))
                dirs.Add(Path.Combine(nsys, "target-linux-x64"));
        }
        foreach (string d in dirs.Distinct())
            if (Directory.Exists(d)) yield return d;
    }

    /// <summary>site-packages and dist-packages of the system, conda, the user and an active virtual environment.</summary>
    static IEnumerable<string> PythonSitePackages()
    {
        var roots = new List<string> { "/usr/local/lib", "/usr/lib", "/opt/conda/lib" };
        string home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        if (home.Length > 0) roots.Add(Path.Combine(home, ".local", "lib"));
        foreach (string env in new[] { "VIRTUAL_ENV", "CONDA_PREFIX" })
            if (Environment.GetEnvironmentVariable(env) is { Length: > 0 } prefix) roots.Add(Path.Combine(prefix, "lib"));
        foreach (string root in roots)
            foreach (string py in Glob(root, "python3*"))
                foreach (string pkgs in new[] { "site-packages", "dist-packages" })
                    yield return Path.Combine(py, pkgs);
    }

    /// <summary>The folders /etc/ld.so.conf lists, following its "include" globs (two levels deep at most).</summary>
    static IEnumerable<string> LdSoConfDirectories(string file, int depth)
    {
        string[] lines;
        try { lines = File.Exists(file) ? File.ReadAllLines(file) : []; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { yield break; }
        foreach (string raw in lines)
        {
            string line = raw.Split('#')[0].Trim();
            if (line.Length == 0) continue;
            if (line.StartsWith("include ", StringComparison.Ordinal))
            {
                if (depth >= 2) continue;
                string pattern = line["include ".Length..].Trim();
                string dir = Path.GetDirectoryName(pattern) is { Length: > 0 } d ? d : "/etc";
                foreach (string included in GlobFiles(dir, Path.GetFileName(pattern)).Order(StringComparer.Ordinal))
                    foreach (string entry in LdSoConfDirectories(included, depth + 1)) yield return entry;
            }
            else if (line.StartsWith('/')) yield return line;
        }
    }

    static string[] Glob(string dir, string pattern)
    {
        try { return Directory.Exists(dir) ? Directory.GetDirectories(dir, pattern) : []; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return []; }
    }

    static string[] GlobFiles(string dir, string pattern)
    {
        try { return Directory.Exists(dir) ? Directory.GetFiles(dir, pattern) : []; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return []; }
    }
}
