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

    /// <summary>One training step's results: the loss, every trainable LoRA factor's gradient and d img.</summary>
    public sealed record StepRun(double Loss, double[][] Grads, double[] DImg)
    {
        public IEnumerable<double> All => Grads.SelectMany(g => g).Concat(DImg).Append(Loss);

        /// <summary>The worst relative difference against a reference: the loss, d img and each gradient (<see cref="Rel"/>).</summary>
        public double WorstAgainst(StepRun reference) =>
            new[] { Math.Abs(Loss - reference.Loss) / Math.Abs(reference.Loss), Rel(DImg, reference.DImg) }
                .Concat(Grads.Zip(reference.Grads, Rel)).Max();
    }

    /// <summary>
    /// The fusion tests' step: the tiny model with the given fused forms and a random Meta LoRA (r1 3, r2 2, one identity
    /// per example), Stage-1 style (D, M, U trained: the stacked path) or Stage 2 (D frozen: the fused path, grouped or
    /// not), one forward, loss and backward.
    /// </summary>
    public static StepRun FusionStep(IBackend be, FluxWeights w, Fusions fusions, int batch, bool stage2, bool grouped, bool recompute)
    {
        var c = w.Config;
        var model = new FluxModel(w, fusions);
        using var adapter = RandomAdapter(be, c, LoraMode.Meta, 3, 2, identities: batch, seed: 31);
        adapter.MergedDowns.Grouped = grouped;
        var binding = new LoraBinding(adapter, [.. Enumerable.Range(0, batch)], trainDown: !stage2, trainIdentity: true);
        Xunit.Assert.Equal(stage2 ? LoraPath.Fused : LoraPath.Stacked, binding.Path);
        var (x, target) = Batch(be, c, batch, 3, 5, 7, 32);
        using var _x = x;
        using var _t = target;
        double[] dImg;
        double loss;
        using (var y = model.Forward(x, binding, out var s, recompute))
        {
            loss = be.MseLoss(y, target, out var dy);
            using (s) using (dy)
            using (var dx = model.BackwardWithInputGrad(s, dy, binding)) dImg = be.DownloadDouble(dx);
        }
        binding.FinishBackward();
        var grads = binding.TrainableParameters().Select(p => be.DownloadDouble(p.Grad)).ToArray();
        return new StepRun(loss, grads, dImg);
    }

    /// <summary>max |a − b| / max |b| over one array.</summary>
    public static double Rel(double[] a, double[] b)
    {
        double d = 0, m = 0;
        for (int i = 0; i < a.Length; i++) { d = Math.Max(d, Math.Abs(a[i] - b[i])); m = Math.Max(m, Math.Abs(b[i])); }
        return d / Math.Max(m, 1e-300);
    }
}
