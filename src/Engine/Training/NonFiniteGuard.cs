using System.Globalization;
using MetaLoraNative.Engine.Lora;

namespace MetaLoraNative.Engine.Training;

/// <summary>What a run does with a step whose loss or gradient norm is NaN or infinite (`--on-nonfinite`).</summary>
public enum NonFinitePolicy
{
    /// <summary>Stop the run at once; nothing final is written and the last good state stays in place.</summary>
    Stop,
    /// <summary>Drop the step's update (no AdamW, moments and step counts untouched) and go on, up to a limit.</summary>
    Skip,
}

/// <summary>A training run met NaN or Inf values (loss, gradient norm or the factors themselves) and stopped.</summary>
public sealed class NonFiniteTrainingException(string subject, string message) : RuntimeFailure(subject, message);

/// <summary>
/// The numeric guard of a training run. Each step's loss and global gradient norm come to <see cref="Accept"/>: on the
/// device path (<see cref="StepPipeline"/>) from the step's asynchronous read-back, during the next step and before
/// that step's update is queued, while the device has already dropped a non-finite step's update itself (so the
/// weights, moments and step counts never see it, and the host's verdict must agree with the device's); on the host
/// path (<see cref="Trainer.Step"/>, data parallel) before the update. Non-finite values stop the run (<see cref="NonFinitePolicy.Stop"/>) or skip the step's update
/// (<see cref="NonFinitePolicy.Skip"/>, at most <c>maxSkips</c> steps per run, counted across resumes). A skipped step
/// still advances the iteration, and all randomness is a function of (seed, iteration), so a resumed run repeats the
/// uninterrupted one exactly. Before every state save and before the result is handed back, the factors and their
/// AdamW moments are checked too (one more read-back), so no state or result holding NaN is ever written.
/// </summary>
public sealed class NonFiniteGuard(NonFinitePolicy policy, int maxSkips, string stage, string? statePath, bool haveState, int skipped)
{
    string? lastGood = haveState ? statePath : null;

    /// <summary>Steps skipped so far in this run, including those before a resume (recorded in the state).</summary>
    public int Skipped { get; private set; } = skipped;

    /// <summary>Whether the last step given to <see cref="Accept"/> was skipped (for the log line).</summary>
    public bool LastSkipped { get; private set; }

    string LastGood => lastGood != null ? $"last finite state: {lastGood}" : "last finite state: none, no state was saved yet";

    /// <summary>
    /// Step <paramref name="step"/> (1-based, as the log counts) produced this loss and gradient norm: true when its
    /// update may be applied, false when it is to be skipped; throws <see cref="NonFiniteTrainingException"/> when
    /// the run must stop.
    /// </summary>
    public bool Accept(long step, double loss, double gradNorm)
    {
        string? what = !double.IsFinite(loss) ? "loss" : !double.IsFinite(gradNorm) ? "grad norm" : null;
        LastSkipped = what != null;
        if (what == null) return true;
        string at = $"non-finite {what} at step {step} ({LastGood})";
        if (policy == NonFinitePolicy.Stop)
            throw new NonFiniteTrainingException(stage, $"{at}; --on-nonfinite skip would drop such steps");
        if (Skipped >= maxSkips)
            throw new NonFiniteTrainingException(stage, $"{at}; {Skipped} non-finite steps were skipped already (--max-nonfinite-skips {maxSkips})");
        Skipped++;
        return false;
    }

    /// <summary>Throws when a factor or AdamW moment of the adapter is NaN or Inf after step <paramref name="step"/>.</summary>
    public void CheckFactors(LoraAdapter adapter, long step)
    {
        if (!double.IsFinite(adapter.Backend.SumSquares(Tensors(adapter))))
            throw new NonFiniteTrainingException(stage, $"non-finite factors after step {step} ({LastGood})");
    }

    /// <summary>The state was written at this iteration: it is the last good one from now on.</summary>
    public void Saved() => lastGood = statePath;

    /// <summary>A state file restored into <paramref name="adapter"/> must hold finite factors and moments to be resumed.</summary>
    public static void CheckRestored(LoraAdapter adapter, string path)
    {
        var be = adapter.Backend;
        if (double.IsFinite(be.SumSquares(Tensors(adapter)))) return;
        var bad = Parameters(adapter).First(p => !double.IsFinite(be.SumSquares([.. Own(p)])));
        throw new InputException(path, $"the state's '{bad.Name}' (factor or AdamW moments) holds NaN or Inf values; " +
                                       "it cannot be resumed (--force-new starts the run over)");
    }

    /// <summary>Parses --on-nonfinite (stop | skip).</summary>
    public static NonFinitePolicy Parse(string name) => name.ToLower(CultureInfo.InvariantCulture) switch
    {
        "stop" => NonFinitePolicy.Stop,
        "skip" => NonFinitePolicy.Skip,
        _ => throw new InputException("--on-nonfinite", $"'{name}' is not a policy; use stop or skip"),
    };

    static IEnumerable<LoraParameter> Parameters(LoraAdapter a) => a.Down.Concat(a.Identities.SelectMany(i => i.Parameters()));

    static IEnumerable<Tensor> Own(LoraParameter p)
    {
        yield return p.Value;
        if (p.Moment1 != null) yield return p.Moment1;
        if (p.Moment2 != null) yield return p.Moment2;
    }

    static Tensor[] Tensors(LoraAdapter a) => [.. Parameters(a).SelectMany(Own)];
}
