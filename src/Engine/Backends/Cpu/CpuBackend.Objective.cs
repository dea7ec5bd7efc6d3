namespace MetaLoraNative.Engine.Backends.Cpu;

// Objective: the MSE loss, sums of squares (gradient norms) and AdamW, and the same with the step's scalars kept in
// "device" memory (a StepScalars: here an array the host could read at once, but only ReadBack copies it out, so the
// step runs the CUDA backend's sequence and the counters see what a GPU would do).
public sealed partial class CpuBackend<T>
{
    /// <summary>mean((pred − target)²) in fp64; dPred = 2(pred − target)/N.</summary>
    public double MseLoss(Tensor pred, Tensor target, out Tensor dPred)
    {
        Counted.Sync();
        return Mse(pred, target, out dPred);
    }

    public void MseLoss(Tensor pred, Tensor target, out Tensor dPred, StepScalars scalars)
    {
        var s = Scalars(scalars, "MseLoss").Slots;
        s[CpuStepScalars.Loss] = Mse(pred, target, out dPred);
        Counted.Launch();   // the GPU's mse_finish, which forms the mean from the partials on the device
    }

    double Mse(Tensor pred, Tensor target, out Tensor dPred)
    {
        const string op = "MseLoss";
        Counted.Launch();
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
        Counted.Launch();
        Counted.Sync();
        var s = Cpu(t, "SumSquares", "t").Span;
        return Dot(s, s);
    }

    /// <summary>Σ x² over the tensors in order, each tensor's sum in fp64 as <see cref="SumSquares(Tensor)"/> forms it.</summary>
    public double SumSquares(IReadOnlyList<Tensor> tensors)
    {
        Counted.Sync();
        return SumSquaresOf(tensors);
    }

    double SumSquaresOf(IReadOnlyList<Tensor> tensors)
    {
        double sum = 0;
        foreach (var t in tensors)
        {
            Counted.Launch();
            var s = Cpu(t, "SumSquares", "t").Span;
            sum += Dot(s, s);
        }
        return sum;
    }

    public void ClipScale(IReadOnlyList<Tensor> grads, float maxNorm, StepScalars scalars)
    {
        var s = Scalars(scalars, "ClipScale").Slots;
        double sum = SumSquaresOf(grads), norm = Math.Sqrt(sum);
        Counted.Launch();   // the GPU's one-block finish: norm, scale and the finite check
        s[CpuStepScalars.SumSquares] = sum;
        s[CpuStepScalars.Scale] = maxNorm > 0 && norm > maxNorm ? (float)(maxNorm / norm) : 1f;
        s[CpuStepScalars.Applied] = double.IsFinite(s[CpuStepScalars.Loss]) && double.IsFinite(norm) ? 1 : 0;
    }

    /// <summary>Each entry as the single-tensor AdamW updates it (the reference), with the scale read from the scalars.</summary>
    public void AdamW(IReadOnlyList<AdamWTensors> tensors, in AdamWStep step, StepScalars scalars)
    {
        var s = Scalars(scalars, "AdamW").Slots;
        Counted.Launch();
        if (s[CpuStepScalars.Applied] == 0) return;
        var hyper = step with { GradScale = (float)s[CpuStepScalars.Scale] };
        foreach (var t in tensors) Update(t.Param, t.Grad, t.M, t.V, hyper with { Step = t.Step });
    }

    public StepScalars NewStepScalars() => new CpuStepScalars(this);

    public void ReadBack(StepScalars scalars)
    {
        var s = Scalars(scalars, "ReadBack");
        Counted.ReadBack();
        s.Copy = new StepValues(s.Slots[CpuStepScalars.Loss], s.Slots[CpuStepScalars.SumSquares], (float)s.Slots[CpuStepScalars.Scale],
                                s.Slots[CpuStepScalars.Applied] != 0);
    }

    CpuStepScalars Scalars(StepScalars s, string op) =>
        s as CpuStepScalars is { } c && ReferenceEquals(c.Owner, this) ? c
            : throw new ArgumentException($"{op}: the step scalars {s} do not belong to {Name}");

    /// <summary>The "device" slots (fp64) and the host copy the last ReadBack made.</summary>
    sealed class CpuStepScalars(CpuBackend<T> owner) : StepScalars
    {
        public const int Loss = 0, SumSquares = 1, Scale = 2, Applied = 3;
        public CpuBackend<T> Owner { get; } = owner;
        public double[] Slots { get; } = [double.NaN, double.NaN, 1, 0];
        public StepValues? Copy { get; set; }

        public override StepValues Read()
        {
            Owner.Counted.Wait();
            return Copy ?? throw new InvalidOperationException("step scalars read before any ReadBack");
        }

        public override string ToString() => $"{Owner.Name} step scalars";
    }

    /// <summary>
    /// One AdamW step, per element in fp64, in this order:
    ///   g = grad·GradScale; m = b1·m + (1 − b1)·g; v = b2·v + (1 − b2)·g²;
    ///   m̂ = m/(1 − b1^t); v̂ = v/(1 − b2^t);
    ///   p = p − lr·(m̂/(√v̂ + eps) + wd·p)   (decay uses the old p: same as PyTorch's decay-then-step).
    /// </summary>
    public void AdamW(Tensor param, Tensor grad, Tensor m, Tensor v, in AdamWStep step)
    {
        Counted.Launch();
        Update(param, grad, m, v, step);
    }

    void Update(Tensor param, Tensor grad, Tensor m, Tensor v, in AdamWStep step)
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
