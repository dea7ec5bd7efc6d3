using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Training;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Model;

/// <summary>
/// Central finite differences in fp64 through the whole micro model (one block of each kind, every LoRA target),
/// against the manual backward: with respect to D, M and U (and A, B in standard mode) and the latent input.
/// Error measure: |analytic - numeric| / max(|analytic| + |numeric|, 1e-4). With h = 1e-5 in fp64 the difference
/// quotient carries about 1e-16*|L|/h = 1e-11 of rounding and h^2*|L'''| = 1e-10 of truncation error; the 1e-4 floor
/// turns that into at most 1e-6 for gradients too small to measure relatively, so only a wrong gradient breaks 1e-5.
/// </summary>
public class ModelGradientTests(ITestOutputHelper output)
{
    const double H = 1e-5, Tolerance = 1e-5;

    static double RelativeError(double a, double n) => Math.Abs(a - n) / Math.Max(Math.Abs(a) + Math.Abs(n), 1e-4);

    [Theory]
    [InlineData(LoraMode.Meta)]
    [InlineData(LoraMode.Standard)]
    public void LoraFactorGradientsMatchFiniteDifferences(LoraMode mode)
    {
        using var be = CpuBackend.F64();
        var c = FluxConfig.Micro;
        using var w = FluxWeights.Random(c, be, 3);
        var model = new FluxModel(w);
        using var adapter = ModelFixture.RandomAdapter(be, c, mode, 3, 2, identities: 2, seed: 11);
        // two samples with different identities: exercises the per-sample grouping of Stage 1
        var binding = new LoraBinding(adapter, [0, 1], trainDown: true, trainIdentity: true);
        var (x, target) = ModelFixture.Batch(be, c, 2, 2, 2, 3, 5);
        using var _x = x;
        using var _t = target;

        var parameters = binding.TrainableParameters().ToArray();
        Trainer.LossAndGradients(model, x, target, binding, recompute: false, out var prediction);
        prediction.Dispose();

        var worst = new Dictionary<string, double>();
        var rng = new Random(1);
        int checkedCount = 0;
        foreach (var p in parameters)
        {
            var grad = be.DownloadDouble(p.Grad);
            Assert.Contains(grad, g => g != 0);             // every factor must receive a gradient
            for (int k = 0; k < 2; k++)
            {
                int i = rng.Next(grad.Length);
                double numeric = ModelFixture.CentralDifference(p.Value, i, H, () => ModelFixture.Loss(model, x, target, binding));
                double err = RelativeError(grad[i], numeric);
                string kind = p.Name[(p.Name.LastIndexOf(".lora_", StringComparison.Ordinal) + 1)..];
                worst[kind] = Math.Max(worst.GetValueOrDefault(kind), err);
                Assert.True(err < Tolerance, $"{p.Name}[{i}]: analytic {grad[i]:E6}, numeric {numeric:E6}, relative error {err:E2}");
                checkedCount++;
            }
        }
        foreach (var (kind, e) in worst.OrderBy(k => k.Key)) output.WriteLine($"{mode} {kind}: worst relative error {e:E2}");
        output.WriteLine($"{checkedCount} entries checked over {parameters.Length} factors");
    }

    [Fact]
    public void LatentInputGradientMatchesFiniteDifferences()
    {
        using var be = CpuBackend.F64();
        var c = FluxConfig.Micro;
        using var w = FluxWeights.Random(c, be, 4);
        var model = new FluxModel(w);
        using var adapter = ModelFixture.RandomAdapter(be, c, LoraMode.Meta, 3, 2, identities: 1, seed: 12);
        var binding = new LoraBinding(adapter, [0, 0], trainDown: true, trainIdentity: true);
        var (x, target) = ModelFixture.Batch(be, c, 2, 2, 3, 2, 6);
        using var _x = x;
        using var _t = target;

        double[] analytic;
        using (var y = model.Forward(x, binding, out var s))
        {
            be.MseLoss(y, target, out var dy);
            using (s) using (dy)
            using (var dx = model.BackwardWithInputGrad(s, dy, binding)) analytic = be.DownloadDouble(dx);
        }
        double worst = 0;
        for (int i = 0; i < analytic.Length; i++)
        {
            double err = RelativeError(analytic[i], ModelFixture.CentralDifference(x.Img, i, H, () => ModelFixture.Loss(model, x, target, binding)));
            worst = Math.Max(worst, err);
            Assert.True(err < Tolerance, $"d img[{i}]: analytic {analytic[i]:E6}, relative error {err:E2}");
        }
        output.WriteLine($"latent input: {analytic.Length} entries, worst relative error {worst:E2}");
    }

    [Fact]
    public void FrozenFactorsReceiveNoGradient()
    {
        using var be = CpuBackend.F64();
        var c = FluxConfig.Micro;
        using var w = FluxWeights.Random(c, be, 3);
        var model = new FluxModel(w);
        using var adapter = ModelFixture.RandomAdapter(be, c, LoraMode.Meta, 3, 2, identities: 1, seed: 13);
        var binding = new LoraBinding(adapter, [0], trainDown: false, trainIdentity: true);
        var (x, target) = ModelFixture.Batch(be, c, 1, 2, 2, 3, 7);
        using var _x = x;
        using var _t = target;
        foreach (var d in adapter.Down) d.ZeroGrad();
        Trainer.LossAndGradients(model, x, target, binding, recompute: false, out var y);
        y.Dispose();
        Assert.All(adapter.Down, d => Assert.Equal(0.0, be.SumSquares(d.Grad)));
        Assert.Contains(adapter.Identities[0].Up, u => be.SumSquares(u.Grad) > 0);
    }
}

public class RecomputationTests
{
    [Fact]
    public void RecomputedBlocksGiveBitIdenticalGradients()
    {
        using var be = CpuBackend.F32();
        var c = FluxConfig.Tiny;
        using var w = FluxWeights.Random(c, be, 3);
        var model = new FluxModel(w);
        using var adapter = ModelFixture.RandomAdapter(be, c, LoraMode.Meta, 4, 2, identities: 1, seed: 14);
        var binding = new LoraBinding(adapter, [0, 0], trainDown: true, trainIdentity: true);
        var (x, target) = ModelFixture.Batch(be, c, 2, 4, 4, 8, 9);
        using var _x = x;
        using var _t = target;

        float[][] Grads(bool recompute)
        {
            Trainer.LossAndGradients(model, x, target, binding, recompute, out var y);
            y.Dispose();
            return binding.TrainableParameters().Select(p => be.Download(p.Grad)).ToArray();
        }
        var plain = Grads(false);
        var recomputed = Grads(true);
        for (int i = 0; i < plain.Length; i++) Assert.Equal(plain[i], recomputed[i]);
    }
}
