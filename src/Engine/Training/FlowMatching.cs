using MetaLoraNative.Engine.Flux;

namespace MetaLoraNative.Engine.Training;

/// <summary>How training draws timesteps t ∈ (0, 1).</summary>
public enum TimestepSampling
{
    /// <summary>t = σ(n), n ~ N(0, 1): the logit-normal ai-toolkit calls "sigmoid" (the paper's trainer).</summary>
    Sigmoid,
    /// <summary>t ~ U(0, 1) pushed through FLUX's resolution-dependent shift (mu from the image sequence length).</summary>
    Shift,
    /// <summary>t ~ U(0, 1).</summary>
    Uniform,
}

/// <summary>
/// Rectified-flow matching as FLUX trains: x_t = (1 − t)·x0 + t·ε, the model predicts the velocity ε − x0, and the
/// loss is the mean squared error. All randomness comes from (seed, step, sample) so a resumed run repeats exactly.
/// </summary>
public static class FlowMatching
{
    /// <summary>FLUX's mu: linear in the image sequence length through (256, 0.5) and (4096, 1.15).</summary>
    public static double Mu(int imageSeqLen) => 0.5 + (1.15 - 0.5) / (4096 - 256) * (imageSeqLen - 256);

    /// <summary>FLUX's time shift: t' = e^mu / (e^mu + (1/t − 1)).</summary>
    public static double TimeShift(double mu, double t) => Math.Exp(mu) / (Math.Exp(mu) + (1.0 / t - 1.0));

    public static float SampleTimestep(TimestepSampling sampling, int imageSeqLen, ulong seed, long step, int sample)
    {
        string stream = $"t.{step}.{sample}";
        double t;
        switch (sampling)
        {
            case TimestepSampling.Sigmoid:
                t = 1.0 / (1.0 + Math.Exp(-RandomWeights.Normal(stream, seed, 1)[0]));
                break;
            case TimestepSampling.Shift:
                t = TimeShift(Mu(imageSeqLen), Uniform(stream, seed));
                break;
            default:
                t = Uniform(stream, seed);
                break;
        }
        return (float)Math.Clamp(t, 1e-5, 1 - 1e-5);
    }

    static double Uniform(string stream, ulong seed)
    {
        Span<float> u = stackalloc float[1];
        RandomWeights.Uniform(stream, seed, 0, u);
        return (u[0] + 1.0) / 2.0;
    }

    /// <summary>x_t and the velocity target for one sample: x0, noise (L, C) → (x_t, ε − x0).</summary>
    public static (float[] Noisy, float[] Target) Interpolate(ReadOnlySpan<float> x0, ReadOnlySpan<float> noise, float t)
    {
        var noisy = new float[x0.Length];
        var target = new float[x0.Length];
        for (int i = 0; i < x0.Length; i++)
        {
            noisy[i] = (1f - t) * x0[i] + t * noise[i];
            target[i] = noise[i] - x0[i];
        }
        return (noisy, target);
    }
}
