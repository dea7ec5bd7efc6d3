using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;

namespace MetaLoraNative.Tests.Cuda;

/// <summary>The reference backend the CUDA parity tests compare against (the fp64 CPU backend).</summary>
public static class Oracle
{
    public static IBackend Cpu() => CpuBackend.F64();
}
