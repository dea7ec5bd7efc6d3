using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Kernels.Verification;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Kernels;

/// <summary>
/// The Stage-1 D gradient of a module with several targets (fused qkv, linear1), no GPU needed:
/// - on the CPU engines it equals each target's gradient computed on its own (one GEMM per target, the path a
///   single-target module always took), so the fp32 accumulation straight into the gradient changed nothing there;
/// - on the bf16 emulation it meets the CUDA check's tolerance (`lora dD fp32 ...`, 1e-5 relative), while the old
///   path (stacked gradient, bf16 Narrow per group, then added) misses it by far: the check can tell them apart.
/// </summary>
public class LoraDownGradientTests(ITestOutputHelper output)
{
    static readonly int[] Identities = [0, 0, 1];

    static LoraKind Kind(string shape) => LoraKind.Of(FluxConfig.FluxDev).Single(k => k.Shape == shape);

    static double MaxAbs(double[] v) => v.Max(Math.Abs);
    static double MaxDiff(double[] a, double[] b) => a.Zip(b, (x, y) => Math.Abs(x - y)).Max();

    static IEnumerable<(string Name, double[] Grad)> Downs(CudaParity.LoraRun run) =>
        run.Grads.Where(g => g.Name.EndsWith(".lora_down.weight", StringComparison.Ordinal));

    [Theory]
    [InlineData("3072->3x3072", 1e-12)]
    [InlineData("3072->3072+3072+3072+12288", 1e-12)]
    public void TheCpuPathEqualsEachTargetOnItsOwn(string shape, double tolerance)
    {
        var kind = Kind(shape);
        foreach (var be in new Engine.IBackend[] { CpuBackend.F64(), CpuBackend.F32() })
        {
            using var _ = be;
            double tol = be.Name == "cpu-f32" ? 1e-6 : tolerance;
            var stacked = CudaParity.RunLoraModule(be, kind, Identities, CudaParity.LoraFactors.Random);
            var downs = Downs(stacked).ToArray();
            Assert.Equal(kind.Targets.Count, downs.Length);
            for (int t = 0; t < kind.Targets.Count; t++)
            {
                var alone = CudaParity.RunLoraModule(be, kind.Only(kind.Targets[t]), Identities, CudaParity.LoraFactors.Random);
                var single = Downs(alone).Single();
                Assert.Equal(single.Name, downs[t].Name);
                double err = MaxDiff(downs[t].Grad, single.Grad), max = MaxAbs(single.Grad);
                output.WriteLine($"{be.Name} {single.Name}: max|stacked - alone| {err:E2} of max {max:E2}");
                Assert.True(max > 0 && err <= tol * max, $"{single.Name} on {be.Name}: {err:E3} > {tol} x {max:E3}");
            }
        }
    }

    [Fact]
    public void TheCheckPassesFp32AccumulationAndFailsTheBf16Detour()
    {
        var kind = Kind("3072->3x3072");
        using var f64 = CpuBackend.F64();
        using var emulation = new Bf16EmulationBackend();
        var reference = Downs(CudaParity.RunLoraModule(f64, kind, Identities, CudaParity.LoraFactors.ExactDownInputs)).ToArray();
        var firstGroup = Downs(CudaParity.RunLoraModule(f64, kind, [0, 0], CudaParity.LoraFactors.ExactDownInputs)).ToArray();
        var emulated = Downs(CudaParity.RunLoraModule(emulation, kind, Identities, CudaParity.LoraFactors.ExactDownInputs)).ToArray();
        for (int t = 0; t < reference.Length; t++)
        {
            double[] r = reference[t].Grad;
            double allowed = CudaParity.LoraDownGradientTolerance * MaxAbs(r);
            double now = MaxDiff(emulated[t].Grad, r);
            // The old path: each group's slice of the stacked fp32 gradient went through a bf16 Narrow, then was added.
            double[] g1 = firstGroup[t].Grad;
            double[] old = [.. r.Select((v, i) => (double)HalfPrecision.RoundToBFloat16((float)g1[i]) + HalfPrecision.RoundToBFloat16((float)(v - g1[i])))];
            double before = MaxDiff(old, r);
            output.WriteLine($"{reference[t].Name}: fp32 path {now:E2}, old bf16 path {before:E2}, allowed {allowed:E2}");
            Assert.True(now <= allowed, $"fp32 accumulation: {now:E3} > {allowed:E3}");
            Assert.True(before > 20 * allowed, $"the bf16 detour ({before:E3}) would pass a tolerance of {allowed:E3}");
        }
    }
}
