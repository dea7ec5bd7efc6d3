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
    /// Runs one optimisation step and returns (loss, grad norm before clipping). <paramref name="recompute"/> is the
    /// decision of <see cref="TrainOptions.Recompute"/>, made once per run (<see cref="RecomputePolicy.Decide"/>).
    /// <paramref name="guard"/>, when given, sees the loss and norm before the update and may drop it or stop the run.
    /// </summary>
    public static (double Loss, double GradNorm) Step(FluxModel model, LoraBinding binding, IReadOnlyList<Example> batch, TrainOptions o, long step, bool recompute,
                                                      NonFiniteGuard? guard = null)
    {
        var (inputs, target) = StepInputs(model, batch, o, step);
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
    /// </summary>
    public static double ClipAndUpdate(IBackend be, IReadOnlyList<LoraParameter> parameters, TrainOptions o, long step, double loss, NonFiniteGuard? guard)
    {
        double norm = Math.Sqrt(be.SumSquares(parameters.Select(p => p.Grad).ToArray()));
        if (guard != null && !guard.Accept(step + 1, loss, norm)) return norm;   // the guard dropped the update (or threw)
        float scale = o.MaxGradNorm > 0 && norm > o.MaxGradNorm ? (float)(o.MaxGradNorm / norm) : 1f;
        foreach (var p in parameters) p.AdamW(o.LearningRate, o.WeightDecay, scale);
        return norm;
    }

    /// <summary>
    /// Forward, MSE against the target, backward: the binding's trainable factor gradients are zeroed, then filled.
    /// Returns the loss; the caller owns the prediction.
    /// </summary>
    public static double LossAndGradients(FluxModel model, FluxInputs inputs, Tensor target, LoraBinding binding, bool recompute, out Tensor prediction)
    {
        foreach (var p in binding.TrainableParameters()) p.ZeroGrad();
        prediction = model.Forward(inputs, binding, out var state, recompute);
        double loss = model.Backend.MseLoss(prediction, target, out var dPrediction);
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
