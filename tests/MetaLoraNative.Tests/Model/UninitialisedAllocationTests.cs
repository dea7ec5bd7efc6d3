using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Model;

/// <summary>
/// The buffers the model and the LoRA allocate with IBackend.Empty (fully written with "=" before any read) on the
/// tiny model in fp64: the step with the CPU's NaN-poisoned Empty against the same step with every Empty a zero
/// tensor (<see cref="CpuBackend{T}.EmptyAsZeros"/>, the engine as it was with Zeros). Any element read before it is
/// written would carry a NaN into the loss, the LoRA gradients or d img; none may, and the values must be the
/// reference's. Every subset of the fusions, the stacked LoRA (Stage-1 style) and the fused Stage-2 LoRA with the
/// grouped A formation and dM off and on, recomputation off and on, B 1 (the joins as views) and 2.
/// </summary>
public class UninitialisedAllocationTests(ITestOutputHelper output)
{
    static ModelFixture.StepRun Step(IBackend be, Fusions fusions, int batch, bool stage2, bool grouped, bool recompute)
    {
        using var w = FluxWeights.Random(FluxConfig.Tiny, be, 7);
        return ModelFixture.FusionStep(be, w, fusions, batch, stage2, grouped, recompute);
    }

    [Theory]
    [InlineData(1, false, false)]
    [InlineData(2, false, false)]
    [InlineData(1, true, false)]
    [InlineData(2, true, false)]
    [InlineData(1, true, true)]
    [InlineData(2, true, true)]
    public void EmptyBuffersAreWrittenBeforeTheyAreRead(int batch, bool stage2, bool grouped)
    {
        using var poisoned = new CpuBackend<double>();
        using var zeroed = new CpuBackend<double> { EmptyAsZeros = true };
        double worst = 0;
        for (var f = Fusions.None; f <= Fusions.All; f++)
        foreach (bool recompute in new[] { false, true })
        {
            var reference = Step(zeroed, f, batch, stage2, grouped, recompute);
            var run = Step(poisoned, f, batch, stage2, grouped, recompute);
            string what = $"B {batch}, {(stage2 ? "fused" + (grouped ? " grouped" : "") : "stacked")} LoRA, fusions " +
                          $"{FusionSettings.Format(f)}, recompute {(recompute ? "on" : "off")}";
            Assert.All(reference.Grads, g => Assert.Contains(g, e => e != 0));
            Assert.True(run.All.All(double.IsFinite), $"{what}: a NaN from an Empty buffer read before it was written");
            Assert.Equal(reference.Grads.Length, run.Grads.Length);
            double rel = run.WorstAgainst(reference);
            // the same fp64 operations on the same values: "=" writes what the add onto zero wrote
            Assert.True(rel == 0, $"{what}: worst relative difference {rel:E2} against the Zeros step");
            worst = Math.Max(worst, rel);
        }
        output.WriteLine($"B {batch}, {(stage2 ? "fused" + (grouped ? " grouped" : "") : "stacked")} LoRA: every fusion subset, " +
                         $"recompute off and on: finite, worst relative difference against the Zeros step {worst:E2}");
    }
}
