using System.Diagnostics;
using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;

namespace MetaLoraNative.Kernels.Verification;

/// <summary>A named CUDA-vs-oracle check of one op group (IBackend's sections, "Lora" for the LoRA binding, "Model" for the whole model).</summary>
public sealed record ParityCheck(string Name, string Description, Action<ParityContext> Body)
{
    /// <summary>The op group the check belongs to: Memory, Gemm, ..., Objective, Lora, or Model.</summary>
    public string Group { get; init; } = "";

    /// <summary>
    /// A check that takes tens of seconds (the flux-width model: its fp64 oracle; the playground's attention at
    /// FLUX.1-dev's lengths): `check cuda --quick` leaves these out.
    /// </summary>
    public bool Slow { get; init; }

    /// <summary>Runs the check on the given backends (the caller owns and disposes them). Never throws.</summary>
    public ParityResult Run(CudaBackend gpu, IBackend oracle)
    {
        var ctx = new ParityContext(gpu, oracle);
        var clock = Stopwatch.StartNew();
        string? failure = null;
        try { Body(ctx); }
        catch (Exception e) { failure = e is ParityFailure ? e.Message : $"{e.GetType().Name}: {e.Message}"; }
        var ms = ctx.Measures;
        if (failure == null && ms.Count == 0) failure = "the check made no comparison";
        var worst = ms.Count == 0 ? null : ms.OrderByDescending(ParityResult.Ratio).First();
        return new ParityResult(Name, worst?.Error ?? double.NaN, worst?.Allowed ?? double.NaN, worst?.Baseline ?? double.NaN,
                                failure == null && ms.All(m => m.Pass), ms, failure, clock.Elapsed);
    }
}

/// <summary>
/// Every CUDA parity check: the CUDA backend against the fp64 CPU oracle, op by op on random inputs (shapes
/// deliberately not multiples of the kernels' tiles), then the whole tiny model and a short Stage 2 run. Used by
/// the xunit tests (tests/.../Cuda/Cuda&lt;Group&gt;Tests.cs) and by `metalora check cuda`, so a machine that only has
/// the published binary runs exactly the same checks. One partial file per op group (CudaParity.&lt;Group&gt;.cs, each
/// with its list of checks), ModelParity.cs for the whole model, and the playground's checks next to its launchers
/// (src/Kernels/Dev): <see cref="All"/> checks the engine, <see cref="Dev"/> the opt-in kernels of kernels/dev.
///
/// Tolerance rules (the FlashAttention rule, see docs/GPU.md):
/// - bf16 results: max|ours − ref| ≤ 2 · max|baseline − ref| + 2^-10 · max|ref|, where ref is the fp64 oracle on
///   the same bf16-exact inputs and the baseline is a plain bf16 computation of the same thing: for single ops the
///   oracle's result with every tensor that crosses an op boundary in bf16 on the GPU (the output, saved activations
///   fed to a backward) rounded to bf16; for the whole model the <see cref="Bf16EmulationBackend"/> (fp32 CPU
///   engine, same bf16 weights and inputs, every bf16 tensor rounded as the GPU stores it). The floor is a quarter
///   bf16 ulp at the largest value.
/// - fp32 results (Gemm into a Master c, AdamW, RoPE table, lse): max error ≤ rel · max|ref| (rel 1e-5 unless stated).
/// - Exact: Fill, the fp32 copies and round trips, and the Split/Merge qkv round trip.
/// </summary>
public static partial class CudaParity
{
    /// <summary>The reference backend every check compares against.</summary>
    public static IBackend Oracle() => CpuBackend.F64();

    /// <summary>The engine's checks, group by group in IBackend's order, then the whole-model checks.</summary>
    public static IReadOnlyList<ParityCheck> All => all ??=
    [
        .. In("Memory", MemoryChecks()),
        .. In("Gemm", GemmChecks()),
        .. In("Elementwise", ElementwiseChecks()),
        .. In("Layout", LayoutChecks()),
        .. In("Norm", NormChecks()),
        .. In("Attention", AttentionChecks()),
        .. In("Conditioning", ConditioningChecks()),
        .. In("Objective", ObjectiveChecks()),
        .. In("Lora", LoraChecks()),
        .. In("Quant", QuantChecks()),
        .. In("Model",
        [
            new("model forward", "tiny FLUX with a random Meta LoRA: output and loss vs fp64, baseline the bf16-emulating CPU engine", ModelForward),
            new("model lora grads", "tiny FLUX with a random Meta LoRA: every D, M, U gradient vs fp64, baseline the bf16-emulating CPU engine", ModelGradients),
            new("stage2 curve", $"{Stage2Iterations} Stage 2 iterations on the tiny model: loss curve and trained U vs fp64, baseline the bf16-emulating CPU engine", Stage2Curve),
            .. FluxWidthChecks(),
        ]),
    ];
    static ParityCheck[]? all;

    /// <summary>The playground's checks (kernels/dev): what a GPU run must pass before a version is promoted.</summary>
    public static IReadOnlyList<ParityCheck> Dev => dev ??=
    [
        .. In("Gemm", GroupedGemmChecks()), .. In("Gemm", GeluEpilogueChecks()), .. In("Gemm", LoraUpBackwardChecks()), .. In("Elementwise", GeluStridedChecks()),
        .. In("Elementwise", ElementwiseVecChecks()), .. In("Layout", LayoutVecChecks()), .. In("Conditioning", GatedResidualVecChecks()),
        .. In("Norm", ResidualNormChecks()), .. In("Attention", [.. AttentionMmaChecks(), .. QkvNormRopeChecks()]), .. In("Quant", Fp8MatmulChecks()),
        .. In("Model", GeluModelChecks()),
    ];
    static ParityCheck[]? dev;

    /// <summary>A check of <see cref="All"/> or <see cref="Dev"/> by name.</summary>
    public static ParityCheck Find(string name) =>
        All.Concat(Dev).FirstOrDefault(c => c.Name == name) ?? throw new InputException(name, $"no CUDA parity check named '{name}'");

    static IEnumerable<ParityCheck> In(string group, IEnumerable<ParityCheck> checks) => checks.Select(c => c with { Group = group });

    static float[] Rand(int n, int seed, float scale = 1f, float offset = 0f) => ParityContext.Rand(n, seed, scale, offset);
    static double[] RoundBf16(double[] v) => ParityContext.RoundBf16(v);
}
