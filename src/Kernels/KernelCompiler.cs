using MetaLoraNative.Engine;
using System.Diagnostics;
using System.Reflection;
using System.Security.Cryptography;
using System.Text;
using MetaLoraNative.Kernels.Native;

namespace MetaLoraNative.Kernels;

/// <summary>The outcome of compiling one kernel file.</summary>
/// <param name="Image">CUBIN (for sm_XX) or PTX text bytes (for compute_XX); null when compilation failed.</param>
public sealed record KernelBuildResult(string File, string Arch, byte[]? Image, string Log, TimeSpan CompileTime, bool FromCache)
{
    public bool Success => Image != null;
    public bool IsPtx => Arch.StartsWith("compute_", StringComparison.Ordinal);
}

public sealed class KernelCompileException(string message) : Exception(message);

/// <summary>
/// Compiles the embedded kernel sources with NVRTC (no GPU and no libcuda needed). "sm_XX" (or "sm_XXa") gives a
/// CUBIN, "compute_XX" gives PTX. Two sets: the engine's kernels/*.cu (named "attention.cu") and the playground's
/// kernels/dev/&lt;op&gt;/*.cu (named "dev/attention/02_mma_forward.cu"), compiled only when opted in. Every embedded
/// header (*.cuh, from either set, included by its file name) is handed to NVRTC in memory, so nothing is read from
/// the CUDA toolkit's include folder: the same sources compile on NVRTC 11.8 and 13.
/// Results are cached on disk under a key of (the source's and every header's hash, arch, NVRTC version, options).
/// </summary>
public sealed class KernelCompiler
{
    public const string CommonHeader = "common.cuh";
    const string ResourcePrefix = "kernels/";
    const string DevPrefix = "dev/";

    /// <summary>Options for every file. No fast-math: the parity tests hold expf/tanhf to their IEEE accuracy.</summary>
    static readonly string[] BaseOptions = ["-std=c++17", "-lineinfo"];

    public KernelCompiler(string? cacheDirectory = null)
    {
        CacheDirectory = cacheDirectory ?? DefaultCacheDirectory();
    }

    /// <summary>$METALORA_KERNEL_CACHE, else $XDG_CACHE_HOME/metalora/kernels, else ~/.cache/metalora/kernels.</summary>
    public static string DefaultCacheDirectory()
    {
        string? env = Environment.GetEnvironmentVariable("METALORA_KERNEL_CACHE");
        if (!string.IsNullOrEmpty(env)) return env;
        string? xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
        string root = !string.IsNullOrEmpty(xdg) ? xdg
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
        return Path.Combine(root, "metalora", "kernels");
    }

    /// <summary>Where compiled images are cached; "" disables the cache.</summary>
    public string CacheDirectory { get; }

    /// <summary>The engine's kernel files (kernels/*.cu, e.g. "attention.cu"), sorted; headers are not listed.</summary>
    public static IReadOnlyList<string> KernelFiles() => Sources(".cu").Where(f => !f.StartsWith(DevPrefix, StringComparison.Ordinal)).ToList();

    /// <summary>The playground's kernel files (kernels/dev/&lt;op&gt;/*.cu, e.g. "dev/attention/02_mma_forward.cu"), sorted.</summary>
    public static IReadOnlyList<string> DevKernelFiles() => Sources(".cu").Where(f => f.StartsWith(DevPrefix, StringComparison.Ordinal)).ToList();

    /// <summary>Embedded sources ending in <paramref name="extension"/>, named relative to kernels/ with '/' separators.</summary>
    static IEnumerable<string> Sources(string extension) =>
        Resources.Keys.Where(n => n.EndsWith(extension, StringComparison.Ordinal)).Order(StringComparer.Ordinal);

    /// <summary>Source name ("dev/attention/mma.cuh") → manifest resource name (MSBuild may write '\\' in the folder part).</summary>
    static readonly Dictionary<string, string> Resources = Assembly.GetManifestResourceNames()
        .Where(n => n.StartsWith(ResourcePrefix, StringComparison.Ordinal))
        .ToDictionary(n => n[ResourcePrefix.Length..].Replace('\\', '/'), n => n);

    /// <summary>Every embedded header as (the name kernels include it by, its text): "common.cuh", "mma.cuh", ...</summary>
    static IReadOnlyList<(string Name, string Text)> Headers() => LazyHeaders.Value;
    static readonly Lazy<IReadOnlyList<(string Name, string Text)>> LazyHeaders = new(BuildHeaders);

    static List<(string Name, string Text)> BuildHeaders()
    {
        var list = Sources(".cuh").Select(f => (Name: f[(f.LastIndexOf('/') + 1)..], Text: ReadSource(f))).ToList();
        var clash = list.GroupBy(h => h.Name).FirstOrDefault(g => g.Count() > 1);
        if (clash != null) throw new InvalidOperationException($"two embedded kernel headers are named {clash.Key}: includes name headers by file name");
        return list;
    }

    public static string ReadSource(string file)
    {
        using var s = (Resources.TryGetValue(file, out string? resource) ? Assembly.GetManifestResourceStream(resource) : null)
            ?? throw new FileNotFoundException($"no embedded kernel source '{file}'");
        using var r = new StreamReader(s, Encoding.UTF8);
        return r.ReadToEnd();
    }

    /// <summary>The file's name in image and cache file names: "attention", "dev.attention.02_mma_forward".</summary>
    static string Stem(string file) => Path.ChangeExtension(file, null).Replace('/', '.');

    static Assembly Assembly => typeof(KernelCompiler).Assembly;

    /// <summary>NVRTC's version, e.g. (11, 8); throws DllNotFoundException listing every attempt when absent.</summary>
    public static (int Major, int Minor) NvrtcVersion()
    {
        NativeLibraries.Require(NativeLibraries.Nvrtc);
        CudaCheck.Nvrtc(Nvrtc.nvrtcVersion(out int major, out int minor));
        return (major, minor);
    }

    /// <summary>The real architectures this NVRTC can target ("sm_80", ...).</summary>
    public static unsafe IReadOnlyList<string> SupportedArchs()
    {
        NativeLibraries.Require(NativeLibraries.Nvrtc);
        CudaCheck.Nvrtc(Nvrtc.nvrtcGetNumSupportedArchs(out int n));
        var archs = new int[n];
        fixed (int* p = archs) CudaCheck.Nvrtc(Nvrtc.nvrtcGetSupportedArchs(p));
        return archs.Select(a => $"sm_{a}").ToList();
    }

    /// <summary>
    /// The line by which a kernel file declares that it uses instructions only Hopper's arch-specific target has
    /// (wgmma, setmaxnreg): it is then compiled for sm_90a on a 9.0 device, which NVRTC 12+ knows.
    /// </summary>
    public const string ArchSpecificMarker = "// metalora: arch-specific";

    /// <summary>
    /// The arch to compile for on a device: sm_XY from its compute capability, or Hopper's sm_90a when the file
    /// needs arch-specific instructions, the device is 9.0 and this NVRTC knows sm_90a (12.0 and later). A plain
    /// sm_90 image runs on every 9.x device and is what a file without those instructions gets.
    /// </summary>
    public static string ArchFor(int major, int minor, int nvrtcMajor, bool needsArchSpecific = false) =>
        needsArchSpecific && major == 9 && minor == 0 && nvrtcMajor >= 12 ? "sm_90a" : $"sm_{major}{minor}";

    /// <summary>True when a line of the file itself starts with <see cref="ArchSpecificMarker"/>.</summary>
    public static bool NeedsArchSpecific(string file) =>
        ReadSource(file).Split('\n').Any(l => l.TrimEnd().StartsWith(ArchSpecificMarker, StringComparison.Ordinal));

    /// <summary>The arch the CUDA backend compiles and loads <paramref name="file"/> for on a device of compute capability major.minor.</summary>
    public static string DeviceArch(string file, int major, int minor, int nvrtcMajor) =>
        ArchFor(major, minor, nvrtcMajor, NeedsArchSpecific(file));

    /// <summary>The PTX target a device falls back to when its cubin does not load: compute_XY, JIT-compiled by the driver.</summary>
    public static string PtxArch(int major, int minor) => $"compute_{major}{minor}";

    /// <summary>Normalises "80", "sm80", "sm_80", "compute_80" and checks the form.</summary>
    public static string NormalizeArch(string arch)
    {
        string a = arch.Trim().ToLowerInvariant();
        if (a.All(char.IsAsciiDigit)) a = "sm_" + a;
        if (a.StartsWith("sm", StringComparison.Ordinal) && !a.StartsWith("sm_", StringComparison.Ordinal)) a = "sm_" + a[2..];
        bool ok = (a.StartsWith("sm_", StringComparison.Ordinal) || a.StartsWith("compute_", StringComparison.Ordinal))
                  && a[(a.IndexOf('_') + 1)..].TrimEnd('a').All(char.IsAsciiDigit) && a.Length > a.IndexOf('_') + 2;
        if (!ok) throw new InputException("--arch", $"architecture '{arch}' is not of the form sm_80, sm_90a or compute_90");
        return a;
    }

    /// <summary>Compiles one kernel file (from the cache when possible). Never throws for a compile error: see Success and Log.</summary>
    public KernelBuildResult Compile(string file, string arch)
    {
        arch = NormalizeArch(arch);
        var (major, minor) = NvrtcVersion();
        string source = ReadSource(file);
        var headers = Headers();
        string[] options = [.. BaseOptions, $"--gpu-architecture={arch}", $"-DMETALORA_ARCH={ArchNumber(arch)}"];
        bool ptx = arch.StartsWith("compute_", StringComparison.Ordinal);

        string key = CacheKey([source, .. headers.Select(h => h.Text)], arch, $"{major}.{minor}", options);
        string? cachePath = CacheDirectory.Length == 0 ? null
            : Path.Combine(CacheDirectory, $"{Stem(file)}.{arch}.{key}{(ptx ? ".ptx" : ".cubin")}");
        if (cachePath != null && File.Exists(cachePath))
        {
            try { return new KernelBuildResult(file, arch, File.ReadAllBytes(cachePath), "", TimeSpan.Zero, true); }
            catch (IOException) { /* a half-written or vanished entry: compile again */ }
        }

        var sw = Stopwatch.StartNew();
        var (image, log) = CompileWithNvrtc(file, source, headers, options, ptx);
        sw.Stop();
        if (image != null && cachePath != null) TryWriteCache(cachePath, image);
        return new KernelBuildResult(file, arch, image, log, sw.Elapsed, false);
    }

    /// <summary>The image of a file, or a <see cref="KernelCompileException"/> carrying NVRTC's log.</summary>
    public byte[] GetImage(string file, string arch)
    {
        var r = Compile(file, arch);
        return r.Image ?? throw new KernelCompileException($"NVRTC failed to compile {file} for {r.Arch}:\n{r.Log}");
    }

    /// <summary>
    /// Compiles every engine kernel file for arch, and with <paramref name="dev"/> the playground's too; writes each
    /// image to outDir (stem.arch.cubin / .ptx, e.g. attention.sm_90.cubin, dev.attention.02_mma_forward.sm_90.cubin)
    /// when given. Failures are returned, not thrown, so a caller can print every log.
    /// </summary>
    public static IReadOnlyList<KernelBuildResult> BuildAll(string arch, string? outDir, string? cacheDirectory = null, bool dev = false) =>
        // An explicit build compiles for real: the cache is only consulted when a directory is named.
        BuildAll(_ => arch, outDir, new KernelCompiler(cacheDirectory ?? ""), dev);

    /// <summary>
    /// The same with each file's arch chosen by <paramref name="archOf"/> (a device's <see cref="DeviceArch"/>), through
    /// the given compiler and its cache: with the default cache this builds exactly the images the backend then loads.
    /// </summary>
    public static IReadOnlyList<KernelBuildResult> BuildAll(Func<string, string> archOf, string? outDir, KernelCompiler compiler, bool dev = false)
    {
        if (outDir != null) Directory.CreateDirectory(outDir);
        string[] files = dev ? [.. KernelFiles(), .. DevKernelFiles()] : [.. KernelFiles()];
        var results = new KernelBuildResult[files.Length];
        // One NVRTC program per file, compiled side by side (NVRTC programs are independent); results in file order.
        Parallel.For(0, files.Length, i => results[i] = compiler.Compile(files[i], archOf(files[i])));
        foreach (var r in results)
            if (r.Image != null && outDir != null)
                File.WriteAllBytes(Path.Combine(outDir, $"{Stem(r.File)}.{r.Arch}{(r.IsPtx ? ".ptx" : ".cubin")}"), r.Image);
        return results;
    }

    static int ArchNumber(string arch) => int.Parse(arch[(arch.IndexOf('_') + 1)..].TrimEnd('a'));

    static string CacheKey(string[] sources, string arch, string nvrtc, string[] options)
    {
        string all = string.Join("\n\u0001", [.. sources, arch, nvrtc, .. options]);
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(all)))[..20];
    }

    static void TryWriteCache(string path, byte[] image)
    {
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            string tmp = path + "." + Environment.ProcessId + ".tmp";
            File.WriteAllBytes(tmp, image);
            File.Move(tmp, path, overwrite: true);   // atomic, so a concurrent reader never sees half a file
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // A read-only home only costs a recompile next time.
        }
    }

    static unsafe (byte[]? Image, string Log) CompileWithNvrtc(string file, string source, IReadOnlyList<(string Name, string Text)> headerFiles,
        string[] options, bool ptx)
    {
        using var strings = new Utf8Strings();
        byte* src = strings.Add(source);
        byte* name = strings.Add(file);
        int n = headerFiles.Count;
        byte** headers = stackalloc byte*[Math.Max(n, 1)];
        byte** includeNames = stackalloc byte*[Math.Max(n, 1)];
        for (int i = 0; i < n; i++)
        {
            headers[i] = strings.Add(headerFiles[i].Text);
            includeNames[i] = strings.Add(headerFiles[i].Name);
        }
        byte** opts = stackalloc byte*[options.Length];
        for (int i = 0; i < options.Length; i++) opts[i] = strings.Add(options[i]);

        CudaCheck.Nvrtc(Nvrtc.nvrtcCreateProgram(out IntPtr prog, src, name, n, headers, includeNames));
        try
        {
            int rc = Nvrtc.nvrtcCompileProgram(prog, options.Length, opts);
            string log = ProgramLog(prog);
            if (rc == Nvrtc.NVRTC_ERROR_COMPILATION) return (null, log);
            CudaCheck.Nvrtc(rc);
            byte[] image;
            if (ptx)
            {
                CudaCheck.Nvrtc(Nvrtc.nvrtcGetPTXSize(prog, out nuint size));
                image = new byte[(int)size];
                fixed (byte* p = image) CudaCheck.Nvrtc(Nvrtc.nvrtcGetPTX(prog, p));
            }
            else
            {
                CudaCheck.Nvrtc(Nvrtc.nvrtcGetCUBINSize(prog, out nuint size));
                image = new byte[(int)size];
                fixed (byte* p = image) CudaCheck.Nvrtc(Nvrtc.nvrtcGetCUBIN(prog, p));
            }
            return (image, log);
        }
        finally
        {
            Nvrtc.nvrtcDestroyProgram(ref prog);
        }
    }

    static unsafe string ProgramLog(IntPtr prog)
    {
        if (Nvrtc.nvrtcGetProgramLogSize(prog, out nuint size) != Nvrtc.NVRTC_SUCCESS || size <= 1) return "";
        var buf = new byte[(int)size];
        fixed (byte* p = buf)
            if (Nvrtc.nvrtcGetProgramLog(prog, p) != Nvrtc.NVRTC_SUCCESS) return "";
        return Encoding.UTF8.GetString(buf, 0, buf.Length - 1).TrimEnd();
    }

    /// <summary>NUL-terminated UTF-8 copies in unmanaged memory, freed together.</summary>
    sealed unsafe class Utf8Strings : IDisposable
    {
        readonly List<IntPtr> blocks = [];

        public byte* Add(string s)
        {
            byte[] bytes = Encoding.UTF8.GetBytes(s);
            IntPtr p = System.Runtime.InteropServices.Marshal.AllocHGlobal(bytes.Length + 1);
            blocks.Add(p);
            var span = new Span<byte>((void*)p, bytes.Length + 1);
            bytes.CopyTo(span);
            span[^1] = 0;
            return (byte*)p;
        }

        public void Dispose()
        {
            foreach (IntPtr p in blocks) System.Runtime.InteropServices.Marshal.FreeHGlobal(p);
        }
    }
}
