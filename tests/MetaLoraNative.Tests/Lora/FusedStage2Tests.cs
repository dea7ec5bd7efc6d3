using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Training;
using MetaLoraNative.Kernels.Verification;
using MetaLoraNative.Tests.Model;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Lora;

/// <summary>
/// The fused Stage-2 LoRA path (FusedStage2.cs) against the stacked one (LoraBinding.cs) through the whole tiny model
/// (qkv and single-block linear1 carry three and four targets per module), with D frozen: the loss, dM, dU and the
/// latent input gradient. Error measure per tensor: max |fused − stacked| / max |stacked|.
/// - fp64: the two paths differ only in the association of the products ((x·Dᵀ)·Mᵀ vs x·(M·D)ᵀ), i.e. in fp64
///   rounding, ≈ 1e-16 per product and a few orders more after the model's depth: 1e-10 is the bound.
/// - fp32: each path also stores different intermediates in fp32 (down and mid vs A and a, 2^-24 ≈ 6e-8 each),
///   which the model carries to the output; the bound is the op tests' fp32 budget, 1e-5 (≈ 100 ulps), measured
///   values are printed.
/// Then finite differences of dM and dU through the fused path, and A's invalidation: formed once per step, rebuilt
/// after AdamW and after any other write of M.
/// </summary>
public class FusedStage2Tests(ITestOutputHelper output)
{
    const int R1 = 4, R2 = 2;

    record Outcome(double Loss, double[][] Grads, double[] DImg);

    static Outcome Run(FluxModel model, LoraAdapter adapter, int[] ids, LoraPath path, FluxInputs x, Tensor target)
    {
        var be = model.Backend;
        var binding = new LoraBinding(adapter, ids, trainDown: false, trainIdentity: true, path);
        Assert.Equal(path, binding.Path);
        foreach (var p in binding.TrainableParameters()) p.ZeroGrad();
        double loss;
        double[] dImg;
        using (var y = model.Forward(x, binding, out var s))
        {
            loss = be.MseLoss(y, target, out var dy);
            using (s) using (dy)
            using (var dx = model.BackwardWithInputGrad(s, dy, binding)) dImg = be.DownloadDouble(dx);
        }
        return new(loss, [.. binding.TrainableParameters().Select(p => be.DownloadDouble(p.Grad))], dImg);
    }

    static double Error(double[] fused, double[] stacked)
    {
        double diff = 0, scale = 0;
        for (int i = 0; i < stacked.Length; i++)
        {
            diff = Math.Max(diff, Math.Abs(fused[i] - stacked[i]));
            scale = Math.Max(scale, Math.Abs(stacked[i]));
        }
        Assert.True(scale > 0, "a gradient that is zero everywhere compares nothing");
        return diff / scale;
    }

    /// <summary>Runs both paths on one adapter and returns the worst error over loss, every factor gradient and dx.</summary>
    double Compare(IBackend be, int[] ids, string what)
    {
        var c = FluxConfig.Tiny;
        using var w = FluxWeights.Random(c, be, 3);
        var model = new FluxModel(w);
        using var adapter = ModelFixture.RandomAdapter(be, c, LoraMode.Meta, R1, R2, identities: ids.Max() + 1, seed: 21);
        Assert.Contains(FluxNames.LoraTargets(c).GroupBy(t => t.BflModule), g => g.Count() >= 3);
        var (x, target) = ModelFixture.Batch(be, c, ids.Length, 4, 4, 8, 9);
        using var _x = x;
        using var _t = target;
        var stacked = Run(model, adapter, ids, LoraPath.Stacked, x, target);
        var fused = Run(model, adapter, ids, LoraPath.Fused, x, target);
        Assert.Equal(stacked.Grads.Length, fused.Grads.Length);
        double loss = Math.Abs(fused.Loss - stacked.Loss) / Math.Abs(stacked.Loss);
        double grads = stacked.Grads.Select((g, i) => Error(fused.Grads[i], g)).Max();
        double dImg = Error(fused.DImg, stacked.DImg);
        output.WriteLine($"{what}, identities [{string.Join(", ", ids)}]: loss {loss:E2}, worst dM/dU {grads:E2} over {stacked.Grads.Length} factors, dx {dImg:E2}");
        return Math.Max(loss, Math.Max(grads, dImg));
    }

    [Theory]
    [InlineData(new[] { 0, 0 })]          // Stage 2: batch 2, one identity
    [InlineData(new[] { 0, 1, 1 })]       // the Stage-1 warm-up: two identities, groups of 1 and 2 samples
    public void FusedMatchesStackedInFp64(int[] ids)
    {
        using var be = CpuBackend.F64();
        double err = Compare(be, ids, "fp64");
        Assert.True(err < 1e-10, $"fused vs stacked in fp64: {err:E2}");
    }

    [Fact]
    public void FusedMatchesStackedInFp32()
    {
        using var be = CpuBackend.F32();
        double err = Compare(be, [0, 0], "fp32");
        Assert.True(err < 1e-5, $"fused vs stacked in fp32: {err:E2}");
    }

    /// <summary>
    /// The parity checks' LoRA run (CudaParity.RunLoraModule: one module at flux-dev's widths, r1 16, r2 1, three
    /// samples of two identities) on every target kind, fused vs stacked in fp64: delta, dx, and every M and U gradient.
    /// </summary>
    [Fact]
    public void FusedMatchesStackedOnEveryFluxDevTargetKind()
    {
        using var be = CpuBackend.F64();
        foreach (var kind in LoraKind.Of(FluxConfig.FluxDev))
        {
            var stacked = CudaParity.RunLoraModule(be, kind, [0, 0, 1], CudaParity.LoraFactors.Random, LoraPath.Stacked);
            var fused = CudaParity.RunLoraModule(be, kind, [0, 0, 1], CudaParity.LoraFactors.Random, LoraPath.Fused);
            var identity = stacked.Grads.Where(g => !g.Name.EndsWith(".lora_down.weight", StringComparison.Ordinal)).ToArray();
            Assert.Equal(identity.Select(g => g.Name), fused.Grads.Select(g => g.Name));
            double err = Math.Max(Error(fused.Delta, stacked.Delta), Error(fused.Dx, stacked.Dx));
            for (int i = 0; i < identity.Length; i++) err = Math.Max(err, Error(fused.Grads[i].Grad, identity[i].Grad));
            output.WriteLine($"{kind.Module} {kind.Shape}: worst {err:E2} over delta, dx and {identity.Length} M/U gradients");
            Assert.True(err < 1e-10, $"{kind.Module} {kind.Shape}: fused vs stacked {err:E2}");
        }
    }

    /// <summary>As ModelGradientTests, through the fused path: each probe of M or U marks it written.</summary>
    [Fact]
    public void FusedFactorGradientsMatchFiniteDifferences()
    {
        const double H = 1e-5, Tolerance = 1e-5;
        using var be = CpuBackend.F64();
        var c = FluxConfig.Micro;
        using var w = FluxWeights.Random(c, be, 3);
        var model = new FluxModel(w);
        using var adapter = ModelFixture.RandomAdapter(be, c, LoraMode.Meta, 3, 2, identities: 1, seed: 11);
        var binding = new LoraBinding(adapter, [0, 0], trainDown: false, trainIdentity: true);
        Assert.Equal(LoraPath.Fused, binding.Path);
        var (x, target) = ModelFixture.Batch(be, c, 2, 2, 2, 3, 5);
        using var _x = x;
        using var _t = target;
        Trainer.LossAndGradients(model, x, target, binding, recompute: false, out var prediction);
        prediction.Dispose();

        var rng = new Random(2);
        double worst = 0;
        int n = 0;
        foreach (var p in binding.TrainableParameters())
        {
            var grad = be.DownloadDouble(p.Grad);
            Assert.Contains(grad, g => g != 0);
            for (int k = 0; k < 2; k++, n++)
            {
                int i = rng.Next(grad.Length);
                double numeric = ModelFixture.CentralDifference(p.Value, i, H, () =>
                {
                    p.MarkWritten();
                    return ModelFixture.Loss(model, x, target, binding);
                });
                p.MarkWritten();   // restored
                double err = Math.Abs(grad[i] - numeric) / Math.Max(Math.Abs(grad[i]) + Math.Abs(numeric), 1e-4);
                worst = Math.Max(worst, err);
                Assert.True(err < Tolerance, $"{p.Name}[{i}]: analytic {grad[i]:E6}, numeric {numeric:E6}, relative error {err:E2}");
            }
        }
        output.WriteLine($"fused path: {n} entries of M and U, worst relative error {worst:E2}");
    }

    [Fact]
    public void MergedDownsAreFormedOncePerStepAndFollowEveryWriteOfM()
    {
        using var be = CpuBackend.F64();
        var c = FluxConfig.Micro;
        using var w = FluxWeights.Random(c, be, 3);
        var model = new FluxModel(w);
        using var adapter = ModelFixture.RandomAdapter(be, c, LoraMode.Meta, 3, 2, identities: 1, seed: 12);
        int targets = adapter.Targets.Count;
        var examples = Enumerable.Range(0, 2).Select(b => new Example(RandomWeights.Normal($"x0.{b}", 4, 4 * c.InChannels), 2, 2,
            RandomWeights.Normal($"txt.{b}", 4, 3 * c.ContextInDim), 3, RandomWeights.Normal($"y.{b}", 4, c.VecInDim))).ToList();
        var o = new TrainOptions { BatchSize = 2, Seed = 1, Recompute = RecomputePolicy.Off };
        var (x, target) = ModelFixture.Batch(be, c, 2, 2, 2, 3, 5);
        using var _x = x;
        using var _t = target;
        double Gap() => Math.Abs(ModelFixture.Loss(model, x, target, new LoraBinding(adapter, [0, 0], false, false, LoraPath.Fused)) -
                                 ModelFixture.Loss(model, x, target, new LoraBinding(adapter, [0, 0], false, false, LoraPath.Stacked)));

        for (int step = 1; step <= 2; step++)
        {
            // the step's forward forms every target's A (step 1: first use; step 2: AdamW moved every M), its backward reuses them
            Trainer.Step(model, new LoraBinding(adapter, [0, 0], trainDown: false, trainIdentity: true), examples, o, step, recompute: false);
            Assert.Equal(step * targets, adapter.MergedDowns.Formations);
        }
        double gap = Gap();
        Assert.True(gap < 1e-12, $"after two steps the fused loss differs from the stacked one by {gap:E2}: A is stale");
        Assert.Equal(3 * targets, adapter.MergedDowns.Formations);

        // a write outside AdamW that says so is followed too; only the written target's module is formed again
        var m = adapter.Identities[0].Mid[0]!;
        ModelFixture.Nudge(m.Value, 0, 0.25);
        m.MarkWritten();
        long before = adapter.MergedDowns.Formations;
        gap = Gap();
        Assert.True(gap < 1e-12, $"after a marked write of M the fused loss differs by {gap:E2}");
        int moduleTargets = adapter.TargetsOf(adapter.Targets[0].BflModule).Length;
        Assert.Equal(before + moduleTargets, adapter.MergedDowns.Formations);
    }

    [Fact]
    public void PathFollowsTheFactorsThatTrain()
    {
        using var be = CpuBackend.F64();
        var c = FluxConfig.Micro;
        using var meta = ModelFixture.RandomAdapter(be, c, LoraMode.Meta, 3, 2, identities: 1, seed: 1);
        using var standard = ModelFixture.RandomAdapter(be, c, LoraMode.Standard, 3, 3, identities: 1, seed: 1);
        Assert.Equal(LoraPath.Fused, new LoraBinding(meta, [0], trainDown: false, trainIdentity: true, LoraPath.Auto).Path);
        Assert.Equal(LoraPath.Fused, new LoraBinding(meta, [0], trainDown: false, trainIdentity: false, LoraPath.Auto).Path);
        Assert.Equal(LoraPath.Stacked, new LoraBinding(meta, [0], trainDown: true, trainIdentity: true, LoraPath.Auto).Path);
        Assert.Equal(LoraPath.Stacked, new LoraBinding(standard, [0], trainDown: false, trainIdentity: true, LoraPath.Auto).Path);
        Assert.Equal(LoraPath.Stacked, new LoraBinding(meta, [0], trainDown: false, trainIdentity: true, LoraPath.Stacked).Path);
        var e = Assert.Throws<ArgumentException>(() => new LoraBinding(meta, [0], trainDown: true, trainIdentity: true, LoraPath.Fused));
        Assert.Contains("trains D", e.Message);
        e = Assert.Throws<ArgumentException>(() => new LoraBinding(standard, [0], trainDown: false, trainIdentity: true, LoraPath.Fused));
        Assert.Contains("standard LoRA", e.Message);
    }
}
