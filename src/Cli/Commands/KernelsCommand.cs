using System.CommandLine;
using System.Globalization;
using MetaLoraNative.Kernels;
using MetaLoraNative.Kernels.Native;
using MetaLoraNative.Kernels.Verification;

namespace MetaLoraNative.Cli.Commands;

/// <summary>
/// `metalora kernels build --arch sm_80|sm_90|device [--dev] [--out DIR]`: compiles every embedded kernel with NVRTC
/// (with --dev the playground's kernels/dev too). Needs only libnvrtc (no GPU, no driver), so CI can check the kernels;
/// `--arch device` compiles each file for the arch the CUDA backend loads on GPU 0, into the backend's kernel cache.
/// Exit code 1 when any file fails. `metalora kernels bench [--dev]` times the kernels at FLUX.1-dev's sizes on the
/// GPU, each bench checking its own outputs (exit 1 when one is wrong, 2 without a GPU).
/// </summary>
public static class KernelsCommand
{
    public static Command Create()
    {
        var arch = new Option<string>("--arch")
        {
            Description = "Target: sm_80, sm_90, sm_90a (CUBIN), compute_80, compute_90 (PTX), or 'device': per file the arch the " +
                          "CUDA backend loads on GPU 0 (sm_90 on an H100; sm_90a for files marked arch-specific), compiled into the " +
                          "backend's kernel cache so the next run loads exactly these images",
            DefaultValueFactory = _ => "sm_90",
        };
        var outDir = new Option<string?>("--out")
        {
            Description = "Folder for the compiled images (stem.arch.cubin / .ptx); omitted: compile only",
        };
        var dev = new Option<bool>("--dev") { Description = "Also the kernel playground's files (kernels/dev)" };
        var resources = new Option<bool>("--resources")
        {
            Description = "Also print every kernel's registers per thread, static shared memory, stack and spill (local) bytes, " +
                          "read from the cubin (what ptxas -v reports); needs a CUBIN arch (sm_*), not PTX",
        };
        var build = new Command("build", "Compile every kernel file with NVRTC and report sizes and times") { arch, outDir, dev, resources };
        build.SetAction(r => Build(r.GetValue(arch)!, r.GetValue(outDir), r.GetValue(dev), r.GetValue(resources)));

        var listDev = new Option<bool>("--dev") { Description = "Also the kernel playground's files (kernels/dev)" };
        var list = new Command("list", "List the embedded kernel files") { listDev };
        list.SetAction(r =>
        {
            foreach (string f in KernelCompiler.KernelFiles()) Console.WriteLine(f);
            if (r.GetValue(listDev))
                foreach (string f in KernelCompiler.DevKernelFiles()) Console.WriteLine(f);
            return 0;
        });

        var benchDev = new Option<bool>("--dev") { Description = "Also time the playground's versions (kernels/dev) beside the engine's" };
        var only = new Option<string[]>("--only") { Description = "Run only the benches with these names (see --list).", AllowMultipleArgumentsPerToken = true };
        var benchList = new Option<bool>("--list") { Description = "List the benches and exit." };
        var bench = new Command("bench", "Time the kernels at FLUX.1-dev's sizes on the GPU; every bench checks its outputs against closed-form values")
        {
            benchDev, only, benchList,
        };
        bench.SetAction(r => Bench(r.GetValue(benchDev), r.GetValue(only) ?? [], r.GetValue(benchList)));

        return new Command("kernels", "CUDA kernel tools (NVRTC, timings)") { build, list, bench };
    }

    static int Build(string arch, string? outDir, bool dev, bool resources)
    {
        bool forDevice = arch.Trim().Equals("device", StringComparison.OrdinalIgnoreCase);
        string target;
        (int Major, int Minor) version;
        DeviceInfo? device = null;
        try
        {
            target = forDevice ? "device" : KernelCompiler.NormalizeArch(arch);
            version = KernelCompiler.NvrtcVersion();
            if (forDevice && !TryQueryDevice(out device, out string why))
            {
                Console.Error.WriteLine($"--arch device: {why}; name an arch instead (--arch sm_80, sm_90)");
                return 1;
            }
        }
        catch (Exception e) when (e is ArgumentException or DllNotFoundException)
        {
            Console.Error.WriteLine(e.Message);
            return 1;
        }
        var nvrtc = NativeLibraries.Selection(NativeLibraries.Nvrtc);
        Console.WriteLine($"NVRTC {version.Major}.{version.Minor} ({NativeLibraries.LoadedPath(NativeLibraries.Nvrtc)}; {nvrtc.Message}), " +
                          $"target {(device != null ? $"{device.Name} ({device.Arch}), per file" : target)}" +
                          $"{(dev ? ", with kernels/dev" : "")}{(outDir != null ? $", output {outDir}" : "")}");
        var results = device != null
            ? KernelCompiler.BuildAll(f => KernelCompiler.DeviceArch(f, device.Major, device.Minor, version.Major), outDir, new KernelCompiler(), dev)
            : KernelCompiler.BuildAll(target, outDir, dev: dev);
        int failed = 0;
        foreach (var r in results)
        {
            string arch1 = device != null ? $" {r.Arch,-7}" : "";
            if (r.Success)
            {
                Console.WriteLine($"  {r.File,-34}{arch1} {r.Image!.Length,9:N0} bytes {r.CompileTime.TotalMilliseconds,8:F0} ms{(r.FromCache ? " (cached)" : "")}");
                if (r.Log.Length > 0) Console.WriteLine(Indent(r.Log));
                if (resources && r.Arch.StartsWith("sm_", StringComparison.Ordinal))
                    foreach (var k in CubinResources.Read(r.Image, r.File)) Console.WriteLine($"      {k}");
            }
            else
            {
                failed++;
                Console.WriteLine($"  {r.File,-34}{arch1}    FAILED {r.CompileTime.TotalMilliseconds,8:F0} ms");
                Console.Error.WriteLine(Indent(r.Log));
            }
        }
        Console.WriteLine(failed == 0 ? "all kernels compiled" : $"{failed} kernel file(s) failed");
        return failed == 0 ? 0 : 1;
    }

    /// <summary>GPU 0 through the driver alone (no backend: that would compile the kernels itself).</summary>
    static bool TryQueryDevice(out DeviceInfo? device, out string why)
    {
        device = null;
        if (NativeLibraries.TryLoad(NativeLibraries.Cuda, out string report) == IntPtr.Zero) { why = $"no CUDA driver ({report})"; return false; }
        int rc = CuDriver.cuInit(0);
        if (rc != CuDriver.CUDA_SUCCESS) { why = $"cuInit failed: {CuDriver.ErrorString(rc)}"; return false; }
        if (CuDriver.cuDeviceGetCount(out int count) != CuDriver.CUDA_SUCCESS || count == 0) { why = "no GPU visible"; return false; }
        device = DeviceInfo.Query(0);
        why = "";
        return true;
    }

    static int Bench(bool dev, string[] only, bool listOnly)
    {
        IReadOnlyList<KernelBench> known = dev ? [.. KernelBenches.All, .. KernelBenches.Dev] : KernelBenches.All;
        if (listOnly)
        {
            foreach (var b in known) Console.WriteLine($"{b.Name,-20} {b.Description}");
            return 0;
        }
        var unknown = only.Where(n => known.All(b => b.Name != n)).ToArray();
        if (unknown.Length > 0)
        {
            Console.Error.WriteLine($"error: no bench named {string.Join(", ", unknown.Select(n => $"'{n}'"))}; see --list{(dev ? "" : " (and --dev)")}");
            return 1;
        }
        if (!CudaBackend.TryCreate(out var gpu, out string reason))
        {
            Console.Error.WriteLine($"kernels bench: no usable GPU: {reason}");
            return 2;
        }
        using (gpu)
        {
            Console.WriteLine($"kernel benches on {reason}");
            int wrong = 0;
            foreach (var b in known.Where(b => only.Length == 0 || only.Contains(b.Name)))
            {
                var r = b.Run(gpu!);
                string times = string.Join(", ", r.Timings.Select(t => string.Create(CultureInfo.InvariantCulture, $"{t.What} {t.Ms:F3} ms ({t.Tflops:F1} TFLOP/s)")));
                Console.WriteLine($"{r.Name,-20} {times}  {(r.Valid ? "ok" : "WRONG")}: {r.Check}");
                if (!r.Valid) wrong++;
            }
            return wrong == 0 ? 0 : 1;
        }
    }

    static string Indent(string log) => string.Join('\n', log.Split('\n').Select(l => "      " + l));
}
