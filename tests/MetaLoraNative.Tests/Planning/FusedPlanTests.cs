using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Planning;
using MetaLoraNative.Engine.Quantization;
using MetaLoraNative.Engine.Training;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Planning;

/// <summary>
/// The memory planner with the model's fused forms (Fusions: QkvNormRope, ResidualNorm, GeluEpilogue) and the fused
/// LoRA path's grouped formation: every subset against the CPU backend's measured peak on the tiny presets, and the
/// difference each fusion makes to what the blocks keep against its closed form from the config.
/// </summary>
public class FusedPlanTests(ITestOutputHelper output)
{
    /// <summary>The planner's bound on the prediction (as MemoryPlannerTests): within 10% of the measured peak.</summary>
    const double Tolerance = 0.10;
    const int Gh = 12, Gw = 10, Lt = 24, R1 = 4, R2 = 2;

    /// <summary>
    /// tiny, Stage 2 (fused LoRA path, B 1): all 8 subsets × recompute off/on × grouped formation off/on, bf16 base;
    /// micro, a Stage-1 batch of two identities (stacked LoRA path, B 2: the stream rows are copies, not views): all 8,
    /// recompute off; tiny on an fp8 base (the GELU epilogue falls back on fp8 weights): all, recompute off/on.
    /// </summary>
    public static TheoryData<string, int, BaseDType, bool, bool, int> Cases()
    {
        var data = new TheoryData<string, int, BaseDType, bool, bool, int>();
        for (var f = Fusions.None; f <= Fusions.All; f++)
        {
            foreach (bool recompute in new[] { false, true })
                foreach (bool grouped in new[] { false, true })
                    data.Add("tiny", (int)f, BaseDType.Bf16, recompute, grouped, 1);
            data.Add("micro", (int)f, BaseDType.Bf16, false, false, 2);
        }
        data.Add("tiny", (int)Fusions.All, BaseDType.Fp8, false, false, 1);
        data.Add("tiny", (int)Fusions.All, BaseDType.Fp8, true, true, 1);
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void PredictedPeakOfTheFusedStepMatchesTheCpuBackendsMeasuredPeak(string preset, int fusionBits, BaseDType dtype, bool recompute, bool grouped, int identities)
    {
        var fusions = (Fusions)fusionBits;
        using var be = CpuBackend.F32();
        var c = FluxConfig.Preset(preset);
        // One identity: Stage 2 (D frozen, the fused LoRA path). Two: a Stage-1 batch, one sample each, D trained too.
        var shape = new TrainingShape(c, identities, Gh * Gw, Lt, FluxNames.LoraTargets(c), LoraMode.Meta, R1, R2,
                                      TrainDown: identities > 1, TrainIdentity: true, IdentitiesInBatch: identities, IdentitiesHeld: identities,
                                      Fuse: fusions, LoraGrouped: grouped);
        var predicted = MemoryPlanner.Estimate(shape, MemoryModel.CpuF32, dtype, recompute);
        Assert.Equal((fusions, grouped && shape.FusedLora), (predicted.Fusions, predicted.GroupedLora));

        using var weights = FluxWeights.Random(c, be, 1, dtype);
        var model = new FluxModel(weights, fusions);
        using var adapter = LoraAdapter.Create(be, c, shape.Targets, LoraMode.Meta, R1, R2, 1);
        adapter.MergedDowns.Grouped = grouped;
        for (int k = 0; k < identities; k++) adapter.AddIdentity($"id{k}", (ulong)k);
        var binding = new LoraBinding(adapter, [.. Enumerable.Range(0, identities)], trainDown: shape.TrainDown, trainIdentity: true);
        var batch = SwapTests.Batch(c, identities);
        var options = new TrainOptions { BatchSize = identities, Recompute = recompute ? RecomputePolicy.On : RecomputePolicy.Off };
        long before = be.LiveBytes;
        for (int step = 0; step < 2; step++) Trainer.Step(model, binding, batch, options, step, recompute);   // the second step has AdamW's moments and every G

        double error = (predicted.Peak - (double)be.PeakBytes) / be.PeakBytes;
        output.WriteLine($"{preset} fused {FusionSettings.Format(fusions)}, {predicted.Label}, grouped {grouped}, {identities} identities: predicted {predicted.Peak:N0} B " +
                         $"(activations {predicted.Activations:N0}, working {predicted.WorkingSet:N0}, deferred G {predicted.DeferredGradients:N0}), " +
                         $"measured {be.PeakBytes:N0} B: {error:+0.0%;-0.0%}");
        Assert.True(Math.Abs(error) <= Tolerance, $"predicted {predicted.Peak:N0} B, measured {be.PeakBytes:N0} B ({error:P1})");
        // a step leaves the moments and, on the fused LoRA path, the merged downs and (grouped) the cache's G behind
        Assert.Equal(before + predicted.OptimiserState + predicted.MergedDowns + predicted.DeferredGradients, be.LiveBytes);
        Assert.Equal(grouped && shape.FusedLora, predicted.DeferredGradients > 0);
    }

    /// <summary>
    /// What each fusion changes in the kept activations, against the closed form from the config (bf16 element sizes,
    /// no allocator rounding), at flux-dev 1024² and on the tiny preset with a batch of 1 and of 2:
    ///   QkvNormRope: a double block's stream keeps qkv (3C) for Q, K, V, QNorm, KNorm (5C): −2C per token of L; a single
    ///     block its q/k/v copy and the joint q, k, v (6C) for Q, K, V, QNorm, KNorm, QRope, KRope (7C): −C;
    ///   ResidualNorm: with B = 1 a double block's attention rows are views of the joint output: −C per token; B &gt; 1 none;
    ///   GeluEpilogue: a single block keeps linear1's whole output (3C + M) for its MLP rows' copy (M): +3C.
    /// The three touch different tensors, so every subset's change is the sum of its members'; with recomputation the
    /// blocks keep nothing past their forward and no subset changes the kept bytes.
    /// </summary>
    [Theory]
    [InlineData("flux-dev", 4096, 512, 1)]
    [InlineData("tiny", 120, 24, 1)]
    [InlineData("tiny", 120, 24, 2)]
    public void EachFusionChangesTheKeptActivationsByItsClosedForm(string preset, int imageTokens, int textTokens, int batch)
    {
        var c = FluxConfig.Preset(preset);
        var bf16 = new MemoryModel("bf16-exact", 2, 4, 4, b => b, 0, false, false);
        long tokens = (long)batch * (imageTokens + textTokens), C = c.HiddenSize, bytes = bf16.ComputeBytes;
        long Expected(Fusions f) =>
            (f.HasFlag(Fusions.QkvNormRope) ? -(2 * C * c.Depth + C * c.DepthSingleBlocks) * tokens * bytes : 0)
            + (f.HasFlag(Fusions.ResidualNorm) && batch == 1 ? -C * c.Depth * tokens * bytes : 0)
            + (f.HasFlag(Fusions.GeluEpilogue) ? 3 * C * c.DepthSingleBlocks * tokens * bytes : 0);
        MemoryEstimate Plan(Fusions f, bool recompute) => MemoryPlanner.Estimate(
            new TrainingShape(c, batch, imageTokens, textTokens, FluxNames.LoraTargets(c), LoraMode.Meta, 16, 1, false, true, Fuse: f, LoraGrouped: false),
            bf16, BaseDType.Bf16, recompute);

        var none = Plan(Fusions.None, false);
        var noneRecomputed = Plan(Fusions.None, true);
        for (var f = Fusions.None; f <= Fusions.All; f++)
        {
            var e = Plan(f, false);
            output.WriteLine($"{preset} B {batch}, {FusionSettings.Format(f),-20}: kept {(e.Activations - none.Activations) / 1e6,9:+0.0;-0.0;0.0} MB " +
                             $"(closed form {Expected(f) / 1e6:+0.0;-0.0;0.0}), working set {(e.WorkingSet - none.WorkingSet) / 1e6:+0.0;-0.0;0.0} MB, " +
                             $"peak {(e.Peak - none.Peak) / 1e6:+0.0;-0.0;0.0} MB");
            Assert.Equal(Expected(f), e.Activations - none.Activations);
            Assert.Equal(noneRecomputed.Activations, Plan(f, true).Activations);
        }
        // the signs the docs give: qkv and residual-norm (B 1) keep less, gelu more
        Assert.True(Expected(Fusions.QkvNormRope) < 0 && Expected(Fusions.GeluEpilogue) > 0);
        Assert.True(batch > 1 || Expected(Fusions.ResidualNorm) < 0);
    }

    /// <summary>
    /// Grouped formation keeps the backward's G (Σ r2, d_in) fp32 per module and identity of the batch from step to
    /// step, as many bytes as the merged downs A; the working set no longer holds a transient G. Off the fused path
    /// (D trained) grouping changes nothing.
    /// </summary>
    [Fact]
    public void GroupedFormationKeepsAGPerModuleAndDropsTheTransientOne()
    {
        var c = FluxConfig.FluxDev;
        var m = MemoryModel.CpuF32;
        TrainingShape Shape(bool grouped, bool trainDown = false) =>
            new(c, 1, 4096, 512, FluxNames.LoraTargets(c), LoraMode.Meta, 16, 1, trainDown, true, Fuse: Fusions.None, LoraGrouped: grouped);
        var off = MemoryPlanner.Estimate(Shape(false), m, BaseDType.Bf16, false);
        var on = MemoryPlanner.Estimate(Shape(true), m, BaseDType.Bf16, false);
        long g = Shape(true).Targets.GroupBy(t => t.BflModule).Sum(t => 4L * t.Count() * 1 * t.First().InFeatures);
        Assert.Equal(g, on.DeferredGradients);
        Assert.Equal(on.MergedDowns, on.DeferredGradients);
        Assert.Equal(0, off.DeferredGradients);
        Assert.True(on.WorkingSet <= off.WorkingSet);
        Assert.Equal(off.Activations, on.Activations);
        var stacked = MemoryPlanner.Estimate(Shape(true, trainDown: true), m, BaseDType.Bf16, false);
        Assert.Equal((0L, false), (stacked.DeferredGradients, stacked.GroupedLora));
    }

    /// <summary>The plan names the step it walked; the model's default (METALORA_FUSE unset) is none.</summary>
    [Fact]
    public void ThePlanNamesTheFusedFormsItWalked()
    {
        var s = TrainingShape.Stage2(FluxConfig.Tiny, 120, 24, 4, 2, Fusions.QkvNormRope | Fusions.GeluEpilogue) with { LoraGrouped = true };
        var plan = MemoryPlanner.Choose(s, MemoryModel.CpuF32, long.MaxValue);
        Assert.Contains(plan.Lines(), l => l.Contains("the step walked: fused forms qkv,gelu, grouped LoRA formation"));
        Assert.All(plan.Candidates, e => Assert.Equal(Fusions.QkvNormRope | Fusions.GeluEpilogue, e.Fusions));
        if (Environment.GetEnvironmentVariable("METALORA_FUSE") is null or "")
            Assert.Equal(Fusions.None, TrainingShape.Stage2(FluxConfig.Tiny, 120, 24, 4, 2).Fusions);
    }
}

/// <summary>`bench --plan-only` with --fuse: the plan walks the fused step and prints every subset's peak against none.</summary>
[Collection("console")]
public sealed class FusedPlanCliTests
{
    [Fact]
    public void PlanOnlyPrintsEverySubsetsPeakAgainstNone()
    {
        var (code, stdout, stderr) = Cli.CliRunner.Run("bench", "--plan-only", "--device", "cuda", "--vram", "80", "--fuse", "qkv,gelu");
        Assert.True(code == 0, stderr);
        Assert.Contains("the step walked: fused forms qkv,gelu", stdout);
        Assert.Contains("fused forms, bf16 base, recompute off: predicted peak (GiB) against none", stdout);
        var rows = stdout.Split('\n').Where(l => l.StartsWith("  ") && l.Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries) is [var name, _, _, ..]
                                                   && (name == "none" || name == "all" || name.Contains("qkv") || name.Contains("gelu") || name.Contains("residual-norm")))
                         .ToArray();
        Assert.Equal(8, rows.Length);
        Assert.Single(rows, r => r.Contains("(this run's)") && r.TrimStart().StartsWith("qkv,gelu "));
        // the chosen row's peak is the plan's own (the run walked the same step)
        var chosen = stdout.Split('\n').Single(l => l.Contains("chosen:"));
        string peak = chosen[(chosen.LastIndexOf("peak ", StringComparison.Ordinal) + 5)..].Replace(" GiB", "").Trim();
        Assert.Contains(peak, rows.Single(r => r.Contains("(this run's)")));
    }
}
