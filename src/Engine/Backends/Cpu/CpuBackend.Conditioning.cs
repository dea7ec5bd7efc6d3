namespace MetaLoraNative.Engine.Backends.Cpu;

// Timestep embedding, gated residual, the MSE objective, gradient norms and AdamW.
public sealed partial class CpuBackend<T>
{
    /// <summary>
    /// t (B) → (B, dim) = [cos(args), sin(args)] (cos first, as BFL's timestep_embedding), with
    /// args_k = timeFactor·t·exp(−ln(maxPeriod)·k/half), k &lt; half = dim/2; an odd dim gets a zero last column.
    /// </summary>
    public Tensor TimestepEmbedding(Tensor t, int dim, float timeFactor = 1000f, float maxPeriod = 10000f)
    {
        const string op = "TimestepEmbedding";
        var Tt = Cpu(t, op, "t");
        if (t.Rank != 1 || dim <= 0) throw new ArgumentException($"{op}: t {S(t)} must be (B) and dim > 0 (got {dim})");
        int B = t.Shape[0], half = dim / 2;
        var freqs = Frequencies(half, maxPeriod);
        var y = New(B, dim); // the odd column stays zero
        for (int b = 0; b < B; b++)
        {
            double tb = timeFactor * Wide(Tt.Data[Tt.Offset + b]);
            for (int k = 0; k < half; k++)
            {
                double a = tb * freqs[k];
                y.Data[b * dim + k] = Store(Math.Cos(a));
                y.Data[b * dim + half + k] = Store(Math.Sin(a));
            }
        }
        return y;
    }

    /// <summary>dt[b] = timeFactor · Σ_k f_k · (−sin(a_k)·dy_cos,k + cos(a_k)·dy_sin,k). dy (B, dim) → (B).</summary>
    public Tensor TimestepEmbeddingBackward(Tensor t, Tensor dy, float timeFactor = 1000f, float maxPeriod = 10000f)
    {
        const string op = "TimestepEmbeddingBackward";
        var Tt = Cpu(t, op, "t");
        var G = Cpu(dy, op, "dy");
        if (t.Rank != 1 || dy.Rank != 2 || dy.Shape[0] != t.Shape[0])
            throw new ArgumentException($"{op}: t {S(t)} must be (B) and dy {S(dy)} (B, dim)");
        int B = t.Shape[0], dim = dy.Shape[1], half = dim / 2;
        var freqs = Frequencies(half, maxPeriod);
        var dt = New(B);
        for (int b = 0; b < B; b++)
        {
            double tb = timeFactor * Wide(Tt.Data[Tt.Offset + b]), s = 0;
            int go = G.Offset + b * dim;
            for (int k = 0; k < half; k++)
            {
                double a = tb * freqs[k];
                s += freqs[k] * (-Math.Sin(a) * Wide(G.Data[go + k]) + Math.Cos(a) * Wide(G.Data[go + half + k]));
            }
            dt.Data[b] = Store(timeFactor * s);
        }
        return dt;
    }

    private static double[] Frequencies(int half, double maxPeriod)
    {
        var f = new double[half];
        for (int k = 0; k < half; k++) f[k] = Math.Exp(-Math.Log(maxPeriod) * k / half);
        return f;
    }

    /// <summary>out = x + gate[b] · y. x, y (B, L, C); gate (B, C) (or any B·C shape with last dim C).</summary>
    public Tensor GatedResidual(Tensor x, Tensor gate, Tensor y)
    {
        const string op = "GatedResidual";
        var X = Cpu(x, op, "x");
        var Gt = Cpu(gate, op, "gate");
        var Y = Cpu(y, op, "y");
        if (x.Rank != 3) throw new ArgumentException($"{op}: x {S(x)} must be (B, L, C)");
        Shapes.SameShape(x, y, $"{op} (x vs y)");
        CheckModulation(op, "gate", gate, x);
        int L = x.Shape[1], C = x.Shape[2];
        var o = New(x.Shape);
        ForChunks((int)x.Rows, C, (r0, r1) =>
        {
            for (int r = r0; r < r1; r++)
            {
                int b = r / L;
                for (int c = 0; c < C; c++)
                    o.Data[r * C + c] = Store(Wide(X.Data[X.Offset + r * C + c]) +
                                          Wide(Gt.Data[Gt.Offset + b * C + c]) * Wide(Y.Data[Y.Offset + r * C + c]));
            }
        });
        return o;
    }

    /// <summary>dy = gate·dOut (B, L, C); dgate = Σ_L dOut·y, shaped like gate. dx is dOut itself.</summary>
    public (Tensor Dy, Tensor DGate) GatedResidualBackward(Tensor dOut, Tensor gate, Tensor y)
    {
        const string op = "GatedResidualBackward";
        var G = Cpu(dOut, op, "dOut");
        var Gt = Cpu(gate, op, "gate");
        var Y = Cpu(y, op, "y");
        if (y.Rank != 3) throw new ArgumentException($"{op}: y {S(y)} must be (B, L, C)");
        Shapes.SameShape(dOut, y, $"{op} (dOut vs y)");
        CheckModulation(op, "gate", gate, y);
        int B = y.Shape[0], L = y.Shape[1], C = y.Shape[2];
        var dy = New(y.Shape);
        var dg = New(gate.Shape);
        // One work item per (b, c): walks L with stride C, writes dy and one dgate element.
        ForChunks(B * C, 2L * L, (w0, w1) =>
        {
            for (int w = w0; w < w1; w++)
            {
                int b = w / C, c = w % C;
                double g = Wide(Gt.Data[Gt.Offset + w]), s = 0;
                for (int l = 0; l < L; l++)
                {
                    int e = (b * L + l) * C + c;
                    double d = Wide(G.Data[G.Offset + e]);
                    dy.Data[e] = Store(g * d);
                    s += d * Wide(Y.Data[Y.Offset + e]);
                }
                dg.Data[w] = Store(s);
            }
        });
        return (dy, dg);
    }

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
