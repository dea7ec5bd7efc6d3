using MetaLoraNative.Engine;
using MetaLoraNative.Kernels;
using MetaLoraNative.Kernels.Verification;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cuda;

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
