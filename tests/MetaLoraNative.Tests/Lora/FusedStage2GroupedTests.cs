using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Training;
using MetaLoraNative.Tests.Model;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Lora;

/// <summary>
/// The fused Stage-2 path with grouping on (<see cref="FusedStage2Cache.Grouped"/>, METALORA_LORA_GROUPED=1: every
/// A = M·D of a step in one GemmGroup, every dM += Gⱼ·Dᵀ of a backward deferred to one more) against the same path
/// with it off, on the tiny model, over several AdamW steps (so A must be formed again each time M moves). On the CPU
/// the group runs each entry through GemmSlice's product in the same order of sums, so the two runs must agree to the
/// last bit in fp64 and in fp32: loss, every dM and dU, and the factors after each update. Also: the number of group
/// calls per step (one formation per identity, one dM flush), and that a second backward before the flush flushes.
/// </summary>
public class FusedStage2GroupedTests(ITestOutputHelper output)
{
    const int R1 = 4, R2 = 2, Steps = 3;

    static List<Example> Examples(FluxConfig c, int n) =>
        [.. Enumerable.Range(0, n).Select(b => new Example(RandomWeights.Normal($"x0.{b}", 4, 16 * c.InChannels), 4, 4,
            RandomWeights.Normal($"txt.{b}", 4, 5 * c.ContextInDim), 5, RandomWeights.Normal($"y.{b}", 4, c.VecInDim)))];

    /// <summary>Per step: the loss, then per trained factor its gradient and (after the update) its value.</summary>
    static List<(double Loss, double[][] Grads, double[][] Values)> Train(IBackend be, bool grouped, int[] ids, out long groupCalls, out long formations)
    {
        var c = FluxConfig.Tiny;
        using var w = FluxWeights.Random(c, be, 3);
        var model = new FluxModel(w);
        using var adapter = ModelFixture.RandomAdapter(be, c, LoraMode.Meta, R1, R2, identities: ids.Max() + 1, seed: 21);
        adapter.MergedDowns.Grouped = grouped;
        var examples = Examples(c, ids.Length);
        var o = new TrainOptions { BatchSize = ids.Length, Seed = 1, Recompute = RecomputePolicy.Off, LearningRate = 1e-2f };
        var run = new List<(double, double[][], double[][])>();
        for (int step = 0; step < Steps; step++)
        {
            var binding = new LoraBinding(adapter, ids, trainDown: false, trainIdentity: true);
            Assert.Equal(LoraPath.Fused, binding.Path);
            var parameters = binding.TrainableParameters().ToArray();
            var (loss, _) = Trainer.Step(model, binding, examples, o, step, recompute: false);
            run.Add((loss, [.. parameters.Select(p => be.DownloadDouble(p.Grad))], [.. parameters.Select(p => be.DownloadDouble(p.Value))]));
        }
        groupCalls = adapter.MergedDowns.GroupCalls;
        formations = adapter.MergedDowns.Formations;
        return run;
    }

    static double Worst(double[][] a, double[][] b)
    {
        Assert.Equal(a.Length, b.Length);
        double worst = 0;
        for (int k = 0; k < a.Length; k++)
        {
            Assert.Equal(a[k].Length, b[k].Length);
            for (int i = 0; i < a[k].Length; i++) worst = Math.Max(worst, Math.Abs(a[k][i] - b[k][i]));
        }
        return worst;
    }

    [Theory]
    [InlineData(new[] { 0, 0 }, true)]
    [InlineData(new[] { 0, 1, 1 }, true)]
    [InlineData(new[] { 0, 0 }, false)]
    public void GroupedStepsEqualUngroupedSteps(int[] ids, bool fp64)
    {
        using IBackend be = fp64 ? CpuBackend.F64() : CpuBackend.F32();
        var plain = Train(be, grouped: false, ids, out long plainCalls, out long plainFormations);
        var grouped = Train(be, grouped: true, ids, out long groupCalls, out long groupedFormations);
        int identities = ids.Distinct().Count();
        for (int s = 0; s < Steps; s++)
        {
            double grads = Worst(grouped[s].Grads, plain[s].Grads), values = Worst(grouped[s].Values, plain[s].Values);
            output.WriteLine($"{(fp64 ? "fp64" : "fp32")} identities [{string.Join(", ", ids)}] step {s}: loss {grouped[s].Loss:R} vs {plain[s].Loss:R}, " +
                             $"worst |Δ| of dM/dU {grads:E2}, of M/U after AdamW {values:E2}");
            Assert.Equal(plain[s].Loss, grouped[s].Loss);
            Assert.Equal(0, grads);
            Assert.Equal(0, values);
            Assert.Contains(plain[s].Grads, g => g.Any(v => v != 0));
        }
        // every target's A formed once per step and identity on both paths; grouped: one call per identity and step
        // for the formation, and one per step for the deferred dM products
        Assert.Equal(plainFormations, groupedFormations);
        Assert.Equal(0, plainCalls);
        Assert.Equal(Steps * (identities + 1), groupCalls);
    }

    /// <summary>The device step (flat buffers, multi-tensor AdamW) with grouping on gives the host path's run without it.</summary>
    [Fact]
    public void GroupedDeviceStepEqualsTheUngroupedHostStep()
    {
        using var be = CpuBackend.F64();
        var c = FluxConfig.Tiny;
        using var w = FluxWeights.Random(c, be, 3);
        var model = new FluxModel(w);
        using var adapter = ModelFixture.RandomAdapter(be, c, LoraMode.Meta, R1, R2, identities: 1, seed: 21);
        adapter.MergedDowns.Grouped = true;
        var examples = Examples(c, 2);
        var o = new TrainOptions { BatchSize = 2, Seed = 1, Recompute = RecomputePolicy.Off, LearningRate = 1e-2f };
        var plain = TrainWith(be, o);
        using var flat = FlatParameters.Create(be, [.. adapter.Identities[0].Parameters()]);
        using var pipeline = new StepPipeline(be, flat);
        var done = new List<CompletedStep>();
        for (int step = 0; step < Steps; step++)
        {
            var binding = new LoraBinding(adapter, [0, 0], trainDown: false, trainIdentity: true);
            pipeline.Step(model, binding, examples, o, step, recompute: false, null, done.Add);
        }
        done.Add(pipeline.Flush(null)!.Value);
        for (int s = 0; s < Steps; s++) Assert.Equal(plain[s].Loss, done[s].Loss);
        var values = new LoraBinding(adapter, [0, 0], false, true).TrainableParameters().Select(p => be.DownloadDouble(p.Value)).ToArray();
        Assert.Equal(0, Worst(values, plain[^1].Values));
        Assert.Equal(2 * Steps, adapter.MergedDowns.GroupCalls);
        output.WriteLine($"device step, grouped: losses {string.Join(", ", done.Select(d => d.Loss.ToString("R")))} equal the host path's without grouping");

        List<(double Loss, double[][] Grads, double[][] Values)> TrainWith(IBackend b, TrainOptions opts)
        {
            using var w2 = FluxWeights.Random(c, b, 3);
            var m2 = new FluxModel(w2);
            using var a2 = ModelFixture.RandomAdapter(b, c, LoraMode.Meta, R1, R2, identities: 1, seed: 21);
            var run = new List<(double, double[][], double[][])>();
            for (int step = 0; step < Steps; step++)
            {
                var binding = new LoraBinding(a2, [0, 0], trainDown: false, trainIdentity: true);
                var parameters = binding.TrainableParameters().ToArray();
                var (loss, _) = Trainer.Step(m2, binding, examples, opts, step, recompute: false);
                run.Add((loss, [.. parameters.Select(p => b.DownloadDouble(p.Grad))], [.. parameters.Select(p => b.DownloadDouble(p.Value))]));
            }
            return run;
        }
    }

    /// <summary>
    /// Module by module (no FluxModel): a module's dM waits for FinishBackward, and a second backward of the same
    /// module before it flushes the first one's products, so the result is the two backwards' sum, as without grouping.
    /// </summary>
    [Fact]
    public void DeferredDmWaitsForFinishBackwardAndASecondBackwardFlushesFirst()
    {
        using var be = CpuBackend.F64();
        var c = FluxConfig.Tiny;
        double[] Run(bool grouped, bool finish)
        {
            using var adapter = ModelFixture.RandomAdapter(be, c, LoraMode.Meta, R1, R2, identities: 1, seed: 5);
            adapter.MergedDowns.Grouped = grouped;
            string module = adapter.Modules.First(m => adapter.TargetsOf(m).Length >= 3);
            var targets = adapter.TargetsOf(module).ToArray();
            int dIn = adapter.Targets[targets[0]].InFeatures, dOut = targets.Max(t => adapter.Targets[t].RowStart + adapter.Targets[t].Rows);
            using var x = be.Upload(RandomWeights.Normal("x", 1, 2 * 3 * dIn), 2, 3, dIn);
            using var dy = be.Upload(RandomWeights.Normal("dy", 1, 2 * 3 * dOut), 2, 3, dOut);
            using var y = be.Zeros(2, 3, dOut);
            var binding = new LoraBinding(adapter, [0, 0], trainDown: false, trainIdentity: true);
            foreach (var p in binding.TrainableParameters()) p.ZeroGrad();
            binding.AddDelta(module, x, y);
            binding.Backward(module, x, dy, null);
            binding.Backward(module, x, dy, null);   // the same slot again: the first one's dM must be issued before G is rewritten
            var mid = adapter.Identities[0].Mid[targets[0]]!;
            if (grouped && !finish) return be.DownloadDouble(mid.Grad);
            binding.FinishBackward();
            return be.DownloadDouble(mid.Grad);
        }
        var plain = Run(false, true);
        var grouped = Run(true, true);
        var pending = Run(true, false);
        Assert.Contains(plain, v => v != 0);
        Assert.Equal(plain, grouped);
        // before FinishBackward only the first backward's share is there: half of the total (the two are equal)
        for (int i = 0; i < plain.Length; i++) Assert.Equal(plain[i] / 2, pending[i], 1e-12);
    }
}
