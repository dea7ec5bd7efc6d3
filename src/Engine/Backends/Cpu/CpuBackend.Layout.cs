namespace MetaLoraNative.Engine.Backends.Cpu;

// Layout: Narrow/AddNarrow/CopyNarrow, Concat, SplitQkv/MergeQkv. Pure copies (AddNarrow adds in fp64).
// Along an axis a tensor is viewed as (outer, dim, inner): outer = product of the dims before the axis,
// inner = product of the dims after it, so a slice along the axis is `outer` contiguous runs of length·inner.
public sealed partial class CpuBackend<T>
{
    /// <summary>A copy of x restricted to [start, start+length) along axis.</summary>
    public Tensor Narrow(Tensor x, int axis, int start, int length)
    {
        Counted.Launch();
        const string op = "Narrow";
        var a = Cpu(x, op, "x");
        int ax = Shapes.Axis(axis, x.Rank, op);
        if (start < 0 || length < 0 || start + length > x.Shape[ax])
            throw new ArgumentException($"{op}: [{start}, {start + length}) is outside axis {axis} of x {S(x)}");
        var shape = (int[])x.Shape.Clone();
        shape[ax] = length;
        var y = New(shape);
        var (outer, dim, inner) = Shapes.AroundAxis(x.Shape, ax);
        long run = (long)length * inner;
        for (long o = 0; o < outer; o++)
            Array.Copy(a.Data, a.Offset + (o * dim + start) * inner, y.Data, o * run, run);
        return y;
    }

    /// <summary>dst[.., start:start+src.Dim(axis), ..] += src along axis.</summary>
    public void AddNarrow(Tensor dst, Tensor src, int axis, int start)
    {
        Counted.Launch();
        const string op = "AddNarrow";
        var (d, s, ax) = SliceOperands(op, dst, src, axis, start);
        var (outer, dim, inner) = Shapes.AroundAxis(dst.Shape, ax);
        long run = (long)src.Shape[ax] * inner;
        T[] dd = d.Data, sd = s.Data;
        int dOff = d.Offset, sOff = s.Offset;
        ForChunks((int)outer, run, (o0, o1) =>
        {
            for (long o = o0; o < o1; o++)
            {
                long db = dOff + (o * dim + start) * inner, sb = sOff + o * run;
                for (long i = 0; i < run; i++) dd[db + i] = Store(Wide(dd[db + i]) + Wide(sd[sb + i]));
            }
        });
    }

    /// <summary>dst[.., start:start+src.Dim(axis), ..] = src along axis; the rest of dst is untouched.</summary>
    public void CopyNarrow(Tensor dst, Tensor src, int axis, int start)
    {
        Counted.Launch();
        var (d, s, ax) = SliceOperands("CopyNarrow", dst, src, axis, start);
        var (outer, dim, inner) = Shapes.AroundAxis(dst.Shape, ax);
        long run = (long)src.Shape[ax] * inner;
        for (long o = 0; o < outer; o++)
            Array.Copy(s.Data, s.Offset + o * run, d.Data, d.Offset + (o * dim + start) * inner, run);
    }

    /// <summary>dst and src of a slice op, checked: src fits dst at start along axis, every other dimension equal.</summary>
    (CpuTensor<T> Dst, CpuTensor<T> Src, int Axis) SliceOperands(string op, Tensor dst, Tensor src, int axis, int start)
    {
        var d = Cpu(dst, op, "dst");
        var s = Cpu(src, op, "src");
        int ax = Shapes.Axis(axis, dst.Rank, op);
        bool ok = src.Rank == dst.Rank && start >= 0 && start + src.Shape[ax] <= dst.Shape[ax];
        for (int i = 0; ok && i < dst.Rank; i++) ok = i == ax || src.Shape[i] == dst.Shape[i];
        if (!ok)
            throw new ArgumentException($"{op}: src {S(src)} does not fit dst {S(dst)} at offset {start} along axis {axis}");
        return (d, s, ax);
    }

    /// <summary>Concatenation along axis; every other dimension must agree.</summary>
    public Tensor Concat(int axis, params Tensor[] parts)
    {
        Counted.Launch();
        const string op = "Concat";
        if (parts.Length == 0) throw new ArgumentException($"{op}: no parts");
        var first = parts[0];
        int ax = Shapes.Axis(axis, first.Rank, op);
        int total = 0;
        foreach (var p in parts)
        {
            Cpu(p, op, "parts");
            bool ok = p.Rank == first.Rank;
            for (int i = 0; ok && i < p.Rank; i++) ok = i == ax || p.Shape[i] == first.Shape[i];
            if (!ok)
                throw new ArgumentException(
                    $"{op}: shapes {string.Join(", ", parts.Select(q => S(q)))} disagree outside axis {axis}");
            total += p.Shape[ax];
        }
        var shape = (int[])first.Shape.Clone();
        shape[ax] = total;
        var y = New(shape);
        var (outer, _, inner) = Shapes.AroundAxis(shape, ax);
        long pos = 0;
        foreach (var p in parts)
        {
            var c = (CpuTensor<T>)p;
            long run = (long)p.Shape[ax] * inner;
            for (long o = 0; o < outer; o++)
                Array.Copy(c.Data, c.Offset + o * run, y.Data, o * total * inner + pos, run);
            pos += run;
        }
        return y;
    }

    /// <summary>qkv (B, L, 3·H·D) → q, k, v each (B, H, L, D): "B L (K H D) -> K B H L D".</summary>
    public (Tensor Q, Tensor K, Tensor V) SplitQkv(Tensor qkv, int heads)
    {
        Counted.Launch();
        const string op = "SplitQkv";
        var x = Cpu(qkv, op, "qkv");
        if (qkv.Rank != 3 || heads <= 0 || qkv.Shape[2] % (3 * heads) != 0)
            throw new ArgumentException($"{op}: qkv {S(qkv)} must be (B, L, 3·H·D) with H = {heads}");
        int B = qkv.Shape[0], L = qkv.Shape[1], H = heads, D = qkv.Shape[2] / (3 * heads);
        var outs = new[] { New(B, H, L, D), New(B, H, L, D), New(B, H, L, D) };
        ForChunks(B * L, 3 * H * D, (r0, r1) =>
        {
            for (int r = r0; r < r1; r++)
            {
                int b = r / L, l = r % L;
                for (int k = 0; k < 3; k++)
                for (int h = 0; h < H; h++)
                    Array.Copy(x.Data, x.Offset + (long)r * 3 * H * D + (k * H + h) * D,
                        outs[k].Data, (((long)b * H + h) * L + l) * D, D);
            }
        });
        return (outs[0], outs[1], outs[2]);
    }

    /// <summary>dq, dk, dv (B, H, L, D) → (B, L, 3·H·D); the exact inverse of <see cref="SplitQkv"/>.</summary>
    public Tensor MergeQkv(Tensor dq, Tensor dk, Tensor dv)
    {
        Counted.Launch();
        const string op = "MergeQkv";
        var parts = new[] { Cpu(dq, op, "dq"), Cpu(dk, op, "dk"), Cpu(dv, op, "dv") };
        if (dq.Rank != 4) throw new ArgumentException($"{op}: dq {S(dq)} must be (B, H, L, D)");
        Shapes.SameShape(dq, dk, $"{op} (dq vs dk)");
        Shapes.SameShape(dq, dv, $"{op} (dq vs dv)");
        int B = dq.Shape[0], H = dq.Shape[1], L = dq.Shape[2], D = dq.Shape[3];
        var y = New(B, L, 3 * H * D);
        ForChunks(B * L, 3 * H * D, (r0, r1) =>
        {
            for (int r = r0; r < r1; r++)
            {
                int b = r / L, l = r % L;
                for (int k = 0; k < 3; k++)
                for (int h = 0; h < H; h++)
                    Array.Copy(parts[k].Data, parts[k].Offset + (((long)b * H + h) * L + l) * D,
                        y.Data, (long)r * 3 * H * D + (k * H + h) * D, D);
            }
        });
        return y;
    }
}
