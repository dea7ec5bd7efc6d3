using System.CommandLine;
using MetaLoraNative.Kernels;

namespace MetaLoraNative.Cli.Commands;

/// <summary>
/// `metalora kernels build --arch sm_80|sm_90 [--out DIR]`: compiles every embedded kernel with NVRTC. Needs
/// only libnvrtc (no GPU, no driver), so CI can check the kernels. Exit code 1 when any file fails.
/// </summary>
public static class KernelsCommand
{
    public static Command Create()
    {
        var arch = new Option<string>("--arch")
        {
            Description = "Target: sm_80, sm_90, sm_90a (CUBIN) or compute_80, compute_90 (PTX)",
            DefaultValueFactory = _ => "sm_90",
        };
        var outDir = new Option<string?>("--out")
        {
            Description = "Folder for the compiled images (file.arch.cubin / .ptx); omitted: compile only",
        };
        var build = new Command("build", "Compile every kernel file with NVRTC and report sizes and times") { arch, outDir };
        build.SetAction(parseResult => Build(parseResult.GetValue(arch)!, parseResult.GetValue(outDir)));

        var list = new Command("list", "List the embedded kernel files");
        list.SetAction(_ =>
        {
            foreach (string f in KernelCompiler.KernelFiles()) Console.WriteLine(f);
            return 0;
        });

        return new Command("kernels", "CUDA kernel tools (NVRTC)") { build, list };
    }

    static int Build(string arch, string? outDir)
    {
        string target;
        (int Major, int Minor) version;
        try
        {
            target = KernelCompiler.NormalizeArch(arch);
            version = KernelCompiler.NvrtcVersion();
        }
        catch (Exception e) when (e is ArgumentException or DllNotFoundException)
        {
            Console.Error.WriteLine(e.Message);
            return 1;
        }
        Console.WriteLine($"NVRTC {version.Major}.{version.Minor}, target {target}{(outDir != null ? $", output {outDir}" : "")}");
        int failed = 0;
        foreach (var r in KernelCompiler.BuildAll(target, outDir))
        {
            if (r.Success)
            {
                Console.WriteLine($"  {r.File,-18} {r.Image!.Length,9:N0} bytes {r.CompileTime.TotalMilliseconds,8:F0} ms");
                if (r.Log.Length > 0) Console.WriteLine(Indent(r.Log));
            }
            else
            {
                failed++;
                Console.WriteLine($"  {r.File,-18}    FAILED {r.CompileTime.TotalMilliseconds,8:F0} ms");
                Console.Error.WriteLine(Indent(r.Log));
            }
        }
        Console.WriteLine(failed == 0 ? "all kernels compiled" : $"{failed} kernel file(s) failed");
        return failed == 0 ? 0 : 1;
    }

    static string Indent(string log) => string.Join('\n', log.Split('\n').Select(l => "      " + l));
}
