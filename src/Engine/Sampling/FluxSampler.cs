using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Training;

namespace MetaLoraNative.Engine.Sampling;

/// <summary>
/// FLUX's sampler as BFL's sampling.py runs it: timesteps linspace(1, 0, n+1), shifted by mu from the image sequence
/// length (as in training's "shift" sampling), and Euler steps x ← x + (t_next − t)·v with the guidance value fed to
/// the guidance embedding (FLUX-dev is guidance-distilled: one forward per step, no CFG pair).
/// </summary>
public static class FluxSampler
{
    /// <summary>n + 1 timesteps from 1 to 0; shifted unless <paramref name="shift"/> is false (schnell).</summary>
    public static float[] Schedule(int steps, int imageSeqLen, bool shift = true)
    {
        if (steps < 1) throw new InputException("--steps", "at least one sampling step is needed");
        double mu = FlowMatching.Mu(imageSeqLen);
        return Enumerable.Range(0, steps + 1).Select(i =>
        {
            double t = 1.0 - (double)i / steps;
            if (shift && t > 0 && t < 1) t = FlowMatching.TimeShift(mu, t);
            return (float)t;
        }).ToArray();
    }

    /// <summary>
    /// Packed latents (gridH·gridW, in) for one prompt embedding: T5 (t5Length, ctx) and CLIP pooled (vec), with the
    /// grid in tokens (<see cref="FluxConfig.PixelsPerToken"/> pixels each). A LoRA is baked into the model's weights
    /// beforehand (<see cref="Lora.LoraFiles.Bake"/>), at any strength, or applied unbaked through <paramref name="lora"/>
    /// (training's samples, where the frozen weights must stay untouched).
    /// </summary>
    public static float[] Sample(FluxModel model, float[] t5, int t5Length, float[] pooled,
                                 int gridH, int gridW, int steps, float guidance, ulong seed, Action<string>? log = null,
                                 Lora.LoraBinding? lora = null)
    {
        var be = model.Backend;
        var c = model.Config;
        int L = gridH * gridW;
        // the example carries the text and the grid; the image tokens are the sampler's x at each step
        var example = new Example(new float[L * c.InChannels], gridH, gridW, t5, t5Length, pooled);
        var x = RandomWeights.Normal("sample.noise", seed, L * c.InChannels);
        var schedule = Schedule(steps, L, shift: c.GuidanceEmbed);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        for (int i = 0; i < steps; i++)
        {
            float t = schedule[i], tNext = schedule[i + 1];
            using var inputs = Batches.MakeInputs(be, c, [example], x, [t], guidance);
            using var v = model.Predict(inputs, lora);
            var velocity = be.Download(v);
            for (int k = 0; k < x.Length; k++) x[k] += (tNext - t) * velocity[k];
            log?.Invoke($"sample step {i + 1}/{steps}: t {t:F3} → {tNext:F3}, {clock.Elapsed.TotalSeconds / (i + 1) * 1000:F0} ms/step, " +
                        $"eta {TimeSpan.FromSeconds(clock.Elapsed.TotalSeconds / (i + 1) * (steps - i - 1)):mm\\:ss}");
        }
        return x;
    }
}
