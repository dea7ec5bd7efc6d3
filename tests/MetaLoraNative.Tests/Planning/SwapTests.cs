using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Planning;
using MetaLoraNative.Engine.Quantization;
using MetaLoraNative.Engine.Training;
using MetaLoraNative.Kernels;
using MetaLoraNative.Tests.Cuda;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Planning;

/// <summary>
/// Block swap (src/Engine/Flux/BlockWeights*.cs): a step with some blocks' weights in host memory against the same
/// step with every block resident, the planner's swap arithmetic against the CPU backend's measured peak, and the
/// CUDA path against the resident CUDA step.
/// </summary>
public class SwapTests(ITestOutputHelper output)
{
    const int Gh = 12, Gw = 10, Lt = 24, R1 = 4, R2 = 2;

    /// <summary>The tiny preset with more blocks than two slots per kind hold, so the slots are refilled in both passes.</summary>
    internal static readonly FluxConfig Deeper = FluxConfig.Tiny with { Depth = 4, DepthSingleBlocks = 3 };

    internal static Example[] Batch(FluxConfig c, int n) => [.. Enumerable.Range(0, n).Select(b => new Example(RandomWeights.Normal($"x{b}", 1, Gh * Gw * c.InChannels), Gh, Gw,
        RandomWeights.Normal($"t{b}", 1, Lt * c.ContextInDim), Lt, RandomWeights.Normal($"y{b}", 1, c.VecInDim)))];

    /// <summary>One forward and backward of a Stage-1 batch (D, M and U all trained): the loss and every LoRA gradient.</summary>
    internal static (double Loss, float[][] Grads) Step(IBackend be, FluxConfig c, BaseDType dtype, int swap, bool recompute, out BlockWeights blocks) =>
        Step(be, c, dtype, swap, recompute, out blocks, out _);

    internal static (double Loss, float[][] Grads) Step(IBackend be, FluxConfig c, BaseDType dtype, int swap, bool recompute, out BlockWeights blocks,
                                               out SwapOverlap? overlap)
    {
        using var weights = FluxWeights.Random(c, be, 1, dtype, swap);
        blocks = weights.Blocks;
        var model = new FluxModel(weights);
        using var adapter = LoraAdapter.Create(be, c, FluxNames.LoraTargets(c), LoraMode.Meta, R1, R2, 1);
        adapter.AddIdentity("a", 1);
        adapter.AddIdentity("b", 2);
        var binding = new LoraBinding(adapter, [0, 1], trainDown: true, trainIdentity: true);
        var (inputs, target) = Batches.FlowMatchingBatch(be, c, Batch(c, 2), [0.3f, 0.8f], 1f, 7, 0);
        using (inputs)
        using (target)
        {
            var y = model.Forward(inputs, binding, out var state, recompute);
            double loss = be.MseLoss(y, target, out var dy);
            model.Backward(state, dy, binding);
            state.Dispose();
            y.Dispose();
            dy.Dispose();
            // A second pass after the backward: the forward's copies run again into the slots the backward left.
            using (model.Predict(inputs, binding)) { }
            overlap = blocks.TakeOverlap();
            var grads = adapter.Down.Concat(adapter.Identities.SelectMany(i => i.Parameters())).Select(p => be.Download(p.Grad)).ToArray();
            return (loss, grads);
        }
    }

    [Theory]
    [InlineData(BaseDType.Bf16, 1, false, 1)]
    [InlineData(BaseDType.Bf16, 2, false, 2)]
    [InlineData(BaseDType.Bf16, 3, true, 5)]          // three double blocks through two slots
    [InlineData(BaseDType.Bf16, 5, false, 9)]
    [InlineData(BaseDType.Bf16, 7, false, 13)]        // all: four double blocks, three single
    [InlineData(BaseDType.Bf16, 7, true, 13)]
    [InlineData(BaseDType.Fp8, 3, true, 5)]
    [InlineData(BaseDType.Fp8, 7, false, 13)]
    public void AStepWithSwapIsBitIdenticalToTheResidentStep(BaseDType dtype, int swap, bool recompute, int copies)
    {
        var c = Deeper;
        using var be = CpuBackend.F32();
        var (loss0, grads0) = Step(be, c, dtype, 0, recompute, out _);
        var (loss, grads) = Step(be, c, dtype, swap, recompute, out var blocks, out var overlap);
        output.WriteLine($"{BaseDTypes.Name(dtype)}, swap {swap} ({string.Join(", ", blocks.Swapped)}), recompute {recompute}: loss {loss:R} vs {loss0:R}; {overlap}");
        Assert.Equal(swap, blocks.Swapped.Count);
        // forward, backward, forward: every swapped block once, then each the slots do not still hold when it comes
        Assert.Equal(copies, overlap!.Copies);
        Assert.Equal(overlap.CopyMs, overlap.ExposedMs);                  // the CPU copies on the calling thread
        Assert.Equal(loss0, loss);
        Assert.Equal(grads0.Length, grads.Length);
        for (int i = 0; i < grads.Length; i++) Assert.Equal(grads0[i], grads[i]);
        Assert.Contains(grads0, g => g.Any(v => v != 0));               // the comparison is of real gradients
    }

    [Fact]
    public void SwapTakesDoubleBlocksFromTheEndThenSingleBlocks()
    {
        var c = FluxConfig.FluxDev;
        Assert.Equal(["double_blocks.18", "double_blocks.17"], BlockOrder.Swapped(c, 2).Select(b => b.ToString()));
        var all = BlockOrder.Swapped(c, 20);
        Assert.Equal(BlockId.Double(0), all[18]);
        Assert.Equal(BlockId.Single(37), all[19]);
        Assert.Throws<ArgumentException>(() => BlockOrder.Swapped(c, 58));
        Assert.Null(BlockOrder.ParseSwap("auto"));
        Assert.Equal(5, BlockOrder.ParseSwap("5"));
        var e = Assert.Throws<InputException>(() => BlockOrder.ParseSwap("-1"));
        Assert.Equal("--swap-blocks", e.Subject);
    }

    [Fact]
    public void SwappedWeightsReadFromTheHostCopyAndRefuseABake()
    {
        using var be = CpuBackend.F32();
        using var resident = FluxWeights.Random(FluxConfig.Tiny, be, 3, BaseDType.Fp8);
        using var swapped = FluxWeights.Random(FluxConfig.Tiny, be, 3, BaseDType.Fp8, swapBlocks: 4);
        Assert.Equal(BaseDType.Fp8, swapped.BaseDType);
        Assert.Equal(resident.QuantizedCount, swapped.QuantizedCount);
        foreach (var name in new[] { "double_blocks.1.img_attn.qkv.weight", "single_blocks.0.linear2.bias", "double_blocks.0.txt_attn.norm.key_norm.scale" })
            Assert.Equal(resident.Values(name), swapped.Values(name));
        var e = Assert.Throws<InvalidOperationException>(() => swapped["single_blocks.0.linear2.bias"]);
        Assert.Contains("--swap-blocks 0", e.Message);
    }

    [Theory]
    [InlineData(BaseDType.Bf16, 1, false)]
    [InlineData(BaseDType.Bf16, 3, true)]
    [InlineData(BaseDType.Fp8, 5, true)]
    [InlineData(BaseDType.Fp8, 7, false)]
    [InlineData(BaseDType.Bf16, 7, true)]
    public void PredictedPeakWithSwapMatchesTheCpuBackendsMeasuredPeak(BaseDType dtype, int swap, bool recompute)
    {
        var c = Deeper;
        using var be = CpuBackend.F32();
        var shape = TrainingShape.Stage2(c, Gh * Gw, Lt, R1, R2);
        var predicted = MemoryPlanner.Estimate(shape, MemoryModel.CpuF32, dtype, recompute, swap);
        var resident = MemoryPlanner.Estimate(shape, MemoryModel.CpuF32, dtype, recompute);

        using var weights = FluxWeights.Random(c, be, 1, dtype, swap);
        Assert.Equal(predicted.HostBytes, weights.Blocks.HostBytes);
        var model = new FluxModel(weights);
        using var adapter = LoraAdapter.Create(be, c, shape.Targets, LoraMode.Meta, R1, R2, 1);
        adapter.AddIdentity("me", 1);
        var binding = new LoraBinding(adapter, [0], trainDown: false, trainIdentity: true);
        var options = new TrainOptions { BatchSize = 1, Recompute = recompute ? RecomputePolicy.On : RecomputePolicy.Off };
        for (int step = 0; step < 2; step++) Trainer.Step(model, binding, Batch(c, 1), options, step, recompute);

        double error = (predicted.Peak - (double)be.PeakBytes) / be.PeakBytes;
        output.WriteLine($"{predicted.Label}: predicted {predicted.Peak:N0} B (host {predicted.HostBytes:N0}, slots {predicted.SlotBytes:N0}; " +
                         $"resident plan {resident.Peak:N0}), measured {be.PeakBytes:N0} B: {error:+0.0%;-0.0%}");
        Assert.True(Math.Abs(error) <= 0.10, $"predicted {predicted.Peak:N0} B, measured {be.PeakBytes:N0} B ({error:P1})");
        Assert.True(swap < 3 || predicted.Peak < resident.Peak, "three or more blocks of a kind through two slots free device memory");
    }

    [Fact]
    public void AutoSwapsTheFewestBlocksThatFitWhenNothingElseDoes()
    {
        // flux-dev at 1024² on the CUDA engine: what block swap is for.
        var s = TrainingShape.Stage2(FluxConfig.FluxDev, 4096, 512, 16, 1);
        var m = MemoryModel.Cuda(DevicePool.SizeClass);
        var smallest = MemoryPlanner.Estimate(s, m, BaseDType.Fp8, true);
        long blocks = smallest.DoubleBlockWeights.Sum() + smallest.SingleBlockWeights.Sum();
        foreach (long budget in new[] { smallest.Peak - blocks / 3, 10L << 30, smallest.Peak - blocks / 2 })
        {
            var plan = MemoryPlanner.Choose(s, m, budget);
            Assert.True(plan.Fits);
            var chosen = plan.Chosen;
            Assert.Equal((BaseDType.Fp8, true), (chosen.BaseDType, chosen.Recompute));
            Assert.True(chosen.Peak <= budget);
            Assert.True(chosen.Swapped.Double > 0, "double blocks are the largest and go first");
            Assert.True(chosen.Swapped.Single == 0 || chosen.Swapped.Double == FluxConfig.FluxDev.Depth);
            // The fewest: one block less does not fit.
            Assert.True((chosen with { SwapBlocks = chosen.SwapBlocks - 1 }).Peak > budget);
            // Device bytes: the resident blocks' and two slots of a double block.
            Assert.Equal(smallest.Weights - chosen.HostBytes + 2 * smallest.DoubleBlockWeights[0] +
                         (chosen.Swapped.Single > 0 ? Math.Min(2, chosen.Swapped.Single) * smallest.SingleBlockWeights[0] : 0), chosen.DeviceWeights);
            Assert.Contains(plan.Lines(), l => l.Contains($"{chosen.SwapBlocks} blocks in host memory"));
            output.WriteLine($"budget {budget / (double)(1L << 30):F2} GiB: {chosen.Label}, peak {chosen.Peak / (double)(1L << 30):F2} GiB");
        }
        // A fixed count applies to every candidate and is not raised; swapping everything can still be too little.
        var fixedPlan = MemoryPlanner.Choose(s, m, 10L << 30, swapBlocks: 0);
        Assert.False(fixedPlan.Fits);
        Assert.All(fixedPlan.Candidates, e => Assert.Equal(0, e.SwapBlocks));
        var tooSmall = MemoryPlanner.Choose(s, m, smallest.Peak - blocks - 1);
        Assert.False(tooSmall.Fits);
        Assert.Null(MemoryPlanner.SmallestSwap(smallest, smallest.Peak - blocks - 1));
        Assert.Contains(tooSmall.Lines(), l => l.Contains("every block's weights in host memory"));
    }
}

/// <summary>Block swap's CUDA path (src/Kernels/SwapTransfer.cs) against the resident CUDA step. Skips without a GPU, saying why.</summary>
[Collection(CudaCollection.Name)]
public class CudaSwapTests(ITestOutputHelper output)
{
    [SkippableFact]
    public void TheCudaSwapStepMatchesTheResidentCudaStepAndReportsItsOverlap()
    {
        using var gpu = Gpu.OpenOrSkip(output);
        var c = SwapTests.Deeper;
        foreach (var dtype in new[] { BaseDType.Bf16, BaseDType.Fp8 })
        {
            var (loss0, grads0) = SwapTests.Step(gpu, c, dtype, 0, true, out _);
            var (again, gradsAgain) = SwapTests.Step(gpu, c, dtype, 0, true, out _);
            var (loss, grads) = SwapTests.Step(gpu, c, dtype, c.Depth + c.DepthSingleBlocks, true, out _);
            output.WriteLine($"{BaseDTypes.Name(dtype)}: loss {loss:R} swapped, {loss0:R} and {again:R} resident");
            // The same kernels read the same bf16 / E4M3 bytes from a slot instead of their own buffers. When two
            // resident runs agree bit for bit, so must the swapped one; else it is one more sample of the run-to-run
            // spread, allowed three times the spread seen between the two resident runs.
            bool deterministic = again == loss0 && grads0.Zip(gradsAgain).All(p => p.First.AsSpan().SequenceEqual(p.Second));
            output.WriteLine(deterministic ? "resident runs agree bit for bit" : "resident runs differ: comparing with their spread");
            static double Distance(float[] a, float[] b) => Math.Sqrt(a.Zip(b).Sum(p => ((double)p.First - p.Second) * ((double)p.First - p.Second)));
            for (int i = 0; i < grads.Length; i++)
            {
                if (deterministic) Assert.Equal(grads0[i], grads[i]);
                else Assert.InRange(Distance(grads[i], grads0[i]), 0, 3 * Distance(gradsAgain[i], grads0[i]));
            }
            if (deterministic) Assert.Equal(loss0, loss);
            else Assert.InRange(Math.Abs(loss - loss0), 0, 3 * Math.Abs(again - loss0));
        }
        using var weights = FluxWeights.Random(c, gpu, 1, BaseDType.Bf16, 3);
        var model = new FluxModel(weights);
        var (inputs, target) = Batches.FlowMatchingBatch(gpu, c, SwapTests.Batch(c, 1), [0.5f], 1f, 1, 0);
        using (inputs)
        using (target)
        using (model.Predict(inputs, null)) { }
        var overlap = Assert.IsType<SwapOverlap>(weights.Blocks.TakeOverlap());
        output.WriteLine(overlap.ToString());
        Assert.Equal(3, overlap.Copies);
        Assert.True(overlap.CopyMs > 0 && overlap.ExposedMs >= 0 && overlap.ExposedMs <= overlap.CopyMs);
    }
}
