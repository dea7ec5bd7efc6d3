using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Benchmarks;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Training;
using MetaLoraNative.Kernels.Verification;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Model;

/// <summary>
/// The whole tiny model (double and single blocks) with Fusions.QkvNormRope against Fusions.None: the fused
/// split-qkv + QK norm + RoPE is a reassociation of the same arithmetic, so in fp64 the loss, every LoRA gradient
/// and the latent input's gradient agree to rounding; on the bf16 emulation the fused form may round differently
/// (it stores q and k once, not after the norm and again after RoPE) but must be as close to fp64 as the unfused.
/// Batch 2, 7 text tokens and a 3×5 image grid (15 tokens): no length a multiple of anything.
/// </summary>
public class QkvFusionTests(ITestOutputHelper output)
{
    const int Batch = 2, GridH = 3, GridW = 5, TextTokens = 7;

    /// <param name="Launches">what the backend counted for the whole call (the fused form issues fewer)</param>
    sealed record Run(double Loss, double[][] Grads, double[] DImg, long Launches);

    static Run Step(IBackend be, FluxWeights w, Fusions fusions, bool recompute)
    {
        var c = w.Config;
        var model = new FluxModel(w, fusions);
        long before = Launches(be);
        using var adapter = ModelFixture.RandomAdapter(be, c, LoraMode.Meta, 3, 2, identities: 2, seed: 21);
        var binding = new LoraBinding(adapter, [0, 1], trainDown: true, trainIdentity: true);
        var (x, target) = ModelFixture.Batch(be, c, Batch, GridH, GridW, TextTokens, 22);
        using var _x = x;
        using var _t = target;
        double loss = Trainer.LossAndGradients(model, x, target, binding, recompute, out var prediction);
        prediction.Dispose();
        var grads = binding.TrainableParameters().Select(p => be.DownloadDouble(p.Grad)).ToArray();
        double[] dImg;
        using (var y = model.Forward(x, binding, out var s, recompute))
        {
            be.MseLoss(y, target, out var dy);
            using (s) using (dy)
            using (var dx = model.BackwardWithInputGrad(s, dy, binding)) dImg = be.DownloadDouble(dx);
        }
        return new Run(loss, grads, dImg, Launches(be) - before);
    }

    static long Launches(IBackend be) => be.Counters is { } c ? LaunchCounters.Sum(c.Snapshot().Values).Launches : 0;

    /// <summary>max |a − b| / max |b| over one array.</summary>
    static double Rel(double[] a, double[] b)
    {
        double d = 0, m = 0;
        for (int i = 0; i < a.Length; i++) { d = Math.Max(d, Math.Abs(a[i] - b[i])); m = Math.Max(m, Math.Abs(b[i])); }
        return d / Math.Max(m, 1e-300);
    }

    static double Worst(Run a, Run b) =>
        new[] { Math.Abs(a.Loss - b.Loss) / Math.Abs(b.Loss), Rel(a.DImg, b.DImg) }.Concat(a.Grads.Zip(b.Grads, Rel)).Max();

    /// <summary>‖a − b‖ / ‖b‖ (Euclidean) over the concatenation of arrays.</summary>
    static double Norm(IEnumerable<double[]> a, IEnumerable<double[]> b)
    {
        double d = 0, n = 0;
        foreach (var (x, y) in a.Zip(b))
            for (int i = 0; i < x.Length; i++) { d += (x[i] - y[i]) * (x[i] - y[i]); n += y[i] * y[i]; }
        return Math.Sqrt(d / n);
    }

    /// <summary>Loss, d img and all LoRA gradients: each run's relative error against the oracle.</summary>
    static (double Loss, double DImg, double Grads) Errors(Run r, Run oracle) =>
        (Math.Abs(r.Loss - oracle.Loss) / Math.Abs(oracle.Loss), Norm([r.DImg], [oracle.DImg]), Norm(r.Grads, oracle.Grads));

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void FusedModelMatchesTheUnfusedInFp64(bool recompute)
    {
        using var be = CpuBackend.F64();
        using var w = FluxWeights.Random(FluxConfig.Tiny, be, 5);
        var plain = Step(be, w, Fusions.None, recompute);
        var fused = Step(be, w, Fusions.QkvNormRope, recompute);
        Assert.Equal(plain.Grads.Length, fused.Grads.Length);
        Assert.All(fused.Grads, g => Assert.Contains(g, e => e != 0));
        double worst = Worst(fused, plain);
        output.WriteLine($"fp64, recompute {recompute}: loss {plain.Loss:G17} vs {fused.Loss:G17}; worst relative difference {worst:E2} over loss, " +
                         $"{plain.Grads.Length} LoRA gradients and d img");
        Assert.True(worst < 1e-10, $"fused vs unfused: worst relative difference {worst:E2}");
        // and the fused ops did run: they replace SplitQkv, two RmsNorms, the Concats and two ApplyRopes per block
        Assert.True(fused.Launches < plain.Launches, $"fused {fused.Launches} launches, unfused {plain.Launches}");
    }

    [Fact]
    public void FusedModelOnTheBf16EmulationIsAsCloseToFp64AsTheUnfused()
    {
        using var f64 = CpuBackend.F64();
        using var w64 = FluxWeights.Random(FluxConfig.Tiny, f64, 5);
        var oracle = Step(f64, w64, Fusions.None, false);
        using var emu = new Bf16EmulationBackend();
        using var wEmu = FluxWeights.Random(FluxConfig.Tiny, emu, 5);
        var plain = Step(emu, wEmu, Fusions.None, false);
        var fused = Step(emu, wEmu, Fusions.QkvNormRope, false);
        var ePlain = Errors(plain, oracle);
        var eFused = Errors(fused, oracle);
        output.WriteLine($"bf16 emulation vs fp64 (relative; loss, d img, LoRA gradients): unfused {ePlain}, fused {eFused}");
        // the unfused error sets the scale: 2x it (the flash-attention rule the parity checks use) plus bf16's relative half ulp
        const double floor = 1.0 / 512;
        Assert.True(eFused.Loss <= 2 * ePlain.Loss + floor, $"loss: fused {eFused.Loss:E2}, unfused {ePlain.Loss:E2}");
        Assert.True(eFused.DImg <= 2 * ePlain.DImg + floor, $"d img: fused {eFused.DImg:E2}, unfused {ePlain.DImg:E2}");
        Assert.True(eFused.Grads <= 2 * ePlain.Grads + floor, $"LoRA gradients: fused {eFused.Grads:E2}, unfused {ePlain.Grads:E2}");
        Assert.True(Worst(fused, plain) > 0, "the fused and unfused paths round differently on bf16, so they cannot agree bit for bit");
    }
}
