namespace MetaLoraNative.Engine.Backends.Cpu;

// Attention: rotary position embedding (BFL's rope/apply_rope) and softmax attention, forward and backward.
public sealed partial class CpuBackend<T>
{
    /// <summary>
    /// ids (B, L, n_axes) → pe (B, L, D/2, 2) with D = Σ axesDim. Axis i owns axesDim[i]/2 consecutive pairs;
    /// pair k of axis i has omega = theta^(−2k/axesDim[i]) and angle = ids[.., i]·omega; pe holds (cos, sin).
    /// </summary>
    public Tensor RopeTable(Tensor ids, int[] axesDim, float theta)
    {
        Counted.Launch();
        const string op = "RopeTable";
        var I = Cpu(ids, op, "ids");
        ArgumentNullException.ThrowIfNull(axesDim);
        if (ids.Rank != 3 || ids.Shape[2] != axesDim.Length)
            throw new ArgumentException($"{op}: ids {S(ids)} must be (B, L, {axesDim.Length}) for axesDim [{string.Join(", ", axesDim)}]");
        foreach (int a in axesDim)
            if (a <= 0 || a % 2 != 0)
                throw new ArgumentException($"{op}: every axis dim must be even and positive, got [{string.Join(", ", axesDim)}]");
        int B = ids.Shape[0], L = ids.Shape[1], N = axesDim.Length, P = axesDim.Sum() / 2;
        // omega per pair and the axis that owns it, computed once in fp64.
        var omega = new double[P];
        var owner = new int[P];
        for (int i = 0, p = 0; i < N; i++)
            for (int k = 0; k < axesDim[i] / 2; k++, p++)
            {
                omega[p] = Math.Pow(theta, -2.0 * k / axesDim[i]);
                owner[p] = i;
            }
        var pe = New(B, L, P, 2);
        for (int r = 0; r < B * L; r++)
            for (int p = 0; p < P; p++)
            {
                double angle = Wide(I.Data[I.Offset + r * N + owner[p]]) * omega[p];
                pe.Data[(r * P + p) * 2] = Store(Math.Cos(angle));
                pe.Data[(r * P + p) * 2 + 1] = Store(Math.Sin(angle));
            }
        return pe;
    }

    /// <summary>(x0, x1) → (cos·x0 − sin·x1, sin·x0 + cos·x1) per adjacent pair. x (B, H, L, D), pe (B or 1, L, D/2, 2).</summary>
    public Tensor ApplyRope(Tensor x, Tensor pe) => Rotate(x, pe, "ApplyRope", +1);

    /// <summary>The transpose rotation: (c·g0 + s·g1, −s·g0 + c·g1).</summary>
    public Tensor ApplyRopeBackward(Tensor dy, Tensor pe) => Rotate(dy, pe, "ApplyRopeBackward", -1);

    private CpuTensor<T> Rotate(Tensor x, Tensor pe, string op, int sign)
    {
        Counted.Launch();
        var X = Cpu(x, op, "x");
        var Pe = Cpu(pe, op, "pe");
        if (x.Rank != 4 || x.Shape[3] % 2 != 0 || pe.Rank != 4 || pe.Shape[1] != x.Shape[2] ||
            pe.Shape[2] != x.Shape[3] / 2 || pe.Shape[3] != 2 || (pe.Shape[0] != x.Shape[0] && pe.Shape[0] != 1))
            throw new ArgumentException($"{op}: x {S(x)} must be (B, H, L, D) and pe {S(pe)} (B, L, D/2, 2)");
        int B = x.Shape[0], H = x.Shape[1], L = x.Shape[2], D2 = x.Shape[3] / 2, Bp = pe.Shape[0];
        var y = New(x.Shape);
        ForChunks(B * H * L, 6L * D2, (r0, r1) =>
        {
            for (int r = r0; r < r1; r++)
            {
                int b = r / (H * L), l = r % L;
                int po = Pe.Offset + ((Bp == 1 ? 0 : b) * L + l) * D2 * 2;
                int xo = X.Offset + r * D2 * 2, yo = r * D2 * 2;
                for (int p = 0; p < D2; p++)
                {
                    double c = Wide(Pe.Data[po + 2 * p]), s = sign * Wide(Pe.Data[po + 2 * p + 1]);
                    double x0 = Wide(X.Data[xo + 2 * p]), x1 = Wide(X.Data[xo + 2 * p + 1]);
                    y.Data[yo + 2 * p] = Store(c * x0 - s * x1);
                    y.Data[yo + 2 * p + 1] = Store(s * x0 + c * x1);
                }
            }
        });
        return y;
    }

    /// <summary>
    /// out = softmax(q·kᵀ/√D)·v. q (B, H, Lq, D), k and v (B, H, Lk, D) → out (B, Lq, H·D); lse (B, H, Lq).
    /// One work item per query row: scores in fp64, max-subtracted exponentials, fp64 row accumulator.
    /// </summary>
    public Tensor Attention(Tensor q, Tensor k, Tensor v, out Tensor lse)
    {
        Counted.Launch();
        const string op = "Attention";
        var Q = Cpu(q, op, "q");
        var K = Cpu(k, op, "k");
        var V = Cpu(v, op, "v");
        CheckAttention(op, q, k, v);
        int B = q.Shape[0], H = q.Shape[1], Lq = q.Shape[2], D = q.Shape[3], Lk = k.Shape[2];
        double scale = 1 / Math.Sqrt(D);
        var o = New(B, Lq, H * D);
        var ls = New(B, H, Lq);
        ForChunks(B * H * Lq, 2L * Lk * D, (r0, r1) =>
        {
            var s = new double[Lk];
            var acc = new double[D];
            for (int r = r0; r < r1; r++)
            {
                int bh = r / Lq, i = r % Lq, b = bh / H, h = bh % H;
                var qi = new ReadOnlySpan<T>(Q.Data, Q.Offset + r * D, D);
                int kBase = K.Offset + bh * Lk * D, vBase = V.Offset + bh * Lk * D;
                double max = double.NegativeInfinity;
                for (int j = 0; j < Lk; j++)
                {
                    s[j] = scale * Dot(qi, new ReadOnlySpan<T>(K.Data, kBase + j * D, D));
                    if (s[j] > max) max = s[j];
                }
                double sum = 0;
                Array.Clear(acc);
                for (int j = 0; j < Lk; j++)
                {
                    double p = Math.Exp(s[j] - max);
                    sum += p;
                    Axpy(acc, p, new ReadOnlySpan<T>(V.Data, vBase + j * D, D));
                }
                int oo = (b * Lq + i) * H * D + h * D;
                for (int d = 0; d < D; d++) o.Data[oo + d] = Store(acc[d] / sum);
                ls.Data[r] = Store(max + Math.Log(sum));
            }
        });
        lse = ls;
        return o;
    }

    /// <summary>
    /// Flash-attention backward from the saved lse: P = exp(S − lse), Drow = rowsum(dO ∘ O),
    /// dV = Pᵀ·dO, dS = P ∘ (dO·Vᵀ − Drow), dQ = dS·K/√D, dK = dSᵀ·Q/√D.
    /// One work item per (b, h) pair, so dK and dV accumulate without sharing.
    /// </summary>
    public (Tensor Dq, Tensor Dk, Tensor Dv) AttentionBackward(
        Tensor dOut, Tensor q, Tensor k, Tensor v, Tensor output, Tensor lse)
    {
        Counted.Launch();
        const string op = "AttentionBackward";
        var G = Cpu(dOut, op, "dOut");
        var Q = Cpu(q, op, "q");
        var K = Cpu(k, op, "k");
        var V = Cpu(v, op, "v");
        var O = Cpu(output, op, "output");
        var Ls = Cpu(lse, op, "lse");
        CheckAttention(op, q, k, v);
        int B = q.Shape[0], H = q.Shape[1], Lq = q.Shape[2], D = q.Shape[3], Lk = k.Shape[2];
        if (dOut.Length != (long)B * Lq * H * D || dOut.Cols != H * D)
            throw new ArgumentException($"{op}: dOut {S(dOut)} must be (B, Lq, H·D) = ({B}, {Lq}, {H * D})");
        Shapes.SameShape(dOut, output, $"{op} (dOut vs output)");
        if (lse.Length != (long)B * H * Lq)
            throw new ArgumentException($"{op}: lse {S(lse)} must be (B, H, Lq) = ({B}, {H}, {Lq})");
        double scale = 1 / Math.Sqrt(D);
        var dq = New(q.Shape);
        var dk = New(k.Shape);
        var dv = New(v.Shape);
        ForChunks(B * H, 4L * Lq * Lk * D, (p0, p1) =>
        {
            var dkAcc = new double[Lk * D];
            var dvAcc = new double[Lk * D];
            var dqAcc = new double[D];
            for (int bh = p0; bh < p1; bh++)
            {
                int b = bh / H, h = bh % H;
                Array.Clear(dkAcc);
                Array.Clear(dvAcc);
                int kBase = K.Offset + bh * Lk * D, vBase = V.Offset + bh * Lk * D;
                for (int i = 0; i < Lq; i++)
                {
                    int oo = (b * Lq + i) * H * D + h * D;
                    var gi = new ReadOnlySpan<T>(G.Data, G.Offset + oo, D);
                    var qi = new ReadOnlySpan<T>(Q.Data, Q.Offset + (bh * Lq + i) * D, D);
                    double drow = Dot(gi, new ReadOnlySpan<T>(O.Data, O.Offset + oo, D));
                    double l = Wide(Ls.Data[Ls.Offset + bh * Lq + i]);
                    Array.Clear(dqAcc);
                    for (int j = 0; j < Lk; j++)
                    {
                        var kj = new ReadOnlySpan<T>(K.Data, kBase + j * D, D);
                        var vj = new ReadOnlySpan<T>(V.Data, vBase + j * D, D);
                        double p = Math.Exp(scale * Dot(qi, kj) - l);
                        double ds = p * (Dot(gi, vj) - drow) * scale;
                        Axpy(dvAcc.AsSpan(j * D, D), p, gi);
                        Axpy(dqAcc, ds, kj);
                        Axpy(dkAcc.AsSpan(j * D, D), ds, qi);
                    }
                    for (int d = 0; d < D; d++) dq.Data[(bh * Lq + i) * D + d] = Store(dqAcc[d]);
                }
                for (int e = 0; e < Lk * D; e++)
                {
                    dk.Data[bh * Lk * D + e] = Store(dkAcc[e]);
                    dv.Data[bh * Lk * D + e] = Store(dvAcc[e]);
                }
            }
        });
        return (dq, dk, dv);
    }

    private static void CheckAttention(string op, Tensor q, Tensor k, Tensor v)
    {
        if (q.Rank != 4 || k.Rank != 4 || q.Shape[0] != k.Shape[0] || q.Shape[1] != k.Shape[1] ||
            q.Shape[3] != k.Shape[3] || !k.Shape.AsSpan().SequenceEqual(v.Shape))
            throw new ArgumentException(
                $"{op}: q {S(q)}, k {S(k)}, v {S(v)} must be (B, H, Lq, D), (B, H, Lk, D), (B, H, Lk, D)");
    }
}
