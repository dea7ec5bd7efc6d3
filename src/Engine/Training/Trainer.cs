using System.Diagnostics;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;

namespace MetaLoraNative.Engine.Training;

/// <summary>Settings shared by both stages. Defaults are the paper's where it gives them.</summary>
public sealed record TrainOptions
{
    public float LearningRate { get; init; } = 4e-4f;
    public int BatchSize { get; init; } = 4;
    /// <summary>AdamW's decoupled weight decay (not stated in the paper; ai-toolkit's LoRA configs use 1e-4).</summary>
    public float WeightDecay { get; init; } = 1e-4f;
    /// <summary>Global gradient-norm clip over the trained factors; 0 turns it off.</summary>
    public float MaxGradNorm { get; init; } = 1f;
    public TimestepSampling Sampling { get; init; } = TimestepSampling.Sigmoid;
    /// <summary>The guidance embedding's value during training (ai-toolkit: 1.0).</summary>
    public float Guidance { get; init; } = 1f;
    public ulong Seed { get; init; } = 42;
    /// <summary>Per-block recomputation in the backward; the stages decide it once before the first step.</summary>
    public RecomputePolicy Recompute { get; init; } = RecomputePolicy.Auto;
    /// <summary>What a step with a non-finite loss or gradient norm does (<see cref="NonFiniteGuard"/>).</summary>
    public NonFinitePolicy OnNonFinite { get; init; } = NonFinitePolicy.Stop;
    /// <summary>With <see cref="NonFinitePolicy.Skip"/>: the most steps a run may skip before it stops.</summary>
    public int MaxNonFiniteSkips { get; init; } = 10;
    /// <summary>Start over even when the state file exists (it is moved aside to STATE.old).</summary>
    public bool ForceNew { get; init; }
}

/// <summary>One line of the training log.</summary>
public sealed record StepReport(long Step, long Total, double Loss, double GradNorm, float LearningRate, double Milliseconds, double TokensPerSecond, TimeSpan Eta, string Phase)
{
    public override string ToString() =>
        $"step {Step,6}/{Total} | {Phase,-7} | loss {Loss:F6} | grad norm {GradNorm:F4} | lr {LearningRate:E2} | {Milliseconds,8:F1} ms | {TokensPerSecond,9:F0} tok/s | eta {Eta:hh\\:mm\\:ss}";
}

/// <summary>The flow-matching training step both stages share: forward, MSE, backward, clip, AdamW.</summary>
public static class Trainer
{
    /// <summary>
    /// Fixed timesteps the evaluation cycles through over its examples: low, middle and high noise, so the curve covers
    /// the whole flow path and does not move with the training's timestep sampling.
    /// </summary>
    static readonly float[] EvaluationTimesteps = [0.25f, 0.5f, 0.75f];

    /// <summary>
    /// Evaluation draws its noise as if at steps from here on: far past any run's iterations, so it never reuses a
    /// training draw, and fixed, so every evaluation of the same examples sees the same noise.
    /// </summary>
    const long EvaluationNoiseStep = 1_000_000;

    /// <summary>
    /// Runs one optimisation step on the host path and returns (loss, grad norm before clipping): the loss and the norm
    /// are read back as they are formed (two synchronisations) and AdamW runs tensor by tensor. Training runs
    /// <see cref="StepPipeline"/> instead; this is its reference. <paramref name="recompute"/> is the
    /// decision of <see cref="TrainOptions.Recompute"/>, made once per run (<see cref="RecomputePolicy.Decide"/>).
    /// <paramref name="guard"/>, when given, sees the loss and norm before the update and may drop it or stop the run.
    /// </summary>
    public static (double Loss, double GradNorm) Step(FluxModel model, LoraBinding binding, IReadOnlyList<Example> batch, TrainOptions o, long step, bool recompute,
                                                      NonFiniteGuard? guard = null)
    {
        FluxInputs inputs;
        Tensor target;
        using (model.Backend.Counters?.Phase(ForwardPhase)) (inputs, target) = StepInputs(model, batch, o, step);
        using var _i = inputs;
        using var _t = target;

        var parameters = binding.TrainableParameters().ToArray();
        double loss = LossAndGradients(model, inputs, target, binding, recompute, out var prediction);
        prediction.Dispose();
        return (loss, ClipAndUpdate(model.Backend, parameters, o, step, loss, guard));
    }

    /// <summary>
    /// A training step's inputs and target: per example a timestep and noise drawn from (seed, step, sample index).
    /// <paramref name="firstSample"/> is the index of batch[0] in the step's global batch (data parallel: a rank's slice).
    /// </summary>
    public static (FluxInputs Inputs, Tensor Target) StepInputs(FluxModel model, IReadOnlyList<Example> batch, TrainOptions o, long step, int firstSample = 0)
    {
        var timesteps = Enumerable.Range(0, batch.Count)
            .Select(b => FlowMatching.SampleTimestep(o.Sampling, batch[b].ImageTokens, o.Seed, step, firstSample + b)).ToArray();
        return Batches.FlowMatchingBatch(model.Backend, model.Config, batch, timesteps, o.Guidance, o.Seed, step, firstSample);
    }

    /// <summary>
    /// Clips the global gradient norm of <paramref name="parameters"/> and applies AdamW; returns the norm before clipping.
    /// <paramref name="guard"/>, when given, sees the loss and norm first and may drop the update or stop the run.
    /// The host path: the norm is read back (one synchronisation) and AdamW runs tensor by tensor; the reference the
    /// device step (<see cref="StepPipeline"/>) is compared against, and the path of data-parallel Stage 1.
    /// </summary>
    public static double ClipAndUpdate(IBackend be, IReadOnlyList<LoraParameter> parameters, TrainOptions o, long step, double loss, NonFiniteGuard? guard)
    {
        using var _ = be.Counters?.Phase(OptimiserPhase);
        double norm = Math.Sqrt(be.SumSquares(parameters.Select(p => p.Grad).ToArray()));
        if (guard != null && !guard.Accept(step + 1, loss, norm)) return norm;   // the guard dropped the update (or threw)
        float scale = o.MaxGradNorm > 0 && norm > o.MaxGradNorm ? (float)(o.MaxGradNorm / norm) : 1f;
        foreach (var p in parameters) p.AdamW(o.LearningRate, o.WeightDecay, scale);
        return norm;
    }

    /// <summary>The phases a step's launches are counted under (<see cref="Benchmarks.LaunchCounters"/>, <c>bench --launches</c>).</summary>
    public const string ForwardPhase = "forward", BackwardPhase = "backward", OptimiserPhase = "optimiser";

    /// <summary>
    /// Forward, MSE against the target, backward: the binding's trainable factor gradients are zeroed, then filled.
    /// Returns the loss; the caller owns the prediction.
    /// </summary>
    public static double LossAndGradients(FluxModel model, FluxInputs inputs, Tensor target, LoraBinding binding, bool recompute, out Tensor prediction)
    {
        var be = model.Backend;
        double loss;
        Tensor dPrediction;
        FluxModel.State state;
        using (be.Counters?.Phase(ForwardPhase))
        {
            foreach (var p in binding.TrainableParameters()) p.ZeroGrad();
            prediction = model.Forward(inputs, binding, out state, recompute);
            loss = be.MseLoss(prediction, target, out dPrediction);
        }
        using (be.Counters?.Phase(BackwardPhase))
        using (state)
        using (dPrediction)
            model.Backward(state, dPrediction, binding);
        return loss;
    }

    /// <summary>Mean loss of the current adapter over examples at fixed timesteps and noise: the curve the demo prints.</summary>
    public static double Evaluate(FluxModel model, LoraBinding? binding, IReadOnlyList<Example> examples, TrainOptions o)
    {
        var be = model.Backend;
        double sum = 0;
        for (int i = 0; i < examples.Count; i++)
        {
            var batch = new[] { examples[i] };
            float[] t = [EvaluationTimesteps[i % EvaluationTimesteps.Length]];
            var (inputs, target) = Batches.FlowMatchingBatch(be, model.Config, batch, t, o.Guidance, o.Seed, EvaluationNoiseStep + i);
            using var _i = inputs;
            using var _t = target;
            using var prediction = model.Predict(inputs, binding);
            sum += be.MseLoss(prediction, target, out var d);
            d.Dispose();
        }
        return sum / examples.Count;
    }

    /// <summary>
    /// <see cref="Evaluate"/> averaged over identities, each with its own factors (identity k of the adapter), or with
    /// no LoRA at all (<paramref name="withLora"/> false: the base model, which is also where training starts, since
    /// every fresh U is zero). At most <paramref name="examplesPerIdentity"/> examples of each identity are used.
    /// </summary>
    public static double MeanIdentityLoss(FluxModel model, LoraAdapter adapter, IReadOnlyList<Identity> identities, TrainOptions o, bool withLora,
                                          int examplesPerIdentity = int.MaxValue)
    {
        double sum = 0;
        for (int k = 0; k < identities.Count; k++)
        {
            var binding = withLora ? new LoraBinding(adapter, [k], false, false) : null;
            sum += Evaluate(model, binding, identities[k].Examples.Take(examplesPerIdentity).ToList(), o);
        }
        return sum / identities.Count;
    }

    /// <summary>Timing and ETA for the training log.</summary>
    public sealed class Progress(long total)
    {
        readonly Stopwatch clock = Stopwatch.StartNew();
        long done;

        public StepReport Report(long step, double loss, double norm, float lr, double ms, long tokens, string phase)
        {
            done++;
            double perStep = clock.Elapsed.TotalSeconds / done;
            var eta = TimeSpan.FromSeconds(perStep * Math.Max(0, total - step));
            return new StepReport(step, total, loss, norm, lr, ms, tokens / Math.Max(1e-9, ms / 1000), eta, phase);
        }
    }
}

/// <summary>A step the device finished, as its read-back reported it.</summary>
/// <param name="Step">the step's 0-based iteration</param>
/// <param name="Applied">whether its update was applied (false: non-finite, dropped on the device)</param>
public readonly record struct CompletedStep(long Step, double Loss, double GradNorm, bool Applied);

/// <summary>
/// The training step with no host in it: the step's scalars stay on the device. The trained factors live in one
/// <see cref="FlatParameters"/>; per step one fill zeroes every gradient, the loss goes into a device
/// <see cref="StepScalars"/> (MseLoss), ClipScale reduces the global norm there and forms the clip scale and the
/// non-finite check, the multi-tensor AdamW reads both from device memory (a non-finite step is a no-op there),
/// and one asynchronous read-back copies the scalars to pinned host memory. The host reads step k's copy during
/// step k + 1, after that step's backward and before its update is queued (by then the copy has landed): the guard
/// judges step k then, the step counts and moments of the factors step k trained advance only when the device
/// applied it, and <c>onCompleted</c> reports it while the weights are still exactly those after step k. So the
/// losses, norms and weights are those of <see cref="Trainer.Step"/> (bit for bit on the CPU), a bad step never
/// touches the weights, and the step itself holds no host synchronisation. Two scalars records alternate, so step
/// k + 1 writes one while step k's copy is read from the other.
/// </summary>
public sealed class StepPipeline(IBackend backend, FlatParameters flat) : IDisposable
{
    readonly StepScalars[] scalars = [backend.NewStepScalars(), backend.NewStepScalars()];
    (long Step, LoraParameter[] Trained, StepScalars Scalars)? pending;

    public FlatParameters Flat { get; } = flat;

    /// <summary>
    /// Queues step <paramref name="step"/>. Before its update, step − 1 (if queued) is completed: judged by
    /// <paramref name="guard"/> (which may throw to stop the run) and handed to <paramref name="onCompleted"/>.
    /// Every factor the binding trains must live in <see cref="Flat"/>.
    /// </summary>
    public void Step(FluxModel model, LoraBinding binding, IReadOnlyList<Example> batch, TrainOptions o, long step, bool recompute,
                     NonFiniteGuard? guard, Action<CompletedStep>? onCompleted)
    {
        var s = scalars[step & 1];
        FluxInputs inputs;
        Tensor target;
        using (backend.Counters?.Phase(Trainer.ForwardPhase)) (inputs, target) = Trainer.StepInputs(model, batch, o, step);
        LoraParameter[] trained;
        using (inputs)
        using (target)
            trained = Queue(model, binding, inputs, target, o, recompute, s, () =>
            {
                if (Complete(guard) is { } done) onCompleted?.Invoke(done);
            });
        pending = (step, trained, s);
    }

    /// <summary>
    /// The step on inputs already on the device, into <paramref name="s"/>, completing no other step (only
    /// <paramref name="beforeUpdate"/> runs between the backward and the update): with inputs at fixed addresses, what
    /// a CUDA graph captures. Returns the factors it trains; their step counts advance only when the step completes.
    /// </summary>
    public LoraParameter[] Queue(FluxModel model, LoraBinding binding, FluxInputs inputs, Tensor target, TrainOptions o, bool recompute,
                                 StepScalars s, Action? beforeUpdate = null)
    {
        var be = backend;
        Tensor prediction, dPrediction;
        FluxModel.State state;
        using (be.Counters?.Phase(Trainer.ForwardPhase))
        {
            Flat.ZeroGrad();
            prediction = model.Forward(inputs, binding, out state, recompute);
            be.MseLoss(prediction, target, out dPrediction, s);
        }
        using (prediction)
        using (be.Counters?.Phase(Trainer.BackwardPhase))
        using (state)
        using (dPrediction)
            model.Backward(state, dPrediction, binding);

        using var _ = be.Counters?.Phase(Trainer.OptimiserPhase);
        beforeUpdate?.Invoke();
        var trained = binding.TrainableParameters().ToArray();
        be.ClipScale(trained.Select(p => p.Grad).ToArray(), o.MaxGradNorm, s);
        be.AdamW(trained.Select(p => p.NextStep()).ToArray(), new AdamWStep(1, o.LearningRate, WeightDecay: o.WeightDecay), s);
        be.ReadBack(s);
        return trained;
    }

    /// <summary>Completes the last queued step (waiting for its read-back): before a state save, at the end of a run.</summary>
    public CompletedStep? Flush(NonFiniteGuard? guard) => Complete(guard);

    CompletedStep? Complete(NonFiniteGuard? guard)
    {
        if (pending is not { } p) return null;
        pending = null;
        var v = p.Scalars.Read();
        bool accepted = guard?.Accept(p.Step + 1, v.Loss, v.GradNorm) ?? v.Applied;
        if (accepted != v.Applied)
            throw new InvalidOperationException($"step {p.Step + 1}: the device {(v.Applied ? "applied" : "dropped")} the update, " +
                                                $"the guard {(accepted ? "accepted" : "dropped")} it (loss {v.Loss}, grad norm {v.GradNorm})");
        if (v.Applied)
            foreach (var t in p.Trained) t.Stepped();
        return new CompletedStep(p.Step, v.Loss, v.GradNorm, v.Applied);
    }

    public void Dispose()
    {
        foreach (var s in scalars) s.Dispose();
    }
}
