using MetaLoraNative.Engine;

namespace MetaLoraNative.Tests.Cuda;

/// <summary>The reference backend the CUDA parity tests compare against (the fp64 CPU backend).</summary>
public static class Oracle
{
    public static IBackend Cpu() => throw new NotImplementedException("wire to CpuBackend");
}
