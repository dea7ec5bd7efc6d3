namespace MetaLoraNative.Engine.Backends.Cpu;

// Conditioning: the timestep embedding and the gated residual that applies a modulation's gate.
public sealed partial class CpuBackend<T>
{
    /// <summary>
    /// t (B) → (B, dim) = [cos(args), sin(args)] (cos first, as BFL's timestep_embedding), with
    /// args_k = timeFactor·t·exp(−ln(maxPeriod)·k/half), k &lt; half = dim/2; an odd dim gets a zero last column.
    /// </summary>
    public Tensor TimestepEmbedding(Tensor t, int dim, float timeFactor = 1000f, float maxPeriod = 10000f)
    {
        Counted.Launch();
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

    private static double[] Frequencies(int half, double maxPeriod)
    {
        var f = new double[half];
        for (int k = 0; k < half; k++) f[k] = Math.Exp(-Math.Log(maxPeriod) * k / half);
        return f;
    }

    /// <summary>out = x + gate[b] · y. x, y (B, L, C); gate (B, C) (or any B·C shape with last dim C).</summary>
    public Tensor GatedResidual(Tensor x, Tensor gate, Tensor y)
    {
        Counted.Launch();
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
        Counted.Launch();
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
}
