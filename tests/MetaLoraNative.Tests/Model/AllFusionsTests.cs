using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Training;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Model;

/// <summary>
/// The fused forms together: every subset of <see cref="Fusions"/> (qkv, residual-norm, gelu meet in the same blocks:
/// the qkv and GELU fusions share the single block's linear1 output and its gradient, the qkv and residual-norm
/// fusions the double block's joins) against <see cref="Fusions.None"/> on the tiny model in fp64: loss, every LoRA
/// gradient and d img. Both LoRA paths: Stage-1 style (D, M, U trained, stacked) and Stage 2 (D frozen, fused), the
/// latter also with the grouped A formation and dM (METALORA_LORA_GROUPED's switch); B 1 (the joins as views) and 2.
/// </summary>
public class AllFusionsTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData(1, false, false)]
    [InlineData(2, false, false)]
    [InlineData(1, true, false)]
    [InlineData(2, true, false)]
    [InlineData(1, true, true)]
    public void EverySubsetOfFusionsMatchesNoneInFp64(int batch, bool stage2, bool grouped)
    {
        using var be = CpuBackend.F64();
        using var w = FluxWeights.Random(FluxConfig.Tiny, be, 7);
        var plain = ModelFixture.FusionStep(be, w, Fusions.None, batch, stage2, grouped: false, recompute: false);
        Assert.All(plain.Grads, g => Assert.Contains(g, e => e != 0));
        for (var f = (Fusions)1; f <= Fusions.All; f++)
        {
            var fused = ModelFixture.FusionStep(be, w, f, batch, stage2, grouped, recompute: false);
            Assert.Equal(plain.Grads.Length, fused.Grads.Length);
            double worst = fused.WorstAgainst(plain);
            output.WriteLine($"B {batch}, {(stage2 ? "Stage 2 (fused LoRA" + (grouped ? ", grouped" : "") + ")" : "Stage 1 (stacked)")}, " +
                             $"fusions {FusionSettings.Format(f)}: worst relative difference {worst:E2}");
            Assert.True(worst < 1e-10, $"fusions {FusionSettings.Format(f)}: worst relative difference {worst:E2}");
        }
    }
}
