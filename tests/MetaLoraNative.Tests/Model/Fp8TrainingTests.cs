using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Quantization;
using MetaLoraNative.Engine.Training;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Model;

/// <summary>The whole path on an fp8 base: one Stage-2 step on the tiny model against the same step on its bf16 base.</summary>
public sealed class Fp8TrainingTests(ITestOutputHelper output) : IDisposable
{
    readonly string dir = Directory.CreateTempSubdirectory("metalora-fp8-step-").FullName;
    public void Dispose() => Directory.Delete(dir, recursive: true);

    /// <summary>
    /// The tolerance, from E4M3's 3-bit mantissa. Rounding to nearest leaves each weight a relative error δ with
    /// |δ| ≤ u = 2^-4 (half an ulp of a 4-bit significand), uniform within its ulp, so E[δ²] ≤ u²/3. For a linear with
    /// independent errors, ‖ΔW·x‖ / ‖W·x‖ has RMS ≤ u/√3 (≈ 3.6%). The loss and the LoRA gradients are, to first
    /// order, sums of one such contribution per quantised linear on the forward path and one on the backward path
    /// (dx = dy·W), each at most the size of the quantity itself in a residual network whose branches add to the
    /// stream; independent contributions add in quadrature. So for N quantised linears:
    ///   relative difference ≤ √(2N) · u/√3.
    /// The tiny model has N = 2·10 + 2·3 = 26 block linears: √52 · 2^-4/√3 ≈ 0.26.
    /// </summary>
    static double Tolerance(int quantizedLinears) => Math.Sqrt(2.0 * quantizedLinears) * Math.ScaleB(1, -4) / Math.Sqrt(3);

    [Fact]
    public void AStage2StepOnAnFp8BaseMatchesTheBf16BaseWithinE4M3Precision()
    {
        var c = FluxConfig.Tiny;
        string path = Path.Combine(dir, "tiny-bf16.safetensors");
        using (var host = CpuBackend.F32())
        using (var w = FluxWeights.Random(c, host, 6))
            FluxLoader.Save(w, path, SafetensorsDType.BF16);

        var (loss16, grads16, _) = Step(path, BaseDType.Bf16);
        var (loss8, grads8, quantized) = Step(path, BaseDType.Fp8);
        Assert.Equal(Fp8LoadingTests.BlockLinears(c), quantized);

        double lossDiff = Math.Abs(loss8 - loss16) / Math.Abs(loss16);
        double num = 0, den = 0;
        for (int i = 0; i < grads16.Length; i++)
        {
            num += (grads8[i] - grads16[i]) * (grads8[i] - grads16[i]);
            den += grads16[i] * grads16[i];
        }
        double gradDiff = Math.Sqrt(num / den);
        double tolerance = Tolerance(quantized);
        output.WriteLine($"loss bf16 {loss16:G9}, fp8 {loss8:G9}: relative difference {lossDiff:E3}");
        output.WriteLine($"LoRA gradients ({grads16.Length} values): ‖g_fp8 − g_bf16‖ / ‖g_bf16‖ = {gradDiff:E3}; tolerance {tolerance:F3}");
        Assert.True(den > 0, "the step produced no gradient");
        Assert.True(lossDiff > 0 && gradDiff > 0, "the fp8 base changed nothing: its weights were not used");
        Assert.True(lossDiff <= tolerance, $"loss differs by {lossDiff:E3} > {tolerance:F3}");
        Assert.True(gradDiff <= tolerance, $"gradients differ by {gradDiff:E3} > {tolerance:F3}");
    }

    /// <summary>
    /// W8A8 (activations in E4M3 too, forward only) against W8A16 on the same fp8 base. Each forward product now also
    /// rounds its input: per output, Δy = Σ_k δ_k x_k w_nk with |δ_k| ≤ 2^-4 (half of E4M3's relative step 2^-3) in
    /// the normal range, so with independent errors ‖Δy‖ ≈ 2^-4/√3 · √K · RMS(x_k w_nk), the same relative size
    /// as the weight's rounding in W8A16 (u/√3 of ‖W·x‖ when ‖W·x‖ ≈ √K · RMS(x w)). Below 2^-6 · s_x the error
    /// is 2^-10 · s_x absolute instead, up to a full step relative: we allow u = 2^-3 for that tail. The backward is
    /// unchanged, so only the N forward products contribute: relative difference ≤ √N · 2^-3/√3.
    /// </summary>
    [Fact]
    public void AStage2StepWithW8A8DiffersFromW8A16WithinE4M3Precision()
    {
        var c = FluxConfig.Tiny;
        string path = Path.Combine(dir, "tiny-bf16.safetensors");
        using (var host = CpuBackend.F32())
        using (var w = FluxWeights.Random(c, host, 6))
            FluxLoader.Save(w, path, SafetensorsDType.BF16);

        var (loss16, grads16, quantized) = Step(path, BaseDType.Fp8);
        var (loss8, grads8, _) = Step(path, BaseDType.Fp8, fp8Matmul: true);
        double lossDiff = Math.Abs(loss8 - loss16) / Math.Abs(loss16);
        double num = 0, den = 0;
        for (int i = 0; i < grads16.Length; i++)
        {
            num += (grads8[i] - grads16[i]) * (grads8[i] - grads16[i]);
            den += grads16[i] * grads16[i];
        }
        double gradDiff = Math.Sqrt(num / den);
        double tolerance = Math.Sqrt(quantized) * Math.ScaleB(1, -3) / Math.Sqrt(3);
        output.WriteLine($"loss W8A16 {loss16:G9}, W8A8 {loss8:G9}: relative difference {lossDiff:E3}");
        output.WriteLine($"LoRA gradients: ‖g_W8A8 − g_W8A16‖ / ‖g_W8A16‖ = {gradDiff:E3}; tolerance {tolerance:F3} ({quantized} forward products)");
        Assert.True(lossDiff > 0 && gradDiff > 0, "W8A8 changed nothing: the activations were not quantised");
        Assert.True(lossDiff <= tolerance, $"loss differs by {lossDiff:E3} > {tolerance:F3}");
        Assert.True(gradDiff <= tolerance, $"gradients differ by {gradDiff:E3} > {tolerance:F3}");
    }

    [Fact]
    public void W8A8NeedsAnFp8BaseReachesEveryBlockLinearAndIsRecordedInTheRunIdentity()
    {
        using var be = CpuBackend.F64();
        using var bf16 = FluxWeights.Random(FluxConfig.Tiny, be, 6);
        var e = Assert.Throws<InputException>(() => new FluxModel(bf16, fp8Matmul: true));
        Assert.Contains(Fp8Activations.EnvironmentVariable, e.Message);
        Assert.Contains("--base-dtype fp8", e.Message);
        using var fp8 = FluxWeights.Random(FluxConfig.Tiny, be, 6, BaseDType.Fp8);
        var on = new FluxModel(fp8, fp8Matmul: true);
        Assert.True(on.Fp8Matmul);
        Assert.All(on.BlockLinears(), l => Assert.True(l.QuantizeActivations, l.Name));
        Assert.False(on.ImgIn.QuantizeActivations);
        var off = new FluxModel(fp8, fp8Matmul: false);
        Assert.All(off.BlockLinears(), l => Assert.False(l.QuantizeActivations, l.Name));
        // the run identity records it when on, and only then (states saved before the switch existed match W8A16 runs)
        var person = new Identity("p", [new Example(new float[4 * FluxConfig.Tiny.InChannels], 2, 2, new float[3 * FluxConfig.Tiny.ContextInDim], 3, new float[FluxConfig.Tiny.VecInDim])]);
        var targets = FluxNames.LoraTargets(FluxConfig.Tiny);
        var idOn = RunIdentity.StandardLora(on, person, targets, new StandardLoraOptions());
        var idOff = RunIdentity.StandardLora(off, person, targets, new StandardLoraOptions());
        Assert.Equal("w8a8", idOn.Options["fp8_matmul"]);
        Assert.False(idOff.Options.ContainsKey("fp8_matmul"));
        Assert.Contains(idOn.Differences(idOff.Options), d => d.StartsWith("fp8_matmul", StringComparison.Ordinal));
        Assert.True(Fp8Activations.Parse("1") && !Fp8Activations.Parse(null) && !Fp8Activations.Parse("0"));
        Assert.Throws<InputException>(() => Fp8Activations.Parse("yes please"));
    }

    /// <summary>Loss and every trained factor's gradient (M and U, D frozen) of one step on the fp64 engine.</summary>
    static (double Loss, double[] Grads, int Quantized) Step(string checkpoint, BaseDType dtype, bool fp8Matmul = false)
    {
        using var be = CpuBackend.F64();
        using var weights = FluxLoader.Load(checkpoint, be, null, dtype);
        var c = weights.Config;
        var model = new FluxModel(weights, fp8Matmul: fp8Matmul);
        using var adapter = LoraAdapter.Random(be, c, LoraMode.Meta, 4, 2, 1, 9);
        var binding = new LoraBinding(adapter, [0], trainDown: false, trainIdentity: true);
        var (inputs, target) = ModelFixture.Batch(be, c, 1, 4, 6, 5, 11);
        using var _i = inputs;
        using var _t = target;
        double loss = Trainer.LossAndGradients(model, inputs, target, binding, recompute: false, out var prediction);
        prediction.Dispose();
        var grads = binding.TrainableParameters().SelectMany(p => be.DownloadDouble(p.Grad)).ToArray();
        return (loss, grads, weights.QuantizedCount);
    }
}
