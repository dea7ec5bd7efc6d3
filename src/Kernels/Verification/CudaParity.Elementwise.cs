using MetaLoraNative.Engine;

namespace MetaLoraNative.Kernels.Verification;

// Elementwise: axpy and scale in both precisions, the activations.
public static partial class CudaParity
{
    static IEnumerable<ParityCheck> ElementwiseChecks() =>
    [
        new("elementwise", "axpy and scale on an fp32 master, axpy into bf16", Elementwise),
        new("activations", "SiLU, tanh-GELU and its backward", Activations),
    ];

    static void Elementwise(ParityContext p)
    {
        float[] a = Rand(1000, 1), b = Rand(1000, 2);
        using var gacc = p.Gpu.Upload(a, [1000], Precision.Master);
        using var cacc = p.Cpu.Upload(a, [1000], Precision.Master);
        var (gx, cx) = p.Both(b, 1000);
        p.Gpu.AddInPlace(gacc, gx, 0.3f);
        p.Cpu.AddInPlace(cacc, cx, 0.3f);
        p.Gpu.ScaleInPlace(gacc, -1.5f);
        p.Cpu.ScaleInPlace(cacc, -1.5f);
        p.F32("axpy+scale fp32", gacc, cacc);

        p.Gpu.AddInPlace(gx, gx, 1f);   // bf16 accumulator
        p.Cpu.AddInPlace(cx, cx, 1f);
        p.Bf16("axpy bf16", gx, cx);
    }

    static void Activations(ParityContext p)
    {
        var (gx, cx) = p.Both(Rand(3 * 1031, 1, 4f), 3, 1031);
        var (gdy, cdy) = p.Both(Rand(3 * 1031, 2), 3, 1031);
        foreach (var (name, gpu, cpu) in new (string, Func<Tensor>, Func<Tensor>)[]
                 {
                     ("silu", () => p.Gpu.Silu(gx), () => p.Cpu.Silu(cx)),
                     ("gelu", () => p.Gpu.GeluTanh(gx), () => p.Cpu.GeluTanh(cx)),
                     ("gelu backward", () => p.Gpu.GeluTanhBackward(gx, gdy), () => p.Cpu.GeluTanhBackward(cx, cdy)),
                 })
        {
            using var gf = gpu();
            using var cf = cpu();
            p.Bf16(name, gf, cf);
        }
    }
}
