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
    sealed record Run(double Loss, double[][] Grads, double[] DImg);

    static Run Step(IBackend be, FluxWeights w, Fusions fusions, int batch, bool stage2, bool grouped)
    {
        var c = w.Config;
        var model = new FluxModel(w, fusions);
        using var adapter = ModelFixture.RandomAdapter(be, c, LoraMode.Meta, 3, 2, identities: batch, seed: 31);
        adapter.MergedDowns.Grouped = grouped;
        var binding = new LoraBinding(adapter, [.. Enumerable.Range(0, batch)], trainDown: !stage2, trainIdentity: true);
        Assert.Equal(stage2 ? LoraPath.Fused : LoraPath.Stacked, binding.Path);
        var (x, target) = ModelFixture.Batch(be, c, batch, 3, 5, 7, 32);
        using var _x = x;
        using var _t = target;
        double[] dImg;
        double loss;
        using (var y = model.Forward(x, binding, out var s, recompute: false))
        {
            loss = be.MseLoss(y, target, out var dy);
            using (s) using (dy)
            using (var dx = model.BackwardWithInputGrad(s, dy, binding)) dImg = be.DownloadDouble(dx);
        }
        binding.FinishBackward();
        var grads = binding.TrainableParameters().Select(p => be.DownloadDouble(p.Grad)).ToArray();
        return new Run(loss, grads, dImg);
    }

    static double Rel(double[] a, double[] b)
    {
        double d = 0, m = 0;
        for (int i = 0; i < a.Length; i++) { d = Math.Max(d, Math.Abs(a[i] - b[i])); m = Math.Max(m, Math.Abs(b[i])); }
        return d / Math.Max(m, 1e-300);
    }

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
        var plain = Step(be, w, Fusions.None, batch, stage2, grouped: false);
        Assert.All(plain.Grads, g => Assert.Contains(g, e => e != 0));
        for (var f = (Fusions)1; f <= Fusions.All; f++)
        {
            var fused = Step(be, w, f, batch, stage2, grouped);
            Assert.Equal(plain.Grads.Length, fused.Grads.Length);
            double worst = new[] { Math.Abs(fused.Loss - plain.Loss) / Math.Abs(plain.Loss), Rel(fused.DImg, plain.DImg) }
                .Concat(fused.Grads.Zip(plain.Grads, Rel)).Max();
            output.WriteLine($"B {batch}, {(stage2 ? "Stage 2 (fused LoRA" + (grouped ? ", grouped" : "") + ")" : "Stage 1 (stacked)")}, " +
                             $"fusions {FusionSettings.Format(f)}: worst relative difference {worst:E2}");
            Assert.True(worst < 1e-10, $"fusions {FusionSettings.Format(f)}: worst relative difference {worst:E2}");
        }
    }
}
