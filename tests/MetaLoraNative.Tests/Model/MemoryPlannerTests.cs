using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Planning;
using MetaLoraNative.Engine.Quantization;
using MetaLoraNative.Engine.Training;
using MetaLoraNative.Kernels;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Model;

/// <summary>
/// The memory planner (src/Engine/Planning) against the CPU backend's measured peak: the same training steps the
/// planner replays, run for real on the tiny presets, in every base dtype and recomputation setting.
/// </summary>
public class MemoryPlannerTests(ITestOutputHelper output)
{
    /// <summary>The brief's bound on the prediction: within 10% of the measured peak.</summary>
    const double Tolerance = 0.10;

    [Theory]
    [InlineData("tiny", false, BaseDType.Bf16, false, 1)]
    [InlineData("tiny", false, BaseDType.Bf16, true, 1)]
    [InlineData("tiny", false, BaseDType.Fp8, false, 1)]
    [InlineData("tiny", false, BaseDType.Fp8, true, 1)]
    [InlineData("tiny", true, BaseDType.Fp8, true, 1)]
    [InlineData("micro", true, BaseDType.Bf16, false, 1)]
    [InlineData("tiny", false, BaseDType.Bf16, true, 2)]
    [InlineData("micro", false, BaseDType.Fp8, false, 2)]
    public void PredictedPeakMatchesTheCpuBackendsMeasuredPeak(string preset, bool fp64, BaseDType dtype, bool recompute, int identities)
    {
        using var be = fp64 ? CpuBackend.F64() : CpuBackend.F32();
        var c = FluxConfig.Preset(preset);
        const int gh = 12, gw = 10, lt = 24, r1 = 4, r2 = 2;
        // One identity: Stage 2 (D frozen). Two: a Stage-1 batch, one sample each, D trained too.
        var shape = new TrainingShape(c, identities, gh * gw, lt, FluxNames.LoraTargets(c), LoraMode.Meta, r1, r2,
                                      TrainDown: identities > 1, TrainIdentity: true, IdentitiesInBatch: identities, IdentitiesHeld: identities);
        var predicted = MemoryPlanner.Estimate(shape, MemoryModel.For(be)!, dtype, recompute);

        using var weights = FluxWeights.Random(c, be, 1, dtype);
        var model = new FluxModel(weights);
        using var adapter = LoraAdapter.Create(be, c, shape.Targets, LoraMode.Meta, r1, r2, 1);
        for (int k = 0; k < identities; k++) adapter.AddIdentity($"id{k}", (ulong)k);
        var binding = new LoraBinding(adapter, [.. Enumerable.Range(0, identities)], trainDown: shape.TrainDown, trainIdentity: true);
        var batch = Enumerable.Range(0, identities).Select(b => new Example(RandomWeights.Normal($"x{b}", 1, gh * gw * c.InChannels), gh, gw,
            RandomWeights.Normal($"t{b}", 1, lt * c.ContextInDim), lt, RandomWeights.Normal($"y{b}", 1, c.VecInDim))).ToList();
        var options = new TrainOptions { BatchSize = identities, Recompute = recompute ? RecomputePolicy.On : RecomputePolicy.Off };
        long before = be.LiveBytes;
        for (int step = 0; step < 2; step++) Trainer.Step(model, binding, batch, options, step, recompute);   // the second step has AdamW's moments

        double error = (predicted.Peak - (double)be.PeakBytes) / be.PeakBytes;
        output.WriteLine($"{preset} {be.Name} {predicted.Label}, {identities} identities: predicted {predicted.Peak:N0} B " +
                         $"(weights {predicted.Weights:N0}, activations {predicted.Activations:N0}, working {predicted.WorkingSet:N0}), " +
                         $"measured {be.PeakBytes:N0} B: {error:+0.0%;-0.0%}");
        Assert.True(Math.Abs(error) <= Tolerance, $"predicted {predicted.Peak:N0} B, measured {be.PeakBytes:N0} B ({error:P1})");
        // a step leaves nothing behind but the moments and, on the fused LoRA path, the merged downs A = M·D
        Assert.Equal(before + predicted.OptimiserState + predicted.MergedDowns, be.LiveBytes);
        Assert.Equal(shape.FusedLora, predicted.MergedDowns > 0);
    }

    static TrainingShape TinyStage2(int imageTokens = 120, int textTokens = 24) => TrainingShape.Stage2(FluxConfig.Tiny, imageTokens, textTokens, 4, 2);

    [Fact]
    public void ThePlanTakesTheCheapestCandidateThatFits()
    {
        var s = TinyStage2();
        var m = MemoryModel.CpuF32;
        var order = new[] { (BaseDType.Bf16, false), (BaseDType.Bf16, true), (BaseDType.Fp8, false), (BaseDType.Fp8, true) }
            .Select(x => MemoryPlanner.Estimate(s, m, x.Item1, x.Item2)).ToArray();
        foreach (var budget in order.Select(e => e.Peak).Append(order.Max(e => e.Peak) * 2))
        {
            var plan = MemoryPlanner.Choose(s, m, budget);
            var expected = order.First(e => e.Peak <= budget);
            Assert.True(plan.Fits);
            Assert.Equal((expected.BaseDType, expected.Recompute), (plan.Chosen.BaseDType, plan.Chosen.Recompute));
            Assert.Equal(0, plan.Chosen.SwapBlocks);
        }
        // What the caller fixes narrows the candidates.
        var forced = MemoryPlanner.Choose(s, m, long.MaxValue, BaseDType.Fp8, recompute: true);
        Assert.Equal((BaseDType.Fp8, true), (forced.Chosen.BaseDType, forced.Chosen.Recompute));
        Assert.Single(forced.Candidates);
        Assert.All(MemoryPlanner.Choose(s, m, long.MaxValue, recompute: false).Candidates, e => Assert.False(e.Recompute));
        // Recomputation keeps only the block inputs; fp8 halves and more the block linears on a 4-byte engine.
        Assert.True(order[1].Activations < order[0].Activations);
        Assert.True(order[2].Weights < order[0].Weights / 2);
    }

    [Fact]
    public void FluxDevOnCudaCountsTwoBytesPerBf16WeightAndOneAndAScalePerFp8Weight()
    {
        var c = FluxConfig.FluxDev;
        var s = TrainingShape.Stage2(c, 4096, 512, 16, 1);
        var m = MemoryModel.Cuda(DevicePool.SizeClass);
        Assert.Equal(494, s.Targets.Count);
        var bf16 = MemoryPlanner.Estimate(s, m, BaseDType.Bf16, false);
        var fp8 = MemoryPlanner.Estimate(s, m, BaseDType.Fp8, true);
        long bf16Weights = c.TensorShapes().Sum(t => DevicePool.SizeClass(2 * Shapes.Numel(t.Shape)));
        long fp8Weights = c.TensorShapes().Sum(t => BaseDTypes.Quantizes(t.Name)
            ? DevicePool.SizeClass(Shapes.Numel(t.Shape)) + DevicePool.SizeClass(4L * t.Shape[0])
            : DevicePool.SizeClass(2 * Shapes.Numel(t.Shape)));
        Assert.Equal(bf16Weights, bf16.Weights);
        Assert.Equal(fp8Weights, fp8.Weights);
        // The planner's kept block activations against FluxModel's rule of thumb (24·C per token per double block,
        // 19·C per single block, bf16): two independent counts of the same records.
        long perBlock = bf16.Activations - MemoryPlanner.Estimate(s, m, BaseDType.Bf16, true).Activations;
        long rule = (24L * c.Depth + 19L * c.DepthSingleBlocks) * c.HiddenSize * (4096 + 512) * 2;
        output.WriteLine($"kept block activations {perBlock / (double)(1L << 30):F2} GiB, rule of thumb {rule / (double)(1L << 30):F2} GiB");
        Assert.InRange(perBlock / (double)rule, 0.9, 1.1);
        // The fp8 products decode into one bf16 copy of the largest block linear (linear1, (3C + mlp) × C).
        Assert.Equal(MemoryModel.CublasWorkspaceBytes + DevicePool.SizeClass(2L * (3 * c.HiddenSize + c.MlpHiddenDim) * c.HiddenSize), fp8.GemmWorkspace);
    }

    /// <summary>
    /// The one-pass attention backward (version 4) holds an fp32 (B, H, L, D) dq accumulator beside the row sums: at
    /// flux-dev's 1024² (L 4,608, 24 heads of 128) that is 4,608 · 24 · 128 · 4 bytes, one pool allocation, and nothing else moves.
    /// </summary>
    [Fact]
    public void TheOnePassAttentionBackwardCountsItsFp32DqAccumulator()
    {
        var c = FluxConfig.FluxDev;
        var s = TrainingShape.Stage2(c, 4096, 512, 16, 1);
        var off = MemoryPlanner.Estimate(s, MemoryModel.Cuda(DevicePool.SizeClass), BaseDType.Bf16, false);
        var on = MemoryPlanner.Estimate(s, MemoryModel.Cuda(DevicePool.SizeClass, attentionDqAccumulator: true), BaseDType.Bf16, false);
        long bytes = (long)s.Batch * c.NumHeads * (4096 + 512) * c.HeadDim * 4;
        Assert.Equal(DevicePool.SizeClass(bytes), on.AttentionWorkspace - off.AttentionWorkspace);
        Assert.Equal(on.AttentionWorkspace - off.AttentionWorkspace, on.Peak - off.Peak);
        Assert.Equal((off.Activations, off.WorkingSet, off.GemmWorkspace), (on.Activations, on.WorkingSet, on.GemmWorkspace));
    }

    [Fact]
    public void ACapRefusesTheAllocationThatWouldPassItNamingCapAndRequest()
    {
        using var be = CpuBackend.F32();
        be.CapMemory(1000);
        using var a = be.Zeros(100);                                           // 400 bytes
        var e = Assert.Throws<MemoryCapExceededException>(() => be.Zeros(200));   // 800 more
        Assert.Contains("cap of", e.Message);
        Assert.Contains("--vram", e.Message);
        Assert.Equal((1000L, 800L, 400L), (e.CapBytes, e.RequestBytes, e.InUseBytes));
        Assert.Equal(400, be.LiveBytes);                                      // nothing was taken
        using var view = a.Reshape(10, 10);
        a.Dispose();
        Assert.Equal(400, be.LiveBytes);                                      // the view still holds the array
        view.Dispose();
        Assert.Equal(0, be.LiveBytes);
        be.CapMemory(0);
        using var big = be.Zeros(1000);
        Assert.Equal(4000, be.PeakBytes);
    }

    [Fact]
    public void ACapAtThePredictedPeakHoldsAStepAndOneTenBelowItDoesNot()
    {
        var s = TinyStage2();
        var predicted = MemoryPlanner.Estimate(s, MemoryModel.CpuF32, BaseDType.Fp8, true);
        bool Runs(double capFraction)
        {
            using var be = CpuBackend.F32();
            be.CapMemory((long)(predicted.Peak * capFraction));
            try
            {
                using var weights = FluxWeights.Random(s.Config, be, 1, BaseDType.Fp8);
                using var adapter = LoraAdapter.Create(be, s.Config, s.Targets, LoraMode.Meta, s.Rank1, s.Rank2, 1);
                adapter.AddIdentity("me", 1);
                var example = new Example(RandomWeights.Normal("x", 1, 12 * 10 * s.Config.InChannels), 12, 10,
                    RandomWeights.Normal("t", 1, 24 * s.Config.ContextInDim), 24, RandomWeights.Normal("y", 1, s.Config.VecInDim));
                var o = new TrainOptions { BatchSize = 1, Recompute = RecomputePolicy.On };
                var binding = new LoraBinding(adapter, [0], false, true);
                for (int step = 0; step < 2; step++) Trainer.Step(new FluxModel(weights), binding, [example], o, step, recompute: true);
                return true;
            }
            catch (MemoryCapExceededException e)
            {
                output.WriteLine(e.Message);
                return false;
            }
        }
        Assert.True(Runs(1 + Tolerance));
        Assert.False(Runs(1 - Tolerance));
    }
}

/// <summary>`metalora bench` with the planner: the plan, the measured peak beside the prediction, and a budget too small.</summary>
[Collection("console")]
public sealed class MemoryPlannerBenchTests
{
    [Fact]
    public void BenchPrintsThePlanAndTheMeasuredPeakBesideThePrediction()
    {
        var (code, stdout, stderr) = Cli.CliRunner.Run("bench", "--device", "cpu", "--preset", "micro", "--resolution", "512", "--txt", "8",
                                                       "--steps", "1", "--warmup", "1", "--vram", "0.05");
        Assert.True(code == 0, stderr);
        Assert.Contains("memory plan, budget 51.20 MiB", stdout);
        Assert.Contains("chosen: bf16 base, recompute off", stdout);
        Assert.Contains("peak after the first step: measured", stdout);
        Assert.Contains("train step", stdout);
    }

    [Fact]
    public void ABudgetTooSmallForEveryBlockOnTheDeviceSwapsAndOneTooSmallForSwapStops()
    {
        var (code, stdout, stderr) = Cli.CliRunner.Run("bench", "--plan-only", "--device", "cuda", "--vram", "10");
        Assert.Equal(0, code);                                                 // planning for the GPU needs no GPU
        Assert.Contains("chosen: fp8 base, recompute on, swap", stdout);
        Assert.Contains("blocks in host memory", stdout);
        (code, stdout, _) = Cli.CliRunner.Run("bench", "--plan-only", "--device", "cuda", "--vram", "10", "--swap-blocks", "0");
        Assert.Equal(0, code);
        Assert.Contains("nothing fits", stdout);
        (code, _, stderr) = Cli.CliRunner.Run("bench", "--device", "cpu", "--preset", "tiny", "--resolution", "512", "--txt", "8", "--vram", "0.001");
        Assert.Equal(1, code);
        Assert.StartsWith("error: ", stderr);
        Assert.Contains("does not fit in 1.02 MiB", stderr);
    }

    [Fact]
    public void BenchWithSwapPrintsTheSwapAndEachStepsOverlap()
    {
        var (code, stdout, stderr) = Cli.CliRunner.Run("bench", "--device", "cpu", "--preset", "tiny", "--resolution", "512", "--txt", "8",
                                                       "--steps", "1", "--warmup", "1", "--swap-blocks", "3");
        Assert.True(code == 0, stderr);
        Assert.Contains("swap 3 blocks (2 double, 1 single)", stdout);
        Assert.Contains("block swap: 3 blocks in host memory (2 double, 1 single", stdout);
        // the first step fills the three slots (two double, one single); tiny has no more blocks to cycle through them
        Assert.Contains("block swap: 3 block copies", stdout);
        Assert.Contains("block swap  3 blocks, last step", stdout);
    }
}
