using System.Globalization;
using System.Text.RegularExpressions;
using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Demo;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Training;

namespace MetaLoraNative.Kernels.Verification;

/// <summary>
/// The whole-model checks: FluxConfig.Tiny with bf16-exact random weights, a random Meta LoRA whose every factor
/// (U included) is nonzero, run on the GPU, on the fp64 oracle and on the <see cref="Bf16EmulationBackend"/>.
/// All three hold exactly the same weights and inputs, so the GPU's error against the oracle is its arithmetic
/// alone, and the emulation's error is what an honest bf16 implementation of the same model carries.
/// </summary>
public static partial class CudaParity
{
    public const int Stage2Iterations = 20;
    const ulong WeightSeed = 2, AdapterSeed = 11, InputSeed = 5;

    /// <summary>FluxWeights.Random's values rounded to bf16, so every backend stores them exactly.</summary>
    public static FluxWeights Bf16RandomWeights(FluxConfig config, IBackend be, ulong seed)
    {
        var dict = new Dictionary<string, Tensor>();
        foreach (var (name, shape) in config.TensorShapes())
            dict[name] = be.Upload(ParityContext.RoundBf16(RandomWeights.Tensor(name, shape, seed)), shape);
        return new FluxWeights(config, be, dict, $"random:{config.Name}:{seed} (bf16-rounded)");
    }

    internal sealed record ModelRun(double[] Output, double Loss, (string Name, double[] Grad)[] Grads);

    /// <summary>
    /// One forward-and-backward case: the model shape, the batch (sample b uses identity b), the latent grid (image
    /// tokens gh·gw), the text tokens and the Meta LoRA's ranks. Timesteps 0.25, 0.75, ... across the batch.
    /// </summary>
    public sealed record ModelCase(FluxConfig Config, int Batch, int GridH, int GridW, int TextTokens, int Rank1, int Rank2)
    {
        public int ImageTokens => GridH * GridW;
    }

    /// <summary>FluxConfig.Tiny, batch 2 (two identities), a 3×5 latent grid (15 image tokens), 7 text tokens, r1 4, r2 2.</summary>
    public static readonly ModelCase TinyCase = new(FluxConfig.Tiny, 2, 3, 5, 7, 4, 2);

    /// <summary>One forward and backward of the tiny model (<see cref="TinyCase"/>), all inputs bf16-exact.</summary>
    internal static ModelRun RunTinyModel(IBackend be) => RunModel(be, TinyCase);

    /// <summary>
    /// One forward and backward of a case, Stage-1 style (D, M and U all train) with a random Meta LoRA on every
    /// target whose U is nonzero: output, loss and every factor gradient. All weights and inputs are bf16-exact.
    /// </summary>
    internal static ModelRun RunModel(IBackend be, ModelCase mc, Fusions? fusions = null)
    {
        var c = mc.Config;
        int B = mc.Batch, gh = mc.GridH, gw = mc.GridW, lt = mc.TextTokens;
        using var weights = Bf16RandomWeights(c, be, WeightSeed);
        var model = new FluxModel(weights, fusions);
        using var adapter = LoraAdapter.Random(be, c, LoraMode.Meta, mc.Rank1, mc.Rank2, B, AdapterSeed);
        var binding = new LoraBinding(adapter, [.. Enumerable.Range(0, B)], trainDown: true, trainIdentity: true);
        float[] R(string name, int n) => ParityContext.RoundBf16(RandomWeights.Normal(name, InputSeed, n));
        var examples = Enumerable.Range(0, B).Select(b => new Example(
            R($"x0.{b}", gh * gw * c.InChannels), gh, gw, R($"txt.{b}", lt * c.ContextInDim), lt, R($"y.{b}", c.VecInDim))).ToList();
        float[] timesteps = [.. Enumerable.Range(0, B).Select(b => 0.25f + 0.5f * (b % 2))];
        using var inputs = Batches.MakeInputs(be, c, examples, R("img", B * gh * gw * c.InChannels), timesteps, 3.5f);
        using var target = be.Upload(R("target", B * gh * gw * c.OutChannels), [B, gh * gw, c.OutChannels]);

        var parameters = binding.TrainableParameters().ToArray();
        double loss = Trainer.LossAndGradients(model, inputs, target, binding, recompute: false, out var y);
        using var _y = y;
        var grads = parameters.Select((p, i) => ($"grad[{i}] {p.Name}", be.DownloadDouble(p.Grad))).ToArray();
        return new ModelRun(be.DownloadDouble(y), loss, grads);
    }

    static (ModelRun Gpu, ModelRun Ref, ModelRun Emu) RunModelEverywhere(ParityContext p, ModelCase mc)
    {
        var gpu = RunModel(p.Gpu, mc);
        var reference = RunModel(p.Cpu, mc);
        using var emulation = new Bf16EmulationBackend();
        return (gpu, reference, RunModel(emulation, mc));
    }

    static void ModelForward(ParityContext p)
    {
        var (g, r, e) = RunModelEverywhere(p, TinyCase);
        CompareOutputs(p, "tiny model", g, r, e);
    }

    static void ModelGradients(ParityContext p)
    {
        var (g, r, e) = RunModelEverywhere(p, TinyCase);
        CompareGradients(p, g, r, e);
    }

    static void CompareOutputs(ParityContext p, string what, ModelRun g, ModelRun r, ModelRun e)
    {
        p.Bf16($"{what} output", g.Output, r.Output, e.Output);
        p.Bf16($"{what} loss", [g.Loss], [r.Loss], [e.Loss]);
    }

    static void CompareGradients(ParityContext p, ModelRun g, ModelRun r, ModelRun e)
    {
        ParityContext.Require(g.Grads.Length == r.Grads.Length && g.Grads.Length > 0, $"{g.Grads.Length} GPU gradients, {r.Grads.Length} reference gradients");
        for (int i = 0; i < g.Grads.Length; i++)
        {
            ParityContext.Require(r.Grads[i].Grad.Any(v => v != 0), $"{r.Grads[i].Name}: the reference gradient is zero");
            p.Bf16(g.Grads[i].Name, g.Grads[i].Grad, r.Grads[i].Grad, e.Grads[i].Grad);
        }
    }

    /// <summary>Stage 2 on the tiny model (D from a fresh random Meta-Down, lr 1e-2, bs 1, seed 1): per-step losses and the trained U.</summary>
    internal static (double[] Losses, double[] Up) RunStage2(IBackend be)
    {
        var c = FluxConfig.Tiny;
        using var weights = Bf16RandomWeights(c, be, WeightSeed);
        var model = new FluxModel(weights);
        using var down = LoraAdapter.Create(be, c, FluxNames.LoraTargets(c), LoraMode.Meta, 4, 1, 3);
        var person = TinyDemo.MakeIdentity(c, "someone", 4, 77);
        var o = new Stage2Options { Train = new TrainOptions { LearningRate = 1e-2f, BatchSize = 1, Seed = 1 }, Iterations = Stage2Iterations, Rank2 = 2 };
        var losses = new List<double>();
        var lossField = new Regex(@"\bloss (\S+)", RegexOptions.CultureInvariant);
        using var personal = Stages.Stage2(model, down, person, o, line =>
        {
            var m = lossField.Match(line);
            if (line.StartsWith("step ", StringComparison.Ordinal) && m.Success)
                losses.Add(double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture));
        });
        var up = personal.Identities[0].Up.SelectMany(u => be.DownloadDouble(u.Value)).ToArray();
        return ([.. losses], up);
    }

    static void Stage2Curve(ParityContext p)
    {
        var (gl, gu) = RunStage2(p.Gpu);
        var (rl, ru) = RunStage2(p.Cpu);
        using var emulation = new Bf16EmulationBackend();
        var (el, eu) = RunStage2(emulation);
        ParityContext.Require(gl.Length == Stage2Iterations && rl.Length == Stage2Iterations && el.Length == Stage2Iterations,
            $"expected {Stage2Iterations} logged losses, got GPU {gl.Length}, reference {rl.Length}, emulation {el.Length}");
        p.Bf16($"stage 2 loss curve ({Stage2Iterations} steps)", gl, rl, el);
        p.Bf16("stage 2 trained U", gu, ru, eu);
    }
}
