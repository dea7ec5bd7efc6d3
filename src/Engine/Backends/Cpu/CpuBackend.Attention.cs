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

    /// <summary>
    /// The fused split-qkv + QK RMSNorm + RoPE of one stream (IBackend.QkvNormRope). One work item per (b, l) row of
    /// qkv; per head h: x = qkv[row, K·C + h·D + d] (K = 0, 1, 2 for q, k, v), r = 1/√(mean x² + eps),
    /// x̂ = x·r·w, then the pair rotation of ApplyRope with pe's row start + l. All in fp64, one rounding per store.
    /// </summary>
    public (Tensor QRstd, Tensor KRstd) QkvNormRope(MatrixSlice qkv, QkNorm norm, Tensor pe, QkvJoint joint, int start)
    {
        Counted.Launch();
        const string op = "QkvNormRope";
        var g = QkvGeometry.Of(op, qkv, norm, pe, joint, start);
        var X = Cpu(qkv.Tensor, op, "qkv");
        var Wq = Cpu(norm.QueryScale, op, "queryScale");
        var Wk = Cpu(norm.KeyScale, op, "keyScale");
        var Pe = Cpu(pe, op, "pe");
        var Q = Cpu(joint.Q, op, "q");
        var K = Cpu(joint.K, op, "k");
        var V = Cpu(joint.V, op, "v");
        int B = g.B, H = g.H, L = g.L, D = g.D, C = H * D;
        var qr = New(B, H, L);
        var kr = New(B, H, L);
        double eps = norm.Eps;
        ForChunks(B * L, 12L * C, (r0, r1) =>
        {
            for (int r = r0; r < r1; r++)
            {
                int b = r / L, l = r % L;
                int src = X.Offset + checked((int)(qkv.Offset + (long)r * qkv.Tensor.Cols));
                int po = Pe.Offset + g.PeRow(b, l) * D;
                for (int h = 0; h < H; h++)
                {
                    int dst = g.JointRow(b, h, l) * D, st = (b * H + h) * L + l;
                    qr.Data[st] = NormRope(X.Data, src + h * D, Wq, Pe.Data, po, Q, dst, D, eps);
                    kr.Data[st] = NormRope(X.Data, src + C + h * D, Wk, Pe.Data, po, K, dst, D, eps);
                    for (int d = 0; d < D; d++) V.Data[V.Offset + dst + d] = X.Data[src + 2 * C + h * D + d];
                }
            }
        });
        return (qr, kr);
    }

    /// <summary>y[dst..] = rope(x[src..]·r·w) for one head row of D; returns r.</summary>
    private static T NormRope(T[] x, int src, CpuTensor<T> w, T[] pe, int po, CpuTensor<T> y, int dst, int D, double eps)
    {
        var xr = new ReadOnlySpan<T>(x, src, D);
        double r = 1 / Math.Sqrt(Dot(xr, xr) / D + eps);
        for (int p = 0; p < D / 2; p++)
        {
            double c = Wide(pe[po + 2 * p]), s = Wide(pe[po + 2 * p + 1]);
            double x0 = Wide(xr[2 * p]) * r * Wide(w.Data[w.Offset + 2 * p]);
            double x1 = Wide(xr[2 * p + 1]) * r * Wide(w.Data[w.Offset + 2 * p + 1]);
            y.Data[y.Offset + dst + 2 * p] = Store(c * x0 - s * x1);
            y.Data[y.Offset + dst + 2 * p + 1] = Store(s * x0 + c * x1);
        }
        return Store(r);
    }

    /// <summary>
    /// Backward of <see cref="QkvNormRope"/>: per head row, u = the transpose rotation of the roped gradient, then
    /// RmsNormBackward's dx = r·(w·u − x·r²·mean(u·w·x)) with x re-read from qkv; dv copied. dQkv written with =.
    /// </summary>
    public void QkvNormRopeBackward(QkvJoint grads, int start, MatrixSlice qkv, QkNorm norm, Tensor pe, Tensor qRstd, Tensor kRstd, MatrixSlice dQkv)
    {
        Counted.Launch();
        const string op = "QkvNormRopeBackward";
        var g = QkvGeometry.Of(op, qkv, norm, pe, grads, start);
        int B = g.B, H = g.H, L = g.L, D = g.D, C = H * D;
        dQkv.Check(op, "dQkv");
        if (dQkv.Rows != qkv.Rows || dQkv.Columns != qkv.Columns)
            throw new ArgumentException($"{op}: dQkv {dQkv} must match qkv {qkv}");
        if (qRstd.Length != (long)B * H * L || kRstd.Length != (long)B * H * L)
            throw new ArgumentException($"{op}: rstd {S(qRstd)}, {S(kRstd)} must be (B, H, L) = ({B}, {H}, {L})");
        var X = Cpu(qkv.Tensor, op, "qkv");
        var Dx = Cpu(dQkv.Tensor, op, "dQkv");
        var Wq = Cpu(norm.QueryScale, op, "queryScale");
        var Wk = Cpu(norm.KeyScale, op, "keyScale");
        var Pe = Cpu(pe, op, "pe");
        var Gq = Cpu(grads.Q, op, "dq");
        var Gk = Cpu(grads.K, op, "dk");
        var Gv = Cpu(grads.V, op, "dv");
        var Rq = Cpu(qRstd, op, "qRstd");
        var Rk = Cpu(kRstd, op, "kRstd");
        ForChunks(B * L, 16L * C, (r0, r1) =>
        {
            var u = new double[D];
            for (int r = r0; r < r1; r++)
            {
                int b = r / L, l = r % L;
                int src = X.Offset + checked((int)(qkv.Offset + (long)r * qkv.Tensor.Cols));
                int dst = Dx.Offset + checked((int)(dQkv.Offset + (long)r * dQkv.Tensor.Cols));
                int po = Pe.Offset + g.PeRow(b, l) * D;
                for (int h = 0; h < H; h++)
                {
                    int gi = g.JointRow(b, h, l) * D, st = (b * H + h) * L + l;
                    NormRopeBackward(Gq, gi, X.Data, src + h * D, Wq, Wide(Rq.Data[Rq.Offset + st]), Pe.Data, po, Dx.Data, dst + h * D, u);
                    NormRopeBackward(Gk, gi, X.Data, src + C + h * D, Wk, Wide(Rk.Data[Rk.Offset + st]), Pe.Data, po, Dx.Data, dst + C + h * D, u);
                    for (int d = 0; d < D; d++) Dx.Data[dst + 2 * C + h * D + d] = Gv.Data[Gv.Offset + gi + d];
                }
            }
        });
    }

    /// <summary>dx[dst..] for one head row: u = Rᵀ·g (the transpose rotation), then the RMSNorm backward.</summary>
    private static void NormRopeBackward(CpuTensor<T> g, int gi, T[] x, int src, CpuTensor<T> w, double r, T[] pe, int po, T[] dx, int dst, double[] u)
    {
        int D = u.Length;
        double m = 0;
        for (int p = 0; p < D / 2; p++)
        {
            double c = Wide(pe[po + 2 * p]), s = Wide(pe[po + 2 * p + 1]);
            double g0 = Wide(g.Data[g.Offset + gi + 2 * p]), g1 = Wide(g.Data[g.Offset + gi + 2 * p + 1]);
            u[2 * p] = c * g0 + s * g1;
            u[2 * p + 1] = -s * g0 + c * g1;
        }
        for (int d = 0; d < D; d++) m += u[d] * Wide(w.Data[w.Offset + d]) * Wide(x[src + d]);
        m /= D;
        for (int d = 0; d < D; d++)
            dx[dst + d] = Store(r * (Wide(w.Data[w.Offset + d]) * u[d] - Wide(x[src + d]) * r * r * m));
    }

    private static void CheckAttention(string op, Tensor q, Tensor k, Tensor v)
    {
        if (q.Rank != 4 || k.Rank != 4 || q.Shape[0] != k.Shape[0] || q.Shape[1] != k.Shape[1] ||
            q.Shape[3] != k.Shape[3] || !k.Shape.AsSpan().SequenceEqual(v.Shape))
            throw new ArgumentException(
                $"{op}: q {S(q)}, k {S(k)}, v {S(v)} must be (B, H, Lq, D), (B, H, Lk, D), (B, H, Lk, D)");
    }
}
