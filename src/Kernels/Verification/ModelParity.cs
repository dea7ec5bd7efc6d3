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
    /// One forward and backward of the tiny model: batch 2 (two identities), a 3×5 latent grid (15 image tokens) and
    /// 7 text tokens, all inputs bf16-exact, fixed timesteps 0.25 and 0.75.
    /// </summary>
    internal static ModelRun RunTinyModel(IBackend be)
    {
        var c = FluxConfig.Tiny;
        const int B = 2, gh = 3, gw = 5, lt = 7;
        using var weights = Bf16RandomWeights(c, be, WeightSeed);
        var model = new FluxModel(weights);
        using var adapter = LoraAdapter.Random(be, c, LoraMode.Meta, 4, 2, 2, AdapterSeed);
        var binding = new LoraBinding(adapter, [0, 1], trainDown: true, trainIdentity: true);
        float[] R(string name, int n) => ParityContext.RoundBf16(RandomWeights.Normal(name, InputSeed, n));
        var examples = Enumerable.Range(0, B).Select(b => new Example(
            R($"x0.{b}", gh * gw * c.InChannels), gh, gw, R($"txt.{b}", lt * c.ContextInDim), lt, R($"y.{b}", c.VecInDim))).ToList();
        using var inputs = Batches.MakeInputs(be, c, examples, R("img", B * gh * gw * c.InChannels), [0.25f, 0.75f], 3.5f);
        using var target = be.Upload(R("target", B * gh * gw * c.OutChannels), [B, gh * gw, c.OutChannels]);

        var parameters = binding.TrainableParameters().ToArray();
        double loss = Trainer.LossAndGradients(model, inputs, target, binding, recompute: false, out var y);
        using var _y = y;
        var grads = parameters.Select((p, i) => ($"grad[{i}] {p.Name}", be.DownloadDouble(p.Grad))).ToArray();
        return new ModelRun(be.DownloadDouble(y), loss, grads);
    }

    static (ModelRun Gpu, ModelRun Ref, ModelRun Emu) RunTinyModelEverywhere(ParityContext p)
    {
        var gpu = RunTinyModel(p.Gpu);
        var reference = RunTinyModel(p.Cpu);
        using var emulation = new Bf16EmulationBackend();
        return (gpu, reference, RunTinyModel(emulation));
    }

    static void ModelForward(ParityContext p)
    {
        var (g, r, e) = RunTinyModelEverywhere(p);
        p.Bf16("tiny model output", g.Output, r.Output, e.Output);
        p.Bf16("tiny model loss", [g.Loss], [r.Loss], [e.Loss]);
    }

    static void ModelGradients(ParityContext p)
    {
        var (g, r, e) = RunTinyModelEverywhere(p);
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
