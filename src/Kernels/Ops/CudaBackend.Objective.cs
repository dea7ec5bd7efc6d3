using System.Runtime.InteropServices;
using MetaLoraNative.Engine;

namespace MetaLoraNative.Kernels;

// Objective (objective.cu): the MSE loss, sums of squares (gradient norms) and AdamW.
public sealed partial class CudaBackend
{
    const int ReduceBlocks = 256;   // fixed grid of the deterministic reductions: the host adds this many partials

    /// <summary>Mirrors AdamWParams in objective.cu.</summary>
    [StructLayout(LayoutKind.Sequential)]
    struct AdamWParams
    {
        public ulong Param, Grad, M, V;
        public long N;
        public int DtGrad;
        public float Lr, Beta1, Beta2, Eps, WeightDecay, GradScale, BiasCorrection1, BiasCorrection2;
    }

    public double MseLoss(Tensor pred, Tensor target, out Tensor dPred)
    {
        using var _ = Op("mse_loss");
        var p = T(pred, "pred");
        var t = T(target, "target");
        Shapes.Require(p.Length == t.Length && p.Length > 0, $"mse_loss: pred {p}, target {t}");
        var d = Alloc(p.Shape);
        using var partials = Alloc([ReduceBlocks * 2], Precision.Master);   // 256 doubles
        Launch("objective.cu", "mse_loss", (ReduceBlocks, 1, 1), (Block, 1, 1), 0, partials.Ptr, d.Ptr, p.Ptr, p.Dt, t.Ptr, t.Dt, p.Length);
        dPred = d;
        return SumPartials(partials) / p.Length;
    }

    public double SumSquares(Tensor t)
    {
        using var _ = Op("sum_squares");
        var c = T(t);
        if (c.Length == 0) return 0;
        using var partials = Alloc([ReduceBlocks * 2], Precision.Master);
        Launch("objective.cu", "sum_squares", (ReduceBlocks, 1, 1), (Block, 1, 1), 0, partials.Ptr, c.Ptr, c.Dt, c.Length);
        return SumPartials(partials);
    }

    /// <summary>
    /// One reduction per tensor into its own slice of one partials buffer, then a single read-back: the global
    /// gradient norm of ~1,000 LoRA factors costs one synchronisation instead of one per factor.
    /// </summary>
    public double SumSquares(IReadOnlyList<Tensor> tensors)
    {
        using var _ = Op("sum_squares_many");
        var list = tensors.Where(t => t.Length > 0).Select(t => T(t)).ToArray();
        if (list.Length == 0) return 0;
        using var partials = Alloc([ReduceBlocks * 2 * list.Length], Precision.Master);
        for (int i = 0; i < list.Length; i++)
            Launch("objective.cu", "sum_squares", (ReduceBlocks, 1, 1), (Block, 1, 1), 0,
                   partials.Ptr + (ulong)(i * ReduceBlocks * sizeof(double)), list[i].Ptr, list[i].Dt, list[i].Length);
        float[] raw = Download(partials);   // fp32 view of the doubles: reinterpret, not convert
        var doubles = new double[ReduceBlocks * list.Length];
        Buffer.BlockCopy(raw, 0, doubles, 0, doubles.Length * sizeof(double));
        double s = 0;
        foreach (double v in doubles) s += v;   // tensor by tensor, block order: deterministic
        return s;
    }

    /// <summary>Adds the blocks' fp64 partials in block order (deterministic).</summary>
    double SumPartials(CudaTensor partials)
    {
        float[] raw = Download(partials);   // fp32 view of 256 doubles: reinterpret, not convert
        var doubles = new double[ReduceBlocks];
        Buffer.BlockCopy(raw, 0, doubles, 0, ReduceBlocks * sizeof(double));
        double s = 0;
        foreach (double v in doubles) s += v;
        return s;
    }

    public void AdamW(Tensor param, Tensor grad, Tensor m, Tensor v, in AdamWStep step)
    {
        using var _ = Op("adamw");
        var p = T(param, "param");
        var g = T(grad, "grad");
        var cm = T(m, "m");
        var cv = T(v, "v");
        Shapes.Require(p.Precision == Precision.Master && cm.Precision == Precision.Master && cv.Precision == Precision.Master,
            "adamw: param, m and v must be Master (fp32)");
        Shapes.Require(g.Length == p.Length && cm.Length == p.Length && cv.Length == p.Length, $"adamw: param {p}, grad {g}, m {cm}, v {cv}");
        Shapes.Require(step.Step >= 1, "adamw: step is 1-based");
        var a = new AdamWParams
        {
            Param = p.Ptr, Grad = g.Ptr, M = cm.Ptr, V = cv.Ptr, N = p.Length, DtGrad = g.Dt,
            Lr = step.LearningRate, Beta1 = step.Beta1, Beta2 = step.Beta2, Eps = step.Epsilon, WeightDecay = step.WeightDecay,
            GradScale = step.GradScale,
            BiasCorrection1 = (float)(1 - Math.Pow(step.Beta1, step.Step)),
            BiasCorrection2 = (float)(1 - Math.Pow(step.Beta2, step.Step)),
        };
        if (p.Length > 0) LaunchParams("objective.cu", "adamw_step", (Grid1D(p.Length), 1, 1), (Block, 1, 1), a);
    }
}
