using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Training;

namespace MetaLoraNative.Tests.Model;

/// <summary>Small models, adapters and batches for the model-level tests.</summary>
internal static class ModelFixture
{
    /// <summary>An adapter whose every factor, U included, is random and nonzero, so every gradient is nonzero.</summary>
    public static LoraAdapter RandomAdapter(IBackend be, FluxConfig c, LoraMode mode, int r1, int r2, int identities, ulong seed)
    {
        var targets = FluxNames.LoraTargets(c);
        var a = LoraAdapter.Create(be, c, targets, mode, r1, r2, seed);
        for (int k = 0; k < identities; k++)
        {
            var id = a.AddIdentity($"id{k}", seed + (ulong)k);
            foreach (var up in id.Up)
            {
                var v = RandomWeights.Normal($"up.{k}.{up.Name}", seed, (int)up.Value.Length).Select(x => 0.3f * x).ToArray();
                using var t = be.Upload(v, up.Shape, Precision.Master);
                be.Copy(t, up.Value);
            }
        }
        return a;
    }

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
