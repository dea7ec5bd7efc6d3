using System.Diagnostics;

namespace MetaLoraNative.Tests.Cli;

/// <summary>The built CLI as a process of its own, for commands that start workers of themselves (launchers, the queue).</summary>
internal static class CliProcess
{
    /// <summary>metalora.dll as the tests' build has it (the CLI project's output).</summary>
    public static string Dll => new[] { Path.Combine(AppContext.BaseDirectory, "metalora.dll"),
                                        Path.Combine(Reference.TorchReferenceTests.Repo, "src", "Cli", "bin", "Release", "net10.0", "metalora.dll") }
                                .First(File.Exists);

    /// <summary>`dotnet metalora.dll ARGS` in <paramref name="folder"/>, to its end (killed with its workers after <paramref name="limit"/>).</summary>
    public static (int Code, string Out, string Err) Run(string folder, TimeSpan limit, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = folder };
        foreach (var a in new[] { Dll }.Concat(args)) psi.ArgumentList.Add(a);
        foreach (var v in new[] { "RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS" }) psi.Environment.Remove(v);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(limit))
        {
            p.Kill(entireProcessTree: true);
            p.WaitForExit();
            throw new TimeoutException($"metalora {string.Join(' ', args)} ran past {limit.TotalSeconds} s:\n{stdout.Result}{stderr.Result}");
        }
        return (p.ExitCode, stdout.Result, stderr.Result);
    }
}
