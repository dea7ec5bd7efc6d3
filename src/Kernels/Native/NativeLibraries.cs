using System.Collections.Concurrent;
using System.Reflection;
using System.Runtime.InteropServices;

namespace MetaLoraNative.Kernels.Native;

/// <summary>
/// The one place that finds NVIDIA's shared libraries. Binding classes import logical names ("cuda", "nvrtc",
/// "cublasLt", "nvToolsExt", "nccl"); the resolver tries the sonames of CUDA 13, 12 and 11 in the loader's
/// paths, then in $CUDA_PATH/lib64, /usr/local/cuda*/lib64, the distribution library folders and pip wheels' nvidia/*/lib.
/// When nothing loads, <see cref="Require"/> throws a <see cref="DllNotFoundException"/> listing every attempt.
/// </summary>
public static class NativeLibraries
{
    public const string Cuda = "cuda";
    public const string Nvrtc = "nvrtc";
    public const string CublasLt = "cublasLt";
    public const string NvToolsExt = "nvToolsExt";
    public const string Nccl = "nccl";

    static readonly Dictionary<string, string[]> Candidates = new()
    {
        [Cuda] = ["libcuda.so.1", "libcuda.so", "nvcuda.dll"],
        [Nvrtc] = ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2", "libnvrtc.so.11.1", "libnvrtc.so.11.0", "libnvrtc.so",
                   "nvrtc64_130_0.dll", "nvrtc64_120_0.dll", "nvrtc64_112_0.dll"],
        [CublasLt] = ["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so.11", "libcublasLt.so",
                      "cublasLt64_13.dll", "cublasLt64_12.dll", "cublasLt64_11.dll"],
        [NvToolsExt] = ["libnvToolsExt.so.1", "libnvToolsExt.so", "nvToolsExt64_1.dll"],
        [Nccl] = ["libnccl.so.2", "libnccl.so"],
    };

    static readonly ConcurrentDictionary<string, Lazy<(IntPtr Handle, string Report)>> Loaded = new();
    static int registered;

    /// <summary>Installs the resolver for this assembly once. Every binding class calls it from its static constructor.</summary>
    public static void EnsureRegistered()
    {
        if (Interlocked.Exchange(ref registered, 1) == 0)
            NativeLibrary.SetDllImportResolver(typeof(NativeLibraries).Assembly, Resolve);
    }

    static IntPtr Resolve(string name, Assembly assembly, DllImportSearchPath? searchPath) =>
        Candidates.ContainsKey(name) ? TryLoad(name, out _) : IntPtr.Zero;

    /// <summary>Loads a logical library; IntPtr.Zero when absent. <paramref name="report"/> names the file loaded or every attempt.</summary>
    public static IntPtr TryLoad(string name, out string report)
    {
        var result = Loaded.GetOrAdd(name, n => new Lazy<(IntPtr, string)>(() => Load(n))).Value;
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

    static (IntPtr, string) Load(string name)
    {
        if (!Candidates.TryGetValue(name, out var files)) return (IntPtr.Zero, $"unknown library '{name}'");
        var attempts = new List<string>();
        var searched = new List<string>();
        foreach (string dir in SearchDirectories())
        {
            if (dir.Length > 0) searched.Add(dir);
            foreach (string file in files)
            {
                string path = dir.Length == 0 ? file : Path.Combine(dir, file);
                if (dir.Length > 0 && !File.Exists(path)) continue;   // only the loader's own search is tried blind
                if (NativeLibrary.TryLoad(path, out IntPtr h)) return (h, path);
                attempts.Add(path);
            }
        }
        if (attempts.Count == 0) attempts.AddRange(files);
        return (IntPtr.Zero, $"could not load {name}; tried: {string.Join(", ", attempts)} " +
                             $"(the loader's search, then {(searched.Count == 0 ? "no other existing folder" : string.Join(", ", searched))})");
    }

    /// <summary>"" stands for the loader's own search (LD_LIBRARY_PATH, ld.so.cache, rpath).</summary>
    static IEnumerable<string> SearchDirectories()
    {
        yield return "";
        var dirs = new List<string>();
        foreach (string env in new[] { "CUDA_PATH", "CUDA_HOME", "CUDA_ROOT" })
        {
            string? root = Environment.GetEnvironmentVariable(env);
            if (!string.IsNullOrEmpty(root)) { dirs.Add(Path.Combine(root, "lib64")); dirs.Add(Path.Combine(root, "lib")); }
        }
        string? ld = Environment.GetEnvironmentVariable("LD_LIBRARY_PATH");
        if (!string.IsNullOrEmpty(ld)) dirs.AddRange(ld.Split(':', StringSplitOptions.RemoveEmptyEntries));
        dirs.AddRange([
            "/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib", "/usr/lib/x86_64-linux-gnu",
            "/usr/lib64", "/usr/lib/wsl/lib", "/usr/local/nvidia/lib64", "/usr/lib/aarch64-linux-gnu",
        ]);
        foreach (string cuda in SafeDirs("/usr/local", "cuda-*")) dirs.Add(Path.Combine(cuda, "lib64"));
        // Pip wheels (nvidia-*-cu12/cu13, nvidia-nccl-cu12) put their libraries here; a Python-managed server may have nothing else.
        string home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        foreach (string site in new[] { "/usr/local/lib", "/usr/lib", home.Length > 0 ? Path.Combine(home, ".local/lib") : "" })
        {
            if (site.Length == 0 || !Directory.Exists(site)) continue;
            foreach (string py in SafeDirs(site, "python3*"))
                foreach (string pkgs in new[] { "dist-packages", "site-packages" })
                    foreach (string sub in new[] { "nvidia/cuda_nvrtc/lib", "nvidia/cublas/lib", "nvidia/cu13/lib", "nvidia/nccl/lib" })
                        dirs.Add(Path.Combine(py, pkgs, sub));
        }
        foreach (string d in dirs.Distinct())
            if (Directory.Exists(d)) yield return d;
    }

    static string[] SafeDirs(string dir, string pattern)
    {
        try { return Directory.GetDirectories(dir, pattern); }
        catch (IOException) { return []; }
        catch (UnauthorizedAccessException) { return []; }
    }
}
