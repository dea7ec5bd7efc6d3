using MetaLoraNative.Engine.Flux;

namespace MetaLoraNative.Kernels.Verification;

/// <summary>
/// The model at FLUX.1-dev's width: one double and one single block with flux-dev's hidden 3072, 24 heads of 128,
/// RoPE axes 16/56/56, MLP 12288 and its embedders (T5 4096, CLIP 768, guidance), a Meta LoRA with r1 16 and r2 1 on
/// all 20 targets of the two blocks, Stage-1 style (D, M, U train). At 256² and 512² (256 and 1024 image tokens) with
/// 64 text tokens: every kernel at the widths, head count and token counts it meets in training, against the fp64
/// oracle with the bf16-emulation baseline, as for the tiny model. Depth adds nothing a GPU kernel could get wrong
/// that one block of each kind does not show, and the text is kept short so the oracle stays affordable: the two
/// cases are about 2.2 TFLOP of fp64 and fp32 on the CPU, under a minute on 16 cores (docs/GPU.md).
/// </summary>
public static partial class CudaParity
{
    /// <summary>flux-dev with one block of each kind.</summary>
    public static FluxConfig FluxDevOneAndOne { get; } = FluxConfig.FluxDev with { Name = "flux-dev-1+1", Depth = 1, DepthSingleBlocks = 1 };

    /// <summary>(image side, case) of the flux-width checks: 256² (16×16 latent patches) and 512² (32×32).</summary>
    public static readonly (int Side, ModelCase Case)[] FluxWidthCases =
    [
        (256, new ModelCase(FluxDevOneAndOne, 1, 16, 16, 64, LoraRank1, LoraRank2)),
        (512, new ModelCase(FluxDevOneAndOne, 1, 32, 32, 64, LoraRank1, LoraRank2)),
    ];

    static IEnumerable<ParityCheck> FluxWidthChecks() =>
        FluxWidthCases.Select(c => new ParityCheck($"model flux-dev width {c.Side}x{c.Side}",
            $"one double + one single block at flux-dev width, {c.Case.ImageTokens} image + {c.Case.TextTokens} text tokens, " +
            $"Meta LoRA r1 {c.Case.Rank1} r2 {c.Case.Rank2} on every target: output, loss and every D, M, U gradient vs fp64, " +
            "baseline the bf16-emulating CPU engine",
            p =>
            {
                var (g, r, e) = RunModelEverywhere(p, c.Case);
                CompareOutputs(p, $"{c.Side}² model", g, r, e);
                CompareGradients(p, g, r, e);
            }) { Slow = true });
}
