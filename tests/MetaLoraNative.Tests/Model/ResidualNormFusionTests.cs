using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Benchmarks;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Kernels.Verification;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Model;

/// <summary>
/// The whole tiny model with <see cref="Fusions.ResidualNorm"/> (the double blocks' x1 = x + gate1·proj fused with
/// LNmod2, one backward op, and for B = 1 the txt/img rows of the joint attention output and of its gradient as
/// views) against <see cref="Fusions.None"/>: output, loss, every LoRA gradient and the latent input gradient.
/// Error per tensor: max |fused − unfused| / max |unfused|.
/// - fp64: the same arithmetic in another order (the LayerNorm backward added into dOut instead of dOut into it, d x
///   straight into the joint gradient instead of a copy), so rounding alone: 1e-12.
/// - fp32: the same, in fp32 rounding: 1e-5 (the op tests' budget).
/// - bf16 emulation: the fused op stores fewer bf16 intermediates (dx1 enters dy and dgate unrounded), so the two
///   paths differ by bf16 roundings; held to the parity rule against fp64: the fused path's error at most twice the
///   unfused one's plus a quarter bf16 ulp of the largest value (CudaParity's bf16 rule).
/// </summary>
public class ResidualNormFusionTests(ITestOutputHelper output)
{
    const int R1 = 4, R2 = 2;

    sealed record Outcome(double[] Output, double Loss, double[][] Grads, double[] DImg);

    /// <summary>One forward and backward of the tiny model (bf16-exact weights and inputs) under the given fusions.</summary>
    static Outcome Run(IBackend be, Fusions fusions, int batch, bool trainDown, bool recompute = false)
    {
        var c = FluxConfig.Tiny;
        using var w = CudaParity.Bf16RandomWeights(c, be, 3);
        var model = new FluxModel(w, fusions);
        Assert.Equal(fusions, model.Fusions);
        using var adapter = ModelFixture.RandomAdapter(be, c, LoraMode.Meta, R1, R2, identities: batch, seed: 21);
        var binding = new LoraBinding(adapter, [.. Enumerable.Range(0, batch)], trainDown, trainIdentity: true);
        var (x, target) = ModelFixture.Batch(be, c, batch, 3, 5, 7, 9);
        using var _x = x;
        using var _t = target;
        foreach (var p in binding.TrainableParameters()) p.ZeroGrad();
        double[] y, dImg;
        double loss;
        using (var yt = model.Forward(x, binding, out var s, recompute))
        {
            y = be.DownloadDouble(yt);
            loss = be.MseLoss(yt, target, out var dy);
            using (s) using (dy)
            using (var dx = model.BackwardWithInputGrad(s, dy, binding)) dImg = be.DownloadDouble(dx);
        }
        return new(y, loss, [.. binding.TrainableParameters().Select(p => be.DownloadDouble(p.Grad))], dImg);
    }

    static double Error(double[] ours, double[] reference)
    {
        Assert.Equal(reference.Length, ours.Length);
        double diff = 0, scale = 0;
        for (int i = 0; i < reference.Length; i++)
        {
            diff = Math.Max(diff, Math.Abs(ours[i] - reference[i]));
            scale = Math.Max(scale, Math.Abs(reference[i]));
        }
        Assert.True(scale > 0, "a tensor that is zero everywhere compares nothing");
        return diff / scale;
    }

    /// <summary>The worst error over output, loss, every factor gradient and d img, with its name.</summary>
    static (double Error, string What) Worst(Outcome ours, Outcome reference)
    {
        Assert.Equal(reference.Grads.Length, ours.Grads.Length);
        var all = new List<(double, string)>
        {
            (Error(ours.Output, reference.Output), "output"),
            (Math.Abs(ours.Loss - reference.Loss) / Math.Abs(reference.Loss), "loss"),
            (Error(ours.DImg, reference.DImg), "d img"),
        };
        for (int i = 0; i < reference.Grads.Length; i++) all.Add((Error(ours.Grads[i], reference.Grads[i]), $"grad[{i}]"));
        return all.MaxBy(e => e.Item1);
    }

    [Theory]
    [InlineData(1, true, false)]    // B = 1: the joins are views; D, M, U train (the stacked LoRA path)
    [InlineData(1, false, false)]   // B = 1, D frozen: the fused Stage-2 LoRA adds its dx into the view
    [InlineData(2, true, false)]    // B = 2: the joins stay copies
    [InlineData(1, true, true)]     // recomputation rebuilds the blocks' activations with the same ops
    public void FusedMatchesUnfusedInFp64(int batch, bool trainDown, bool recompute)
    {
        using var be = CpuBackend.F64();
        var none = Run(be, Fusions.None, batch, trainDown, recompute);
        var fused = Run(be, Fusions.ResidualNorm, batch, trainDown, recompute);
        var (err, what) = Worst(fused, none);
        output.WriteLine($"fp64, B {batch}, trainDown {trainDown}, recompute {recompute}: worst {err:E2} ({what}) over {none.Grads.Length} factors");
        Assert.True(err <= 1e-12, $"residual-norm vs none in fp64: {err:E2} ({what})");
    }

    /// <summary>
    /// What the CPU engine counts (an op = one launch; Zeros is none): per double block and stream the forward loses
    /// GatedResidual + LayerNormModulate → 1 op and, for B = 1, the Narrow of its attention rows; the backward loses
    /// AddInPlace, LayerNormModulateBackward, AddInPlace, GatedResidualBackward → 1 op and, for B = 1, the block's
    /// Concat of d attention. So 2·1 + 2 + 2·3 + 1 = 11 fewer per block for B = 1, 2·1 + 2·3 = 8 for B = 2; GEMMs alike.
    /// </summary>
    [Theory]
    [InlineData(1, 11)]
    [InlineData(2, 8)]
    public void FusedIssuesFewerOpsPerDoubleBlock(int batch, int fewerPerBlock)
    {
        using var be = CpuBackend.F64();
        LaunchCounters.Counts Count(Fusions f)
        {
            var before = be.Counters!.Snapshot();
            Run(be, f, batch, true);
            return LaunchCounters.Sum(LaunchCounters.Between(before, be.Counters.Snapshot()).Values);
        }
        var none = Count(Fusions.None);
        var fused = Count(Fusions.ResidualNorm);
        output.WriteLine($"B {batch}: none {none}; residual-norm {fused}");
        Assert.Equal(none.GemmCount, fused.GemmCount);
        Assert.Equal(FluxConfig.Tiny.Depth * fewerPerBlock, none.Launches - fused.Launches);
    }

    [Fact]
    public void FusedMatchesUnfusedInFp32()
    {
        using var be = CpuBackend.F32();
        var (err, what) = Worst(Run(be, Fusions.ResidualNorm, 1, true), Run(be, Fusions.None, 1, true));
        output.WriteLine($"fp32, B 1: worst {err:E2} ({what})");
        Assert.True(err <= 1e-5, $"residual-norm vs none in fp32: {err:E2} ({what})");
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void FusedBf16EmulationIsAsCloseToFp64AsTheUnfused(int batch)
    {
        using var f64 = CpuBackend.F64();
        var reference = Run(f64, Fusions.None, batch, true);
        Outcome none, fused;
        using (var emu = new Bf16EmulationBackend()) none = Run(emu, Fusions.None, batch, true);
        using (var emu = new Bf16EmulationBackend()) fused = Run(emu, Fusions.ResidualNorm, batch, true);
        void Rule(string what, double[] f, double[] n, double[] r)
        {
            double ef = 0, en = 0, max = 0;
            for (int i = 0; i < r.Length; i++)
            {
                ef = Math.Max(ef, Math.Abs(f[i] - r[i]));
                en = Math.Max(en, Math.Abs(n[i] - r[i]));
                max = Math.Max(max, Math.Abs(r[i]));
            }
            double allowed = 2 * en + max * ParityContext.FloorFraction;
            output.WriteLine($"bf16 emulation, B {batch}, {what}: fused {ef:E2}, unfused {en:E2}, allowed {allowed:E2}");
            Assert.True(ef <= allowed, $"{what}: the fused path's error {ef:E2} against fp64 exceeds {allowed:E2} (unfused {en:E2})");
        }
        Rule("output", fused.Output, none.Output, reference.Output);
        Rule("loss", [fused.Loss], [none.Loss], [reference.Loss]);
        Rule("d img", fused.DImg, none.DImg, reference.DImg);
        for (int i = 0; i < reference.Grads.Length; i++) Rule($"grad[{i}]", fused.Grads[i], none.Grads[i], reference.Grads[i]);
    }
}
