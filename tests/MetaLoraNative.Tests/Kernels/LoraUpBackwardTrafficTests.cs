using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Kernels;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Kernels;

/// <summary>
/// What LoraUpBackward version 2 (kernels/dev/lora/02_up_backward.cu) saves in a flux-dev Stage-2 step on the fused
/// LoRA path (docs/PERF.md, "One pass over dyₛ for dU and dmid", quotes the printed figures): the step runs through the
/// real model on the routing test's shape-only backend, which records each LoraUpBackward call as the two GEMMs CUDA
/// runs by default. Version 2 reads each call's dy once instead of twice, so a step saves Σ n·rows·2 B over the 494
/// targets (n the rows of the target's input: 512 text tokens, the image tokens, both in the single blocks, one for a
/// modulation linear), derived here
/// from the model's target list and held against the calls the backend saw; it adds its scratch partials (written and
/// read once, fp32) and issues two launches (pass 1 and the finish) where version 1 issues two GEMMs.
/// </summary>
public class LoraUpBackwardTrafficTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData(512)]
    [InlineData(1024)]
    public void FluxDevStage2StepReadsDyOnceInsteadOfTwice(int resolution)
    {
        var (be, targets, _) = GemmRoutingTests.Stage2Step(resolution, LoraPath.Fused);
        var list = FluxNames.LoraTargets(FluxConfig.FluxDev);
        int text = 512, image = resolution * resolution / 256;
        // a modulation linear (img_mod, txt_mod, modulation) reads vec, one row per sample
        int Tokens(LoraTarget t) => t.BflModule.EndsWith("mod.lin", StringComparison.Ordinal) || t.BflModule.EndsWith("modulation.lin", StringComparison.Ordinal) ? 1
                                   : t.BflModule.Contains(".txt_", StringComparison.Ordinal) ? text
                                   : t.BflModule.Contains(".img_", StringComparison.Ordinal) ? image : text + image;
        long dyBytes = list.Sum(t => (long)Tokens(t) * t.Rows * 2);
        long scratchBytes = list.Sum(t =>
        {
            var (u, m) = LoraUpBackwardPlan.Scratch(Tokens(t), t.Rows, 1, withDu: true);
            return 2 * 4 * (u + m);   // fp32, written by pass 1 and read by the finish
        });
        var calls = be.Products.Where(p => p.Op == "lora_up_backward").ToList();
        long gemmDyBytes = calls.Sum(p => p.Problem.M * p.Problem.K * p.Problem.SizeA);   // dy is a in both: (rows × n)ᵀ or (n × rows)
        output.WriteLine($"flux-dev {resolution}², fused Stage-2 step, {targets} targets, r2 1: {be.UpBackwardCalls} LoraUpBackward calls = {calls.Count} GEMMs by default");
        output.WriteLine($"  dy read by the two GEMMs        {gemmDyBytes / 1e9,7:F3} GB");
        output.WriteLine($"  dy read by version 2 (once)     {dyBytes / 1e9,7:F3} GB   (Σ n·rows·2 B over the targets)");
        output.WriteLine($"  version 2's partials (w + r)    {scratchBytes / 1e9,7:F3} GB");
        output.WriteLine($"  saved per step                  {(dyBytes - scratchBytes) / 1e9,7:F3} GB; launches {calls.Count} → {be.UpBackwardCalls} " +
                         $"(one a call, its last blocks finishing the sums): predicted {(dyBytes - scratchBytes) / 4.3e9:F2} ms at 4.3 TB/s (not measured on a GPU)");

        Assert.Equal(targets, be.UpBackwardCalls);                   // one call per target: the identity trains, so dU with dmid
        Assert.Equal(2 * targets, calls.Count);
        Assert.Equal(dyBytes, be.UpBackwardDyBytes);                   // the calls saw exactly the target list's dy windows
        Assert.Equal(2 * dyBytes, gemmDyBytes);                        // and the default path reads each twice
        Assert.True(scratchBytes < dyBytes / 4, $"partials {scratchBytes} B against {dyBytes} B of dy");
    }
}
