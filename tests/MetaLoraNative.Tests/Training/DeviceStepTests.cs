using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Benchmarks;
using MetaLoraNative.Engine.Demo;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Training;
using MetaLoraNative.Tests.Kernels;
using MetaLoraNative.Tests.Model;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Training;

/// <summary>
/// The device step (<see cref="StepPipeline"/>: flat buffers, scalars on the device, one read-back per step) against
/// the host path it replaced (<see cref="Trainer.Step"/>), on the tiny model and the fp32 CPU engine: the same
/// losses, norms, weights, state and LoRA files, bit for bit; NaN steps dropped or stopped as before; and the counts
/// of what a step issues.
/// </summary>
public sealed class DeviceStepTests(ITestOutputHelper output) : TinyModelTest("devicestep", 2)
{
    static Identity WithNaN(Identity id, int example) => NonFiniteGuardTests.WithNaN(id, example);

    LoraAdapter Down() => LoraAdapter.Create(be, c, FluxNames.LoraTargets(c), LoraMode.Meta, 4, 1, 3);

    /// <summary>Clipping on (a max norm the tiny model's gradients pass), so the scale path is exercised.</summary>
    static Stage2Options S2(int iterations, string? state, NonFinitePolicy policy = NonFinitePolicy.Stop) => new()
    {
        Train = new TrainOptions { LearningRate = 1e-2f, BatchSize = 1, Seed = 1, MaxGradNorm = 0.0055f, OnNonFinite = policy, MaxNonFiniteSkips = 100,
                                   Recompute = RecomputePolicy.Off },
        Iterations = iterations, Rank2 = 2, StatePath = state, StateEvery = iterations,
    };

    /// <summary>Stage 2's adapter exactly as <see cref="Stages.Stage2"/> builds it.</summary>
    LoraAdapter Stage2Adapter(LoraAdapter down, Identity person, Stage2Options o)
    {
        var a = new LoraAdapter(be, c, down.Targets, LoraMode.Meta, down.Rank1, o.Rank2,
            down.Down.Select(d =>
            {
                var v = be.Zeros(d.Shape, Precision.Master);
                be.Copy(d.Value, v);
                return new LoraParameter(d.Name, v);
            }).ToArray());
        a.AddIdentity(person.Name, o.Train.Seed);
        return a;
    }

    static (Example[] Batch, LoraBinding Binding) Pick(LoraAdapter a, Identity person, Stage2Options o, long i)
    {
        var (batch, ids) = Batches.Sample([person], [0], o.Train.BatchSize, o.Train.Seed, $"stage2.batch.{i}");
        return (batch, new LoraBinding(a, ids, trainDown: false, trainIdentity: true));
    }

    /// <summary>Stage 2 on the host path, as the loop ran it before the device step: per-step losses and norms.</summary>
    List<(double Loss, double Norm)> HostRun(LoraAdapter a, Identity person, Stage2Options o, NonFiniteGuard guard, long steps)
    {
        var result = new List<(double, double)>();
        for (long i = 0; i < steps; i++)
        {
            var (batch, binding) = Pick(a, person, o, i);
            result.Add(Trainer.Step(m, binding, batch, o.Train, i, recompute: false, guard));
        }
        return result;
    }

    static NonFiniteGuard Guard(Stage2Options o, string? state = null) =>
        new(o.Train.OnNonFinite, o.Train.MaxNonFiniteSkips, "Stage 2", state, false, 0);

    void AssertSameFactors(LoraAdapter expected, LoraAdapter actual)
    {
        var e = expected.Identities[0].Parameters().ToArray();
        var a = actual.Identities[0].Parameters().ToArray();
        Assert.Equal(e.Length, a.Length);
        for (int k = 0; k < e.Length; k++)
        {
            Assert.Equal(e[k].Step, a[k].Step);
            Assert.Equal(be.Download(e[k].Value), be.Download(a[k].Value));
            Assert.Equal(e[k].Moment1 is null, a[k].Moment1 is null);
            if (e[k].Moment1 is { } m1) Assert.Equal(be.Download(m1), be.Download(a[k].Moment1!));
            if (e[k].Moment2 is { } m2) Assert.Equal(be.Download(m2), be.Download(a[k].Moment2!));
        }
    }

    [Fact]
    public void TheDeviceStepGivesTheHostPathsLossesNormsAndWeightsBitForBit()
    {
        using var down = Down();
        var person = TinyDemo.MakeIdentity(c, "someone", 4, 77);
        var o = S2(6, null);
        using var host = Stage2Adapter(down, person, o);
        var expected = HostRun(host, person, o, Guard(o), 6);
        Assert.Contains(expected, s => s.Norm > o.Train.MaxGradNorm);   // the clip scale was below 1 at least once

        using var device = Stage2Adapter(down, person, o);
        using var flat = FlatParameters.Create(be, [.. device.Identities[0].Parameters()]);
        using var pipeline = new StepPipeline(be, flat);
        var done = new List<CompletedStep>();
        var guard = Guard(o);
        for (long i = 0; i < 6; i++)
        {
            var (batch, binding) = Pick(device, person, o, i);
            pipeline.Step(m, binding, batch, o.Train, i, recompute: false, guard, done.Add);
            Assert.Equal(i, done.Count);   // step i is reported during step i + 1
        }
        done.Add(pipeline.Flush(guard)!.Value);
        Assert.Equal(Enumerable.Range(0, 6).Select(i => (long)i), done.Select(d => d.Step));
        for (int i = 0; i < 6; i++)
        {
            Assert.Equal(expected[i].Loss, done[i].Loss);
            Assert.Equal(expected[i].Norm, done[i].GradNorm);
            Assert.True(done[i].Applied);
        }
        AssertSameFactors(host, device);
    }

    [Fact]
    public void Stage2WritesTheSameStateAndLoraBytesAsTheHostPath()
    {
        using var down = Down();
        var person = TinyDemo.MakeIdentity(c, "someone", 4, 77);
        string state = Path.Combine(dir, "me.state.safetensors");   // the run record names it: one path for both
        var o = S2(5, state);
        using var device = Stages.Stage2(m, down, person, o, _ => { });
        byte[] deviceBytes = File.ReadAllBytes(state);

        using var host = Stage2Adapter(down, person, o);
        var guard = Guard(o, state);
        HostRun(host, person, o, guard, 5);
        TrainingState.Save(state, host, 5, "stage2", RunIdentity.Stage2(m, person, down, o), guard.Skipped);
        Assert.Equal(File.ReadAllBytes(state), deviceBytes);

        foreach (var format in new[] { LoraFormat.Peft, LoraFormat.Kohya })
        {
            string lora = Path.Combine(dir, $"me.{format}.safetensors");   // the file names itself: one path for both
            LoraFiles.Export(device, 0, lora, format);
            byte[] exported = File.ReadAllBytes(lora);
            LoraFiles.Export(host, 0, lora, format);
            Assert.Equal(File.ReadAllBytes(lora), exported);
        }
    }

    [Fact]
    public void ANaNStepIsDroppedOnTheDeviceAndSkippedAsOnTheHostPath()
    {
        using var down = Down();
        var person = WithNaN(TinyDemo.MakeIdentity(c, "someone", 4, 77), 1);
        var o = S2(10, null, NonFinitePolicy.Skip);
        using var host = Stage2Adapter(down, person, o);
        var hostGuard = Guard(o);
        var expected = HostRun(host, person, o, hostGuard, 10);
        Assert.InRange(hostGuard.Skipped, 1, 9);

        var lines = new List<string>();
        using var device = Stages.Stage2(m, down, person, o, lines.Add);
        var steps = lines.Where(l => l.StartsWith("step ", StringComparison.Ordinal)).ToArray();
        Assert.Equal(10, steps.Length);
        for (int i = 0; i < 10; i++)
        {
            Assert.StartsWith($"step {i + 1,6}/10", steps[i]);
            Assert.Equal(!double.IsFinite(expected[i].Loss), steps[i].EndsWith("skipped (non-finite)", StringComparison.Ordinal));
        }
        AssertSameFactors(host, device);
    }

    [Fact]
    public void ANaNStepStopsTheRunWithTheHostPathsMessageAndTheWeightsBeforeIt()
    {
        using var down = Down();
        var person = WithNaN(TinyDemo.MakeIdentity(c, "someone", 4, 77), 2);
        var o = S2(12, null);
        using var host = Stage2Adapter(down, person, o);
        var hostError = Assert.Throws<NonFiniteTrainingException>(() => HostRun(host, person, o, Guard(o), 12));

        using var device = Stage2Adapter(down, person, o);
        using var flat = FlatParameters.Create(be, [.. device.Identities[0].Parameters()]);
        using var pipeline = new StepPipeline(be, flat);
        var guard = Guard(o);
        var deviceError = Assert.Throws<NonFiniteTrainingException>(() =>
        {
            for (long i = 0; i < 12; i++)
            {
                var (batch, binding) = Pick(device, person, o, i);
                pipeline.Step(m, binding, batch, o.Train, i, recompute: false, guard, null);
            }
            pipeline.Flush(guard);
        });
        Assert.Equal(hostError.Message, deviceError.Message);
        output.WriteLine(deviceError.Message);
        AssertSameFactors(host, device);   // the bad step (and the one queued after it) never touched the weights
    }

    [Fact]
    public void FactorsAreAlignedViewsOfTheFlatBuffersAndThePaddingStaysZero()
    {
        using var down = Down();
        var person = TinyDemo.MakeIdentity(c, "someone", 4, 77);
        var o = S2(3, null);
        using var a = Stage2Adapter(down, person, o);
        var parameters = a.Identities[0].Parameters().ToArray();
        var before = parameters.Select(p => be.Download(p.Value)).ToArray();
        using var flat = FlatParameters.Create(be, parameters);
        var values = be.Download(flat.Values);
        long offset = 0;
        for (int k = 0; k < parameters.Length; k++)
        {
            Assert.Equal(before[k], be.Download(parameters[k].Value));
            Assert.Equal(before[k], values.AsSpan((int)offset, before[k].Length).ToArray());
            Assert.Null(parameters[k].Moment1);
            offset += (before[k].Length + FlatParameters.Alignment - 1) / FlatParameters.Alignment * FlatParameters.Alignment;
        }
        Assert.Equal(offset, flat.Values.Length);
        be.Fill(parameters[0].Grad, 3f);   // a view: the flat buffer sees it, and one fill clears every gradient
        Assert.Equal(3f, be.Download(flat.Grads)[0]);
        flat.ZeroGrad();
        Assert.All(parameters, p => Assert.Equal(0, be.SumSquares(p.Grad)));

        using var pipeline = new StepPipeline(be, flat);
        var guard = Guard(o);
        for (long i = 0; i < 3; i++)
        {
            var (batch, binding) = Pick(a, person, o, i);
            pipeline.Step(m, binding, batch, o.Train, i, recompute: false, guard, null);
        }
        pipeline.Flush(guard);
        var mask = new bool[flat.Values.Length];
        offset = 0;
        foreach (var p in parameters)
        {
            for (long e = 0; e < p.Value.Length; e++) mask[offset + e] = true;
            offset += (p.Value.Length + FlatParameters.Alignment - 1) / FlatParameters.Alignment * FlatParameters.Alignment;
        }
        foreach (var buffer in new[] { flat.Values, flat.Grads, flat.M, flat.V })
        {
            var v = be.Download(buffer);
            for (int e = 0; e < v.Length; e++)
                if (!mask[e]) Assert.Equal(0f, v[e]);
        }
        Assert.All(parameters, p => Assert.Equal(3, p.Step));
        Assert.Contains(parameters, p => be.SumSquares(p.Moment2!) > 0);
    }

    // ---------------------------------------------------------------- counts (bench --launches)

    /// <summary>
    /// Per phase, what each of <paramref name="steps"/> Stage-2 steps issued; with <paramref name="allocations"/>,
    /// each step's allocation sizes in order.
    /// </summary>
    List<Dictionary<string, LaunchCounters.Counts>> CountedSteps(bool device, int steps, List<List<long>>? allocations = null)
    {
        using var down = Down();
        var person = TinyDemo.MakeIdentity(c, "someone", 4, 77);
        var o = S2(steps, null);
        using var a = Stage2Adapter(down, person, o);
        using var flat = device ? FlatParameters.Create(be, [.. a.Identities[0].Parameters()]) : null;
        using var pipeline = device ? new StepPipeline(be, flat!) : null;
        var guard = Guard(o);
        var counters = be.Counters!;
        var result = new List<Dictionary<string, LaunchCounters.Counts>>();
        for (long i = 0; i < steps; i++)
        {
            var (batch, binding) = Pick(a, person, o, i);
            var log = new List<long>();
            counters.AllocationLog = log;
            var before = counters.Snapshot();
            if (device) pipeline!.Step(m, binding, batch, o.Train, i, recompute: false, guard, null);
            else Trainer.Step(m, binding, batch, o.Train, i, recompute: false, guard);
            result.Add(LaunchCounters.Between(before, counters.Snapshot()));
            counters.AllocationLog = null;
            allocations?.Add(log);
        }
        return result;
    }

    /// <summary>The GEMMs of a tiny Stage-2 step as the routing test's shape-only backend records them.</summary>
    static int ShapeOnlyGemms()
    {
        var shapes = new GemmRoutingTests.ShapeBackend();
        var weights = new FluxWeights(c, shapes, c.TensorShapes().ToDictionary(t => t.Name, t => shapes.Zeros(t.Shape)), "shapes:tiny");
        var targets = FluxNames.LoraTargets(c);
        var d = targets.Select(t => new LoraParameter(LoraAdapter.DownKey(t, LoraMode.Meta), shapes.Zeros([4, t.InFeatures], Precision.Master))).ToArray();
        var adapter = new LoraAdapter(shapes, c, targets, LoraMode.Meta, 4, 2, d);
        adapter.AddIdentity("photo", 1);
        var person = TinyDemo.MakeIdentity(c, "someone", 4, 77);
        var binding = new LoraBinding(adapter, [0], trainDown: false, trainIdentity: true);
        Trainer.Step(new FluxModel(weights), binding, [person.Examples[0]], S2(1, null).Train, 0, recompute: false);
        return shapes.Products.Count;
    }

    [Fact]
    public void AStepsCountsMatchTheRoutingTestAndTheDeviceStepHasNoSyncInIt()
    {
        // the third step: the moments exist and the device step has a previous step to complete
        var hostPath = CountedSteps(device: false, 3)[2];
        var devicePath = CountedSteps(device: true, 3)[2];
        foreach (var (name, counts) in new[] { ("host path", hostPath), ("device step", devicePath) })
            foreach (var (phase, n) in counts.OrderBy(p => p.Key))
                output.WriteLine($"{name,-11} {phase,-9} {n}");
        Assert.Equal([Trainer.BackwardPhase, Trainer.ForwardPhase, Trainer.OptimiserPhase], devicePath.Keys.Order());

        // GEMMs: the forward and backward products the routing test's shape-only step records, no others
        int gemms = ShapeOnlyGemms();
        Assert.Equal(gemms, LaunchCounters.Sum(devicePath.Values).GemmCount);
        Assert.Equal(gemms, LaunchCounters.Sum(hostPath.Values).GemmCount);
        Assert.Equal(0, devicePath[Trainer.OptimiserPhase].GemmCount);

        // the forward and backward issue the same work on both paths but for the loss: one read-back of the host path
        int targets = FluxNames.LoraTargets(c).Count, factors = 2 * targets;
        Assert.Equal(1, hostPath[Trainer.ForwardPhase].Syncs);
        Assert.Equal(0, devicePath[Trainer.ForwardPhase].Syncs);
        Assert.Equal(hostPath[Trainer.BackwardPhase], devicePath[Trainer.BackwardPhase] with { Gemms = hostPath[Trainer.BackwardPhase].Gemms });
        // zero-grad: one fill per factor (host) against one fill of the flat buffer; mse_finish adds one launch
        Assert.Equal(hostPath[Trainer.ForwardPhase].Launches - factors + 1 + 1, devicePath[Trainer.ForwardPhase].Launches);

        // optimiser, host path: a sum of squares per factor and one read-back of the norm, an AdamW per factor
        var hostOpt = hostPath[Trainer.OptimiserPhase];
        Assert.Equal((2 * factors, 1L, 0L, 0L), (hostOpt.Launches, hostOpt.Syncs, hostOpt.ReadBacks, hostOpt.Waits));
        // device step: the norm (the CPU engine's one launch per factor, a GPU's one per range), clip_scale, AdamW; no
        // sync, one asynchronous read-back of this step and one wait on the previous step's
        var opt = devicePath[Trainer.OptimiserPhase];
        Assert.Equal((factors + 2L, 0L, 1L, 1L), (opt.Launches, opt.Syncs, opt.ReadBacks, opt.Waits));
        Assert.Equal(0, LaunchCounters.Sum(devicePath.Values).Syncs);
        Assert.Equal(0, opt.Allocations);
    }

    [Fact]
    public void EveryStepAllocatesTheSameSequenceOfSizesAsTheOneBefore()
    {
        // The precondition of capturing a step in a CUDA graph: the pool hands the same blocks back each step.
        var allocations = new List<List<long>>();
        var counts = CountedSteps(device: true, 4, allocations);
        Assert.NotEmpty(allocations[1]);
        for (int i = 1; i < 4; i++)
        {
            Assert.Equal(allocations[1], allocations[i]);
            Assert.Equal(LaunchCounters.Sum(counts[1].Values).Allocations, allocations[i].Count);
        }
        output.WriteLine($"{allocations[1].Count} allocations per step, {allocations[1].Sum():N0} bytes; the first step {allocations[0].Count}");
    }
}
