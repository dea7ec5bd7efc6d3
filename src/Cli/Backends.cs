using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;

namespace MetaLoraNative.Cli;

/// <summary>Picks the engine a command runs on.</summary>
public static class Backends
{
    public static IBackend Create(string device, bool fp64 = false) => device switch
    {
        "cpu" => fp64 ? CpuBackend.F64() : CpuBackend.F32(),
        "cuda" => CreateCuda(),
        _ => throw new ArgumentException($"unknown device '{device}' (cpu, cuda)"),
    };

    static IBackend CreateCuda() =>
        throw new NotSupportedException("the CUDA engine is not part of this build yet; use --device cpu");
}
