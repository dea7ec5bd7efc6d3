namespace MetaLoraNative.Engine.Backends.Cpu;

// Norm: LayerNorm with FLUX's modulation (alone, or after the gated residual that feeds it), and RMSNorm (QK norm);
// forward and backward side by side.
// Statistics are two-pass fp64 per row; the forward saves them (rounded to T) for the backward.
public sealed partial class CpuBackend<T>
{
    /// <summary>
    /// y = (1 + scale[b]) · (x − mean) · rstd + shift[b], rstd = 1/√(var + eps), var biased (÷ C).
    /// x (B, L, C); shift, scale (B, C) (any shape with B·C elements and last dim C, e.g. (B, 1, C)).
    /// stats (B·L, 2) = (mean, rstd) per row.
    /// </summary>
    public Tensor LayerNormModulate(Tensor x, Tensor shift, Tensor scale, float eps, out Tensor stats)
    {
        Counted.Launch();
        const string op = "LayerNormModulate";
        var X = Cpu(x, op, "x");
        var Sh = Cpu(shift, op, "shift");
        var Sc = Cpu(scale, op, "scale");
        if (x.Rank != 3) throw new ArgumentException($"{op}: x {S(x)} must be (B, L, C)");
        int B = x.Shape[0], L = x.Shape[1], C = x.Shape[2];
        CheckModulation(op, "shift", shift, x);
        CheckModulation(op, "scale", scale, x);
        var y = New(B, L, C);
        var st = New(B * L, 2);
        double e = eps;
        ForChunks(B * L, 4L * C, (r0, r1) =>
        {
            for (int r = r0; r < r1; r++)
            {
                int b = r / L;
                var xr = new ReadOnlySpan<T>(X.Data, X.Offset + r * C, C);
                var sh = new ReadOnlySpan<T>(Sh.Data, Sh.Offset + b * C, C);
                var sc = new ReadOnlySpan<T>(Sc.Data, Sc.Offset + b * C, C);
                var yr = new Span<T>(y.Data, r * C, C);
                double mean = 0, var = 0;
                for (int c = 0; c < C; c++) mean += Wide(xr[c]);
                mean /= C;
                for (int c = 0; c < C; c++) { double d = Wide(xr[c]) - mean; var += d * d; }
                double rstd = 1 / Math.Sqrt(var / C + e);
                for (int c = 0; c < C; c++)
                    yr[c] = Store((1 + Wide(sc[c])) * ((Wide(xr[c]) - mean) * rstd) + Wide(sh[c]));
                st.Data[2 * r] = Store(mean);
                st.Data[2 * r + 1] = Store(rstd);
            }
        });
        stats = st;
        return y;
    }

    /// <summary>
    /// With g = dy·(1 + scale) and x̂ = (x − mean)·rstd:
    /// dx = rstd·(g − mean(g) − x̂·mean(g·x̂)); dshift[b] = Σ_L dy; dscale[b] = Σ_L dy·x̂.
    /// DShift and DScale take the shape of <paramref name="scale"/>.
    /// </summary>
    public (Tensor Dx, Tensor DShift, Tensor DScale) LayerNormModulateBackward(
        Tensor dy, Tensor x, Tensor scale, Tensor stats)
    {
        Counted.Launch();
        const string op = "LayerNormModulateBackward";
        var G = Cpu(dy, op, "dy");
        var X = Cpu(x, op, "x");
        var Sc = Cpu(scale, op, "scale");
        var St = Cpu(stats, op, "stats");
        if (x.Rank != 3) throw new ArgumentException($"{op}: x {S(x)} must be (B, L, C)");
        Shapes.SameShape(dy, x, $"{op} (dy vs x)");
        int B = x.Shape[0], L = x.Shape[1], C = x.Shape[2];
        CheckModulation(op, "scale", scale, x);
        if (stats.Length != 2L * B * L)
            throw new ArgumentException($"{op}: stats {S(stats)} must be (B·L, 2) = ({B * L}, 2) for x {S(x)}");

        var dx = New(B, L, C);
        ForChunks(B * L, 6L * C, (r0, r1) =>
        {
            for (int r = r0; r < r1; r++)
            {
                int b = r / L;
                double mean = Wide(St.Data[St.Offset + 2 * r]), rstd = Wide(St.Data[St.Offset + 2 * r + 1]);
                var xr = new ReadOnlySpan<T>(X.Data, X.Offset + r * C, C);
                var gr = new ReadOnlySpan<T>(G.Data, G.Offset + r * C, C);
                var sc = new ReadOnlySpan<T>(Sc.Data, Sc.Offset + b * C, C);
                double m1 = 0, m2 = 0;
                for (int c = 0; c < C; c++)
                {
                    double g = Wide(gr[c]) * (1 + Wide(sc[c]));
                    m1 += g;
                    m2 += g * (Wide(xr[c]) - mean) * rstd;
                }
                m1 /= C;
                m2 /= C;
                var dr = new Span<T>(dx.Data, r * C, C);
                for (int c = 0; c < C; c++)
                {
                    double g = Wide(gr[c]) * (1 + Wide(sc[c]));
                    double xh = (Wide(xr[c]) - mean) * rstd;
                    dr[c] = Store(rstd * (g - m1 - xh * m2));
                }
            }
        });

        // Column sums over L, one (b, 64-column block) per work item so B = 1 still splits.
        var dShift = New(scale.Shape);
        var dScale = New(scale.Shape);
        const int Cb = 64;
        int nCb = (C + Cb - 1) / Cb;
        ForChunks(B * nCb, 2L * L * Cb, (w0, w1) =>
        {
            Span<double> s1 = stackalloc double[Cb], s2 = stackalloc double[Cb];
            for (int w = w0; w < w1; w++)
            {
                int b = w / nCb, c0 = w % nCb * Cb, c1 = Math.Min(c0 + Cb, C);
                s1.Clear();
                s2.Clear();
                for (int l = 0; l < L; l++)
                {
                    int r = b * L + l;
                    double mean = Wide(St.Data[St.Offset + 2 * r]), rstd = Wide(St.Data[St.Offset + 2 * r + 1]);
                    int xo = X.Offset + r * C, go = G.Offset + r * C;
                    for (int c = c0; c < c1; c++)
                    {
                        double g = Wide(G.Data[go + c]);
                        s1[c - c0] += g;
                        s2[c - c0] += g * (Wide(X.Data[xo + c]) - mean) * rstd;
                    }
                }
                for (int c = c0; c < c1; c++)
                {
                    dShift.Data[b * C + c] = Store(s1[c - c0]);
                    dScale.Data[b * C + c] = Store(s2[c - c0]);
                }
            }
        });
        return (dx, dShift, dScale);
    }

    /// <summary>
    /// x1 = x + gate[b]·y (stored as T), then the statistics and the modulation of <see cref="LayerNormModulate"/>
    /// over the stored x1, one row at a time. x, y (B, L, C); gate, shift, scale (B, C).
    /// </summary>
    public (Tensor X1, Tensor Modulated) ResidualLayerNormModulate(Tensor x, Tensor gate, Tensor y, Tensor shift, Tensor scale,
                                                                   float eps, out Tensor stats)
    {
        Counted.Launch();
        const string op = "ResidualLayerNormModulate";
        var X = Cpu(x, op, "x");
        var Gt = Cpu(gate, op, "gate");
        var Y = Cpu(y, op, "y");
        var Sh = Cpu(shift, op, "shift");
        var Sc = Cpu(scale, op, "scale");
        if (x.Rank != 3) throw new ArgumentException($"{op}: x {S(x)} must be (B, L, C)");
        Shapes.SameShape(x, y, $"{op} (x vs y)");
        CheckModulation(op, "gate", gate, x);
        CheckModulation(op, "shift", shift, x);
        CheckModulation(op, "scale", scale, x);
        int B = x.Shape[0], L = x.Shape[1], C = x.Shape[2];
        var x1 = New(B, L, C);
        var m = New(B, L, C);
        var st = New(B * L, 2);
        double e = eps;
        ForChunks(B * L, 6L * C, (r0, r1) =>
        {
            for (int r = r0; r < r1; r++)
            {
                int b = r / L, o = r * C;
                double mean = 0, var = 0;
                for (int c = 0; c < C; c++)
                {
                    x1.Data[o + c] = Store(Wide(X.Data[X.Offset + o + c]) + Wide(Gt.Data[Gt.Offset + b * C + c]) * Wide(Y.Data[Y.Offset + o + c]));
                    mean += Wide(x1.Data[o + c]);
                }
                mean /= C;
                for (int c = 0; c < C; c++) { double d = Wide(x1.Data[o + c]) - mean; var += d * d; }
                double rstd = 1 / Math.Sqrt(var / C + e);
                for (int c = 0; c < C; c++)
                    m.Data[o + c] = Store((1 + Wide(Sc.Data[Sc.Offset + b * C + c])) * ((Wide(x1.Data[o + c]) - mean) * rstd) +
                                          Wide(Sh.Data[Sh.Offset + b * C + c]));
                st.Data[2 * r] = Store(mean);
                st.Data[2 * r + 1] = Store(rstd);
            }
        });
        stats = st;
        return (x1, m);
    }

    /// <summary>
    /// Per row, with g = dModulated·(1 + scale) and x̂ = (x1 − mean)·rstd: dx1 = dOut + rstd·(g − mean(g) − x̂·mean(g·x̂))
    /// (kept in fp64 for dy = gate·dx1); then per (b, 64-column block) the sums over L of dx1·y, dModulated and
    /// dModulated·x̂. The gradients of the (B, C) vectors take the shape of <paramref name="scale"/>.
    /// </summary>
    public (Tensor Dx1, Tensor Dy, Tensor DGate, Tensor DShift, Tensor DScale) ResidualLayerNormModulateBackward(
        Tensor dModulated, Tensor dOut, Tensor x1, Tensor scale, Tensor stats, Tensor gate, Tensor y)
    {
        Counted.Launch();
        const string op = "ResidualLayerNormModulateBackward";
        var G = Cpu(dModulated, op, "dModulated");
        var Do = Cpu(dOut, op, "dOut");
        var X = Cpu(x1, op, "x1");
        var Sc = Cpu(scale, op, "scale");
        var St = Cpu(stats, op, "stats");
        var Gt = Cpu(gate, op, "gate");
        var Y = Cpu(y, op, "y");
        if (x1.Rank != 3) throw new ArgumentException($"{op}: x1 {S(x1)} must be (B, L, C)");
        Shapes.SameShape(dModulated, x1, $"{op} (dModulated vs x1)");
        Shapes.SameShape(dOut, x1, $"{op} (dOut vs x1)");
        Shapes.SameShape(y, x1, $"{op} (y vs x1)");
        int B = x1.Shape[0], L = x1.Shape[1], C = x1.Shape[2];
        CheckModulation(op, "scale", scale, x1);
        CheckModulation(op, "gate", gate, x1);
        if (stats.Length != 2L * B * L)
            throw new ArgumentException($"{op}: stats {S(stats)} must be (B·L, 2) = ({B * L}, 2) for x1 {S(x1)}");

        var dx1 = New(B, L, C);
        var dy = New(B, L, C);
        ForChunks(B * L, 8L * C, (r0, r1) =>
        {
            for (int r = r0; r < r1; r++)
            {
                int b = r / L, o = r * C;
                double mean = Wide(St.Data[St.Offset + 2 * r]), rstd = Wide(St.Data[St.Offset + 2 * r + 1]);
                double m1 = 0, m2 = 0;
                for (int c = 0; c < C; c++)
                {
                    double g = Wide(G.Data[G.Offset + o + c]) * (1 + Wide(Sc.Data[Sc.Offset + b * C + c]));
                    m1 += g;
                    m2 += g * (Wide(X.Data[X.Offset + o + c]) - mean) * rstd;
                }
                m1 /= C;
                m2 /= C;
                for (int c = 0; c < C; c++)
                {
                    double g = Wide(G.Data[G.Offset + o + c]) * (1 + Wide(Sc.Data[Sc.Offset + b * C + c]));
                    double xh = (Wide(X.Data[X.Offset + o + c]) - mean) * rstd;
                    double d = Wide(Do.Data[Do.Offset + o + c]) + rstd * (g - m1 - xh * m2);
                    dx1.Data[o + c] = Store(d);
                    dy.Data[o + c] = Store(Wide(Gt.Data[Gt.Offset + b * C + c]) * d);
                }
            }
        });

        // Column sums over L, one (b, 64-column block) per work item so B = 1 still splits. dgate reads dx1 as stored.
        var dGate = New(gate.Shape);
        var dShift = New(scale.Shape);
        var dScale = New(scale.Shape);
        const int Cb = 64;
        int nCb = (C + Cb - 1) / Cb;
        ForChunks(B * nCb, 3L * L * Cb, (w0, w1) =>
        {
            Span<double> s0 = stackalloc double[Cb], s1 = stackalloc double[Cb], s2 = stackalloc double[Cb];
            for (int w = w0; w < w1; w++)
            {
                int b = w / nCb, c0 = w % nCb * Cb, c1 = Math.Min(c0 + Cb, C);
                s0.Clear();
                s1.Clear();
                s2.Clear();
                for (int l = 0; l < L; l++)
                {
                    int r = b * L + l, o = r * C;
                    double mean = Wide(St.Data[St.Offset + 2 * r]), rstd = Wide(St.Data[St.Offset + 2 * r + 1]);
                    for (int c = c0; c < c1; c++)
                    {
                        double g = Wide(G.Data[G.Offset + o + c]);
                        s0[c - c0] += Wide(dx1.Data[o + c]) * Wide(Y.Data[Y.Offset + o + c]);
                        s1[c - c0] += g;
                        s2[c - c0] += g * (Wide(X.Data[X.Offset + o + c]) - mean) * rstd;
                    }
                }
                for (int c = c0; c < c1; c++)
                {
                    dGate.Data[b * C + c] = Store(s0[c - c0]);
                    dShift.Data[b * C + c] = Store(s1[c - c0]);
                    dScale.Data[b * C + c] = Store(s2[c - c0]);
                }
            }
        });
        return (dx1, dy, dGate, dShift, dScale);
    }

    /// <summary>y = x · rsqrt(mean(x²) + eps) · weight over the last dim. rstd has shape x.Shape[..^1].</summary>
    public Tensor RmsNorm(Tensor x, Tensor weight, float eps, out Tensor rstd)
    {
        Counted.Launch();
        const string op = "RmsNorm";
        var X = Cpu(x, op, "x");
        var W = Cpu(weight, op, "weight");
        int C = x.Cols, R = (int)x.Rows;
        if (x.Rank < 1 || weight.Length != C)
            throw new ArgumentException($"{op}: weight {S(weight)} must have C = {C} elements for x {S(x)}");
        var y = New(x.Shape);
        var rs = New(x.Rank > 1 ? x.Shape[..^1] : [1]);
        double e = eps;
        ForChunks(R, 3L * C, (r0, r1) =>
        {
            for (int r = r0; r < r1; r++)
            {
                var xr = new ReadOnlySpan<T>(X.Data, X.Offset + r * C, C);
                double ms = Dot(xr, xr) / C;
                double rr = 1 / Math.Sqrt(ms + e);
                for (int c = 0; c < C; c++) y.Data[r * C + c] = Store(Wide(xr[c]) * rr * Wide(W.Data[W.Offset + c]));
                rs.Data[r] = Store(rr);
            }
        });
        rstd = rs;
        return y;
    }

    /// <summary>dx = r·(w·dy − x·r²·mean(dy·w·x)), r = rstd. The weight is frozen (no dweight).</summary>
    public Tensor RmsNormBackward(Tensor dy, Tensor x, Tensor weight, Tensor rstd)
    {
        Counted.Launch();
        const string op = "RmsNormBackward";
        var G = Cpu(dy, op, "dy");
        var X = Cpu(x, op, "x");
        var W = Cpu(weight, op, "weight");
        var Rs = Cpu(rstd, op, "rstd");
        Shapes.SameShape(dy, x, $"{op} (dy vs x)");
        int C = x.Cols, R = (int)x.Rows;
        if (weight.Length != C || rstd.Length != R)
            throw new ArgumentException(
                $"{op}: weight {S(weight)} must have {C} elements and rstd {S(rstd)} {R} for x {S(x)}");
        var dx = New(x.Shape);
        ForChunks(R, 4L * C, (r0, r1) =>
        {
            for (int r = r0; r < r1; r++)
            {
                double rr = Wide(Rs.Data[Rs.Offset + r]);
                int xo = X.Offset + r * C, go = G.Offset + r * C;
                double m = 0;
                for (int c = 0; c < C; c++) m += Wide(G.Data[go + c]) * Wide(W.Data[W.Offset + c]) * Wide(X.Data[xo + c]);
                m /= C;
                for (int c = 0; c < C; c++)
                    dx.Data[r * C + c] = Store(rr * (Wide(W.Data[W.Offset + c]) * Wide(G.Data[go + c]) - Wide(X.Data[xo + c]) * rr * rr * m));
            }
        });
        return dx;
    }

    /// <summary>A per-batch modulation vector: B·C elements with last dim C, for x (B, L, C).</summary>
    private static void CheckModulation(string op, string name, Tensor m, Tensor x)
    {
        if (m.Cols != x.Shape[2] || m.Length != (long)x.Shape[0] * x.Shape[2])
            throw new ArgumentException($"{op}: {name} {S(m)} must be (B, C) = ({x.Shape[0]}, {x.Shape[2]}) for x {S(x)}");
    }
}
