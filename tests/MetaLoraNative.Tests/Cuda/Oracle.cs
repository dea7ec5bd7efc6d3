using MetaLoraNative.Engine;
using MetaLoraNative.Kernels;
using MetaLoraNative.Kernels.Verification;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cuda;

/// <summary>
/// Every CUDA test class is in this collection, which xunit runs alone and in sequence: the classes share one GPU,
/// its primary context and the kernel cache, and a fault one test leaves on the context must not be blamed on
/// another running at the same time.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class CudaCollection
{
    public const string Name = "CUDA (one GPU, sequential)";
}

/// <summary>The reference backend the CUDA parity tests compare against (the fp64 CPU backend).</summary>
public static class Oracle
{
    public static IBackend Cpu() => CudaParity.Oracle();
}

/// <summary>The GPU under test: opened per test, or the test is skipped with the reason printed.</summary>
public static class Gpu
{
    public static CudaBackend OpenOrSkip(ITestOutputHelper output)
    {
        bool ok = CudaBackend.TryCreate(out var gpu, out string reason);
        output.WriteLine(ok ? $"device: {reason}" : $"skipped: {reason}");
        Skip.IfNot(ok, reason);
        return gpu!;
    }
}

/// <summary>
/// The CUDA tests' side of <see cref="CudaParity"/> (src/Kernels/Verification): one theory case per check of a group,
/// the same checks `metalora check cuda` runs on a machine with only the published binary; the tolerance rules are
/// documented there and in docs/GPU.md. And of <see cref="KernelBenches"/>: each bench's own output check.
/// </summary>
public static class Parity
{
    /// <summary>The names of the engine's checks of one group (Cuda&lt;Group&gt;Tests' theory data).</summary>
    public static TheoryData<string> Checks(string group) => [.. CudaParity.All.Where(c => c.Group == group).Select(c => c.Name)];

    /// <summary>The names of the playground's checks of one group (kernels/dev).</summary>
    public static TheoryData<string> DevChecks(string group) => [.. CudaParity.Dev.Where(c => c.Group == group).Select(c => c.Name)];

    /// <summary>Runs one check on a fresh GPU backend and oracle, printing every comparison; skips without a GPU.</summary>
    public static void Run(string name, ITestOutputHelper output)
    {
        var check = CudaParity.Find(name);
        using var gpu = Gpu.OpenOrSkip(output);
        using var oracle = Oracle.Cpu();
        var r = check.Run(gpu, oracle);
        output.WriteLine($"{r.Name}: {r.Elapsed.TotalSeconds:F1} s");
        foreach (var m in r.Measures)
            output.WriteLine($"{m.What}: ours {m.Error:E3}, allowed {m.Allowed:E3}, bf16 baseline {m.Baseline:E3}, max|ref| {m.MaxRef:E3}{(m.Pass ? "" : "  FAIL")}");
        Assert.True(r.Failure == null, r.Failure);
        Assert.True(r.Pass, $"{r.Name}: {r.Worst} error {r.Error:E3} > allowed {r.Allowed:E3}");
    }

    /// <summary>Runs one kernel bench, printing its timings; fails when the timed calls computed a wrong result.</summary>
    public static void Bench(string name, ITestOutputHelper output)
    {
        var bench = KernelBenches.Find(name);
        using var gpu = Gpu.OpenOrSkip(output);
        var r = bench.Run(gpu);
        foreach (var t in r.Timings) output.WriteLine($"{r.Name} {t.What}: {t.Ms:F3} ms, {t.Tflops:F1} TFLOP/s");
        output.WriteLine($"pool peak {gpu.PeakBytes / 1048576.0:F0} MiB; {r.Check}");
        Assert.True(r.Valid, r.Check);
    }
}

