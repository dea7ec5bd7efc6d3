namespace MetaLoraNative.Engine.Backends.Cpu;

// Objective: the MSE loss, sums of squares (gradient norms) and AdamW.
public sealed partial class CpuBackend<T>
{
    /// <summary>mean((pred − target)²) in fp64; dPred = 2(pred − target)/N.</summary>
    public double MseLoss(Tensor pred, Tensor target, out Tensor dPred)
    {
        const string op = "MseLoss";
        var P = Cpu(pred, op, "pred");
        var Tg = Cpu(target, op, "target");
        Shapes.SameShape(pred, target, $"{op} (pred vs target)");
        long n = pred.Length;
        var g = New(pred.Shape);
        double sum = 0;
        for (int i = 0; i < n; i++)
        {
            double d = Wide(P.Data[P.Offset + i]) - Wide(Tg.Data[Tg.Offset + i]);
            sum += d * d;
            g.Data[i] = Store(2 * d / n);
        }
        dPred = g;
        return n == 0 ? 0 : sum / n;
    }

    /// <summary>Σ x² in fp64.</summary>
    public double SumSquares(Tensor t)
    {
        var s = Cpu(t, "SumSquares", "t").Span;
        return Dot(s, s);
    }

    /// <summary>
    /// One AdamW step, per element in fp64, in this order:
    ///   g = grad·GradScale; m = b1·m + (1 − b1)·g; v = b2·v + (1 − b2)·g²;
    ///   m̂ = m/(1 − b1^t); v̂ = v/(1 − b2^t);
    ///   p = p − lr·(m̂/(√v̂ + eps) + wd·p)   (decay uses the old p: same as PyTorch's decay-then-step).
    /// </summary>
    public void AdamW(Tensor param, Tensor grad, Tensor m, Tensor v, in AdamWStep step)
    {
        const string op = "AdamW";
        var P = Cpu(param, op, "param");
        var G = Cpu(grad, op, "grad");
        var M = Cpu(m, op, "m");
        var V = Cpu(v, op, "v");
        Shapes.SameShape(param, grad, $"{op} (param vs grad)");
        Shapes.SameShape(param, m, $"{op} (param vs m)");
        Shapes.SameShape(param, v, $"{op} (param vs v)");
        if (step.Step < 1) throw new ArgumentException($"{op}: step must be 1-based, got {step.Step}");
        double b1 = step.Beta1, b2 = step.Beta2, lr = step.LearningRate, eps = step.Epsilon,
            wd = step.WeightDecay, gs = step.GradScale;
        double c1 = 1 - Math.Pow(b1, step.Step), c2 = 1 - Math.Pow(b2, step.Step);
        ForChunks((int)param.Length, 16, (i0, i1) =>
        {
            for (int i = i0; i < i1; i++)
            {
                double g = Wide(G.Data[G.Offset + i]) * gs;
                double mi = b1 * Wide(M.Data[M.Offset + i]) + (1 - b1) * g;
                double vi = b2 * Wide(V.Data[V.Offset + i]) + (1 - b2) * g * g;
                double p = Wide(P.Data[P.Offset + i]);
                p -= lr * (mi / c1 / (Math.Sqrt(vi / c2) + eps) + wd * p);
                M.Data[M.Offset + i] = Store(mi);
                V.Data[V.Offset + i] = Store(vi);
                P.Data[P.Offset + i] = Store(p);
            }
        });
    }
}
