using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Benchmarks;
using MetaLoraNative.Engine.Flux;

namespace MetaLoraNative.Cli;

/// <summary>Picks the engine a command runs on: --device auto (the default), cpu or cuda.</summary>
public static class Backends
{
    public const string Auto = "auto";

    /// <summary>
    /// The fp32 CPU engine's training throughput used for the time estimate, in FLOP/s, as measured: a Stage-2 step of
    /// the tiny preset (`metalora bench --device cpu --preset tiny --resolution 512 --txt 64`, 1,024 + 64 tokens,
    /// 5.10 GFLOP by StepBenchmark.Flop) took 8.93 s on the 2-core x86-64 build machine under load, 0.57 GFLOP/s.
    /// Wider GEMMs and more cores run faster, so the estimate is an upper bound on the time, not a promise.
    /// </summary>
    public const double CpuFlopsPerSecond = 0.57e9;

    public static IBackend Create(string device, bool fp64 = false, Action<string>? log = null) => device switch
    {
        "cpu" => fp64 ? CpuBackend.F64() : CpuBackend.F32(),
        "cuda" => CreateCuda(),
        Auto => CreateAuto(fp64, log ?? Console.WriteLine),
        _ => throw new InputException("--device", $"unknown device '{device}' (auto, cpu, cuda)"),
    };

    static IBackend CreateCuda() =>
        Kernels.CudaBackend.TryCreate(out var backend, out var reason)
            ? backend!
            : throw new RuntimeFailure("--device cuda", $"the CUDA engine is unavailable: {reason} (run 'metalora doctor'; --device cpu works everywhere)");

    /// <summary>CUDA when a usable GPU is found, else the fp32 CPU engine (always the CPU for fp64); one log line says which and why.</summary>
    static IBackend CreateAuto(bool fp64, Action<string> log)
    {
        if (fp64)
        {
            log("device auto: cpu (fp64 runs only on the CPU engine)");
            return CpuBackend.F64();
        }
        if (Kernels.CudaBackend.TryCreate(out var backend, out var reason))
        {
            log($"device auto: cuda, {reason}");
            return backend!;
        }
        log($"device auto: cpu (no usable GPU: {reason})");
        return CpuBackend.F32();
    }

    /// <summary>
    /// Expected seconds per training step of a model on the CPU engine: <see cref="StepBenchmark.Flop"/>'s training
    /// FLOPs for batch <paramref name="batch"/> over <see cref="CpuFlopsPerSecond"/>.
    /// </summary>
    public static double CpuSecondsPerStep(FluxConfig config, int imageTokens, int textTokens, int batch = 1) =>
        batch * StepBenchmark.Flop(config, imageTokens, textTokens).Train / CpuFlopsPerSecond;

    /// <summary>
    /// A warning line when a model as large as FLUX.1-dev is about to train on the CPU, with the expected time per
    /// step at (<paramref name="imageTokens"/>, <paramref name="textTokens"/>); null on the GPU or for small models.
    /// </summary>
    public static string? SlowCpuWarning(IBackend backend, FluxConfig config, int imageTokens, int textTokens, int batch = 1)
    {
        if (backend is not (CpuBackend<float> or CpuBackend<double>) || config.HiddenSize < FluxConfig.FluxDev.HiddenSize) return null;
        double seconds = CpuSecondsPerStep(config, imageTokens, textTokens, batch);
        return $"warning: a {config.Name}-sized model on the CPU engine: about {Duration(seconds)} per step (batch {batch}, " +
               $"{imageTokens} image + {textTokens} text tokens: {StepBenchmark.Flop(config, imageTokens, textTokens).Train * batch / 1e12:0} TFLOP " +
               $"at about {CpuFlopsPerSecond / 1e9:0.00} GFLOP/s); use a GPU (--device cuda) for real runs";
    }

    /// <summary>Prints <see cref="SlowCpuWarning"/> for the first training example's shape to stderr, when there is one.</summary>
    public static void WarnIfSlow(IBackend backend, FluxConfig config, Engine.Training.Example example, int batch)
    {
        if (SlowCpuWarning(backend, config, example.ImageTokens, example.T5Length, batch) is { } warning) Console.Error.WriteLine(warning);
    }

    static string Duration(double s) => s switch
    {
        < 120 => $"{s:0} s",
        < 7200 => $"{s / 60:0} min",
        < 172800 => $"{s / 3600:0.0} h",
        _ => $"{s / 86400:0.0} days",
    };
}
