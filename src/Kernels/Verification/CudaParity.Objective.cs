using MetaLoraNative.Engine;

namespace MetaLoraNative.Kernels.Verification;

// Objective: the MSE loss and its gradient, sums of squares, AdamW.
public static partial class CudaParity
{
    static IEnumerable<ParityCheck> ObjectiveChecks() =>
    [
        new("mse", "MSE loss, its gradient, sum of squares", Mse),
        new("adamw", "five AdamW steps of an fp32 master", AdamW),
    ];

    static void Mse(ParityContext p)
    {
        var (gp, cp) = p.Both(Rand(3 * 4099, 1), 3, 4099);
        var (gt, ct) = p.Both(Rand(3 * 4099, 2), 3, 4099);
        double gl = p.Gpu.MseLoss(gp, gt, out var gd);
        double cl = p.Cpu.MseLoss(cp, ct, out var cd);
        p.Scalar("mse loss", gl, cl, cl * 1e-7);   // fp64 sums of fp32 differences of the same bf16 inputs
        p.Bf16("mse dpred", gd, cd);
        double css = p.Cpu.SumSquares(cp);
        p.Scalar("sum of squares bf16", p.Gpu.SumSquares(gp), css, 1e-9 * css);
        float[] g = Rand(5000, 3);
        using var gm = p.Gpu.Upload(g, [5000], Precision.Master);
        double exact = g.Sum(v => (double)v * v);
        p.Scalar("sum of squares fp32", p.Gpu.SumSquares(gm), exact, 1e-9 * exact);
        // the many-tensor form (one read-back) must agree with the sum of single reductions
        p.Scalar("sum of squares, list", p.Gpu.SumSquares([gp, gm, gp]), 2 * css + exact, 1e-9 * (2 * css + exact));
    }

    static void AdamW(ParityContext p)
    {
        const int n = 3001;
        float[] w = Rand(n, 1), grad = Rand(n, 2, 0.1f);
        using var gw = p.Gpu.Upload(w, [n], Precision.Master);
        using var cw = p.Cpu.Upload(w, [n], Precision.Master);
        using var gg = p.Gpu.Upload(grad, [n], Precision.Master);
        using var cg = p.Cpu.Upload(grad, [n], Precision.Master);
        using var gm = p.Gpu.Zeros([n], Precision.Master);
        using var gv = p.Gpu.Zeros([n], Precision.Master);
        using var cm = p.Cpu.Zeros([n], Precision.Master);
        using var cv = p.Cpu.Zeros([n], Precision.Master);
        for (int step = 1; step <= 5; step++)
        {
            var s = new AdamWStep(step, 4e-4f, GradScale: 0.5f);
            p.Gpu.AdamW(gw, gg, gm, gv, s);
            p.Cpu.AdamW(cw, cg, cm, cv, s);
        }
        p.F32("adamw param", gw, cw, 1e-5);
        p.F32("adamw m", gm, cm, 1e-5);
        p.F32("adamw v", gv, cv, 1e-4);
    }
}
