using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Training;

namespace MetaLoraNative.Tests.Model;

/// <summary>Small models, adapters and batches for the model-level tests.</summary>
internal static class ModelFixture
{
    public static LoraAdapter RandomAdapter(IBackend be, FluxConfig c, LoraMode mode, int r1, int r2, int identities, ulong seed) =>
        LoraAdapter.Random(be, c, mode, r1, r2, identities, seed);

    /// <summary>A flow-matching batch of random examples on a gh×gw grid with lt text tokens.</summary>
    public static (FluxInputs Inputs, Tensor Target) Batch(IBackend be, FluxConfig c, int batch, int gh, int gw, int lt, ulong seed, float[]? t = null)
    {
        var examples = Enumerable.Range(0, batch).Select(b => new Example(
            RandomWeights.Normal($"x0.{b}", seed, gh * gw * c.InChannels), gh, gw,
            RandomWeights.Normal($"txt.{b}", seed, lt * c.ContextInDim), lt,
            RandomWeights.Normal($"y.{b}", seed, c.VecInDim))).ToList();
        t ??= Enumerable.Range(0, batch).Select(b => 0.2f + 0.6f * b / Math.Max(1, batch - 1)).ToArray();
        return Batches.FlowMatchingBatch(be, c, examples, t, 3.5f, seed, 0);
    }

    public static double Loss(FluxModel m, FluxInputs x, Tensor target, LoraBinding? lora)
    {
        using var y = m.Predict(x, lora);
        double loss = m.Backend.MseLoss(y, target, out var d);
        d.Dispose();
        return loss;
    }

    /// <summary>(f(t[i] + h) − f(t[i] − h)) / 2h, leaving t as it was.</summary>
    public static double CentralDifference(Tensor t, int index, double h, Func<double> f)
    {
        Nudge(t, index, h);
        double up = f();
        Nudge(t, index, -2 * h);
        double down = f();
        Nudge(t, index, h);
        return (up - down) / (2 * h);
    }

    /// <summary>Adds delta to one element of a tensor (through a host round trip: tests only).</summary>
    public static void Nudge(Tensor t, int index, double delta)
    {
        var be = t.Backend;
        var v = be.DownloadDouble(t);
        v[index] += delta;
        using var u = be.Upload(v, t.Shape);
        be.Copy(u, t);
    }
}
