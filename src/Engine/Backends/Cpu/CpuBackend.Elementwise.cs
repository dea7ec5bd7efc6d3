namespace MetaLoraNative.Engine.Backends.Cpu;

// Elementwise: AddInPlace, ScaleInPlace, SiLU, and GELU (tanh) with its backward, whole or on blocks (the strided forms).
// Each element is widened to fp64, computed, and rounded once on store.
public sealed partial class CpuBackend<T>
{
    /// <summary>acc += alpha · x (same element count).</summary>
    public void AddInPlace(Tensor acc, Tensor x, float alpha = 1f)
    {
        Counted.Launch();
        var a = Cpu(acc, "AddInPlace", "acc");
        var b = Cpu(x, "AddInPlace", "x");
        if (a.Length != b.Length)
            throw new ArgumentException($"AddInPlace: element counts differ, acc {S(acc)} vs x {S(x)}");
        T[] ad = a.Data, bd = b.Data;
        int ao = a.Offset, bo = b.Offset;
        double al = alpha;
        ForChunks((int)a.Length, 1, (i0, i1) =>
        {
            for (int i = i0; i < i1; i++) ad[ao + i] = Store(Wide(ad[ao + i]) + al * Wide(bd[bo + i]));
        });
    }

    public void ScaleInPlace(Tensor t, float alpha)
    {
        Counted.Launch();
        var a = Cpu(t, "ScaleInPlace", "t");
        T[] ad = a.Data;
        int ao = a.Offset;
        double al = alpha;
        ForChunks((int)a.Length, 1, (i0, i1) =>
        {
            for (int i = i0; i < i1; i++) ad[ao + i] = Store(al * Wide(ad[ao + i]));
        });
    }

    /// <summary>silu(x) = x·σ(x) (no backward: see IBackend.Silu).</summary>
    public Tensor Silu(Tensor x) => Map(x, "Silu", v => v / (1 + Math.Exp(-v)));

    // gelu(x) = ½x(1 + tanh u), u = √(2/π)(x + 0.044715x³);
    // gelu'(x) = ½(1 + tanh u) + ½x(1 − tanh² u)·√(2/π)(1 + 3·0.044715x²).
    private const double GeluK = 0.7978845608028654; // √(2/π)
    private const double GeluC = 0.044715;

    public Tensor GeluTanh(Tensor x) => Map(x, "GeluTanh", v => 0.5 * v * (1 + Math.Tanh(GeluK * (v + GeluC * v * v * v))));

    public Tensor GeluTanhBackward(Tensor x, Tensor dy) => Map2(x, dy, "GeluTanhBackward", (v, g) => g * GeluTanhGrad(v));

    /// <summary>gelu'(v), the factor the backward multiplies dy by.</summary>
    internal static double GeluTanhGrad(double v)
    {
        double th = Math.Tanh(GeluK * (v + GeluC * v * v * v));
        return 0.5 * (1 + th) + 0.5 * v * (1 - th * th) * GeluK * (1 + 3 * GeluC * v * v);
    }

    /// <summary>y's block = gelu(x's block) (IBackend.GeluTanhSlice): row by row, each block's rows at its own stride.</summary>
    public void GeluTanhSlice(MatrixSlice x, MatrixSlice y)
    {
        const string op = "GeluTanhSlice";
        var a = Cpu(x.Tensor, op, "x");
        var o = Cpu(y.Tensor, op, "y");
        x.Check(op, "x");
        y.Check(op, "y");
        SameBlock(op, x, y, "y");
        Counted.Launch();
        T[] ad = a.Data, od = o.Data;
        ForChunks(checked((int)x.Rows), 8L * x.Columns, (r0, r1) =>
        {
            for (int r = r0; r < r1; r++)
            {
                long ai = a.Offset + x.Offset + (long)r * x.Tensor.Cols, oi = o.Offset + y.Offset + (long)r * y.Tensor.Cols;
                for (int j = 0; j < x.Columns; j++)
                {
                    double v = Wide(ad[ai + j]);
                    od[oi + j] = Store(0.5 * v * (1 + Math.Tanh(GeluK * (v + GeluC * v * v * v))));
                }
            }
        });
    }

    /// <summary>dx's block = gelu'(x's block)·dy's block (IBackend.GeluTanhBackwardSlice).</summary>
    public void GeluTanhBackwardSlice(MatrixSlice x, MatrixSlice dy, MatrixSlice dx)
    {
        const string op = "GeluTanhBackwardSlice";
        var a = Cpu(x.Tensor, op, "x");
        var g = Cpu(dy.Tensor, op, "dy");
        var o = Cpu(dx.Tensor, op, "dx");
        x.Check(op, "x");
        dy.Check(op, "dy");
        dx.Check(op, "dx");
        SameBlock(op, x, dy, "dy");
        SameBlock(op, x, dx, "dx");
        Counted.Launch();
        T[] ad = a.Data, gd = g.Data, od = o.Data;
        ForChunks(checked((int)x.Rows), 8L * x.Columns, (r0, r1) =>
        {
            for (int r = r0; r < r1; r++)
            {
                long ai = a.Offset + x.Offset + (long)r * x.Tensor.Cols, gi = g.Offset + dy.Offset + (long)r * dy.Tensor.Cols;
                long oi = o.Offset + dx.Offset + (long)r * dx.Tensor.Cols;
                for (int j = 0; j < x.Columns; j++) od[oi + j] = Store(GeluTanhGrad(Wide(ad[ai + j])) * Wide(gd[gi + j]));
            }
        });
    }

    /// <summary>Throws unless two blocks of an elementwise op have the same rows × columns.</summary>
    private static void SameBlock(string op, MatrixSlice x, MatrixSlice other, string name)
    {
        if (x.Rows != other.Rows || x.Columns != other.Columns)
            throw new ArgumentException($"{op}: {name} block ({other.Rows} × {other.Columns}, {other}) must match x's ({x.Rows} × {x.Columns}, {x})");
    }

    /// <summary>y = f(x) elementwise, same shape as x.</summary>
    private CpuTensor<T> Map(Tensor x, string op, Func<double, double> f)
    {
        Counted.Launch();
        var a = Cpu(x, op, "x");
        var y = New(x.Shape);
        T[] ad = a.Data, yd = y.Data;
        int ao = a.Offset;
        ForChunks((int)a.Length, 8, (i0, i1) =>
        {
            for (int i = i0; i < i1; i++) yd[i] = Store(f(Wide(ad[ao + i])));
        });
        return y;
    }

    /// <summary>y = f(x, dy) elementwise; x and dy must have the same shape.</summary>
    private CpuTensor<T> Map2(Tensor x, Tensor dy, string op, Func<double, double, double> f)
    {
        Counted.Launch();
        var a = Cpu(x, op, "x");
        var g = Cpu(dy, op, "dy");
        Shapes.SameShape(x, dy, $"{op} (x vs dy)");
        var y = New(x.Shape);
        T[] ad = a.Data, gd = g.Data, yd = y.Data;
        int ao = a.Offset, go = g.Offset;
        ForChunks((int)a.Length, 8, (i0, i1) =>
        {
            for (int i = i0; i < i1; i++) yd[i] = Store(f(Wide(ad[ao + i]), Wide(gd[go + i])));
        });
        return y;
    }
}
