using MetaLoraNative.Engine;
using MetaLoraNative.Kernels.Verification;

namespace MetaLoraNative.Tests.Cuda;

/// <summary>The reference backend the CUDA parity tests compare against (the fp64 CPU backend).</summary>
public static class Oracle
{
    public static IBackend Cpu() => CudaParity.Oracle();
}
