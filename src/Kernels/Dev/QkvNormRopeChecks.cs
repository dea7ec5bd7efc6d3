using MetaLoraNative.Engine;

namespace MetaLoraNative.Kernels.Verification;

// The parity checks of qkv_norm_rope version 2 (kernels/dev/qkv_norm_rope/02_fused.cu), in CudaParity.Dev:
// `metalora check cuda --dev`. The oracle is the fp64 CPU op on the same bf16-rounded inputs.
public static partial class CudaParity
{
    /// <summary>
    /// One stream of a joint attention: B, H, D, the joint length LJ, the stream's first token and length, the
    /// extra columns of each qkv row past 3C (a wider matrix, as linear1's), and whether pe has one row per sample.
    /// </summary>
    public readonly record struct QkvNormRopeCase(int B, int H, int D, int LJoint, int Start, int L, int ExtraColumns, bool PeBatched)
    {
        public string Tag => $"{B}x{H}x{D} tokens [{Start}, {Start + L}) of {LJoint}{(ExtraColumns > 0 ? $", row +{ExtraColumns}" : "")}";
    }

    /// <summary>
    /// Shapes off every multiple: the 16-byte path (D 128, 64, 24), an odd row stride that forces the element-pair path
    /// (extra columns 3), a D of 6 (pairs only), a single token, pe shared across the batch; and FLUX.1-dev's joint
    /// sequence at 512² (24 heads of 128, 1,536 tokens, 512 text first), both streams, the image's qkv inside a
    /// linear1-wide row (3C + mlp).
    /// </summary>
    public static readonly QkvNormRopeCase[] QkvNormRopeCases =
    [
        new(2, 3, 64, 50, 7, 37, 0, true),
        new(2, 2, 128, 41, 0, 41, 40, false),
        new(1, 3, 24, 9, 8, 1, 0, true),
        new(2, 2, 64, 30, 11, 13, 3, true),
        new(1, 2, 6, 12, 5, 7, 0, false),
        new(1, 24, 128, 1536, 0, 512, 0, false),
        new(1, 24, 128, 1536, 512, 1024, 4 * 3072, false),
    ];

    static IEnumerable<ParityCheck> QkvNormRopeChecks() =>
        QkvNormRopeCases.Select(c => new ParityCheck($"qkv_norm_rope {c.Tag}",
            $"fused split-qkv + QK RMSNorm + RoPE (kernels/dev/qkv_norm_rope/02_fused.cu) against the fp64 CPU op: joint q, k, v rows " +
            $"[{c.Start}, {c.Start + c.L}), q/k rstd, untouched rows, and the backward's d qkv (B {c.B}, H {c.H}, D {c.D}, L_joint {c.LJoint})",
            p => QkvNormRope(p, c)) { Slow = c.LJoint > 1000 });

    static void QkvNormRope(ParityContext p, QkvNormRopeCase c)
    {
        int B = c.B, H = c.H, D = c.D, C = H * D, LJ = c.LJoint, L = c.L, cols = 3 * C + c.ExtraColumns, pb = c.PeBatched ? B : 1;
        int joint = B * H * LJ * D;
        const float sentinel = 7f;
        var (gx, cx) = p.Both(ParityContext.RoundBf16(Rand(B * L * cols, 11, 2f)), B, L, cols);
        var (gwq, cwq) = p.Both(ParityContext.RoundBf16(Rand(D, 12, 0.5f, 1f)), D);
        var (gwk, cwk) = p.Both(ParityContext.RoundBf16(Rand(D, 13, 0.5f, 1f)), D);
        var angles = Rand(pb * LJ * D / 2, 14, 3.1f);
        var pe = new float[angles.Length * 2];
        for (int i = 0; i < angles.Length; i++) { pe[2 * i] = MathF.Cos(angles[i]); pe[2 * i + 1] = MathF.Sin(angles[i]); }
        using var gpe = p.Gpu.Upload(pe, [pb, LJ, D / 2, 2], Precision.Master);
        using var cpe = p.Cpu.Upload(pe, pb, LJ, D / 2, 2);
        var fill = Enumerable.Repeat(sentinel, joint).ToArray();
        var g = new QkvJoint(p.Gpu.Upload(fill, B, H, LJ, D), p.Gpu.Upload(fill, B, H, LJ, D), p.Gpu.Upload(fill, B, H, LJ, D));
        var o = new QkvJoint(p.Cpu.Upload(fill, B, H, LJ, D), p.Cpu.Upload(fill, B, H, LJ, D), p.Cpu.Upload(fill, B, H, LJ, D));
        var gslice = MatrixSlice.ColumnsOf(gx, 0, 3 * C);
        var cslice = MatrixSlice.ColumnsOf(cx, 0, 3 * C);
        try
        {
            var (gqr, gkr) = p.Gpu.QkvNormRope(gslice, new QkNorm(gwq, gwk, 1e-6f), gpe, g, c.Start);
            var (cqr, ckr) = p.Cpu.QkvNormRope(cslice, new QkNorm(cwq, cwk, 1e-6f), cpe, o, c.Start);
            using (gqr) using (gkr) using (cqr) using (ckr)
            {
                // the stream's rows by the bf16 rule; every other row still the sentinel (the reference's are, by construction)
                p.Bf16("q (roped)", g.Q, o.Q);
                p.Bf16("k (roped)", g.K, o.K);
                p.Bf16("v", g.V, o.V);
                p.Exact("rows outside the stream", OutsideRows(p.Gpu.Download(g.Q), c), OutsideRows(p.Cpu.Download(o.Q), c));
                p.F32("q rstd", gqr, cqr, 1e-5);
                p.F32("k rstd", gkr, ckr, 1e-5);

                // backward: random joint gradients, into a d qkv as wide as qkv whose other columns hold the sentinel
                var (gdq, cdq) = p.Both(ParityContext.RoundBf16(Rand(joint, 15)), B, H, LJ, D);
                var (gdk, cdk) = p.Both(ParityContext.RoundBf16(Rand(joint, 16)), B, H, LJ, D);
                var (gdv, cdv) = p.Both(ParityContext.RoundBf16(Rand(joint, 17)), B, H, LJ, D);
                var wide = Enumerable.Repeat(sentinel, B * L * cols).ToArray();
                using var gdx = p.Gpu.Upload(wide, B, L, cols);
                using var cdx = p.Cpu.Upload(wide, B, L, cols);
                using (gdq) using (gdk) using (gdv) using (cdq) using (cdk) using (cdv)
                {
                    p.Gpu.QkvNormRopeBackward(new QkvJoint(gdq, gdk, gdv), c.Start, gslice, new QkNorm(gwq, gwk, 1e-6f), gpe, gqr, gkr,
                                              MatrixSlice.ColumnsOf(gdx, 0, 3 * C));
                    p.Cpu.QkvNormRopeBackward(new QkvJoint(cdq, cdk, cdv), c.Start, cslice, new QkNorm(cwq, cwk, 1e-6f), cpe, cqr, ckr,
                                              MatrixSlice.ColumnsOf(cdx, 0, 3 * C));
                    p.Bf16("d qkv (and the untouched columns past 3C)", gdx, cdx);
                }
            }
        }
        finally
        {
            foreach (var t in new[] { gx, cx, gwq, cwq, gwk, cwk, g.Q, g.K, g.V, o.Q, o.K, o.V }) t.Dispose();
        }
    }

    /// <summary>The values of a joint tensor at tokens outside [start, start + L).</summary>
    static float[] OutsideRows(float[] values, QkvNormRopeCase c)
    {
        var r = new List<float>();
        for (int bh = 0; bh < c.B * c.H; bh++)
            for (int l = 0; l < c.LJoint; l++)
                if (l < c.Start || l >= c.Start + c.L)
                    r.AddRange(values.AsSpan((bh * c.LJoint + l) * c.D, c.D).ToArray());
        return [.. r];
    }
}

// The bench of qkv_norm_rope version 2, in KernelBenches.Dev, beside version 1 (the engine's unfused ops): the single
// block's one stream over FLUX.1-dev's whole sequence at 1024².
public static partial class KernelBenches
{
    /// <summary>One stream of L tokens covering the joint sequence, H heads of D.</summary>
    public readonly record struct QkvBenchShape(int L, int H, int D);

    public static QkvBenchShape QkvFluxDev { get; } = new(Tokens, Heads, HeadDim);

    static IEnumerable<KernelBench> QkvNormRopeBenches() =>
    [
        new("qkv_norm_rope v1", $"SplitQkv, RmsNorm (q, k), ApplyRope (q, k) and back (ApplyRopeBackward, RmsNormBackward, MergeQkv), the engine's ops, qkv (1, {QkvFluxDev.L}, 3·{Hidden})",
            gpu => QkvNormRope(gpu, QkvFluxDev, 1, gpu.TimeMs)),
        new("qkv_norm_rope v2", $"split-qkv + QK RMSNorm + RoPE fused (kernels/dev/qkv_norm_rope/02_fused.cu), forward and backward, qkv (1, {QkvFluxDev.L}, 3·{Hidden})",
            gpu => QkvNormRope(gpu, QkvFluxDev, 2, gpu.TimeMs)),
    ];

    /// <summary>
    /// qkv = a = 0.5, norm scales 1, eps 1e-6, pe = (cos, sin) = (0.6, 0.8) at every pair: rstd r = 1/√(a² + eps), x̂ = a·r
    /// (≈ 1, which bf16 holds), so q and k are x̂(c − s) at even and x̂(s + c) at odd channels, v = a. Backward with
    /// every joint gradient g = 0.25: the transposed rotation gives u = g(c + s, c − s), mean(u·x) = a·g·c, so d q and
    /// d k are r·g(c + s − a²r²c) at even and r·g(c − s − a²r²c) at odd channels, d v = g. Outputs allowed expected/64
    /// (version 1 rounds x̂ and u to bf16 between its ops). The fused ops write into outputs allocated once (the
    /// model's zero fill of them is not timed); version 1's ops allocate theirs. GB/s of the fused op's tensors: forward
    /// reads qkv and pe, writes q, k, v and two rstd (6·L·C bf16); backward reads q and k of qkv, dq, dk, dv, pe and rstd,
    /// writes d qkv (8·L·C bf16).
    /// </summary>
    internal static BenchResult QkvNormRope(IBackend be, QkvBenchShape s, int version, BenchTimer time)
    {
        var (l, h, d) = (s.L, s.H, s.D);
        int c = h * d;
        const float a = 0.5f, g = 0.25f, cos = 0.6f, sin = 0.8f, eps = 1e-6f;
        var owned = new List<Tensor>();
        Tensor Own(Tensor t) { owned.Add(t); return t; }
        Tensor Filled(float value, params int[] shape) { var t = be.Zeros(shape); be.Fill(t, value); return Own(t); }
        try
        {
            var qkv = Filled(a, 1, l, 3 * c);
            var wq = Filled(1f, d);
            var wk = Filled(1f, d);
            var table = new float[(long)l * d];
            for (int i = 0; i < table.Length; i += 2) (table[i], table[i + 1]) = (cos, sin);
            var pe = Own(be.Upload(table, [1, l, d / 2, 2], Precision.Master));
            var dq = Filled(g, 1, h, l, d);
            var dk = Filled(g, 1, h, l, d);
            var dv = Filled(g, 1, h, l, d);
            var norm = new QkNorm(wq, wk, eps);
            Tensor q, k, v, qr, kr, dqkv;
            float fwd, bwd;
            if (version == 2)
            {
                var joint = new QkvJoint(Filled(0f, 1, h, l, d), Filled(0f, 1, h, l, d), Filled(0f, 1, h, l, d));
                (Tensor Q, Tensor K)? rstd = null;
                fwd = time(() =>
                {
                    if (rstd is var (x, y)) { x.Dispose(); y.Dispose(); }
                    rstd = be.QkvNormRope(qkv, norm, pe, joint, 0);
                }, 5);
                (q, k, v, qr, kr) = (joint.Q, joint.K, joint.V, Own(rstd!.Value.Q), Own(rstd.Value.K));
                dqkv = Filled(0f, 1, l, 3 * c);
                bwd = time(() => be.QkvNormRopeBackward(new QkvJoint(dq, dk, dv), 0, qkv, norm, pe, qr, kr, dqkv), 5);
            }
            else
            {
                (Tensor Q, Tensor K, Tensor V, Tensor QRaw, Tensor KRaw, Tensor QRstd, Tensor KRstd)? f = null;
                fwd = time(() =>
                {
                    if (f is { } o) foreach (var t in new[] { o.Q, o.K, o.V, o.QRaw, o.KRaw, o.QRstd, o.KRstd }) t.Dispose();
                    var (q1, k1, v1) = be.SplitQkv(qkv, h);
                    using var qn = be.RmsNorm(q1, wq, eps, out var qr1);
                    using var kn = be.RmsNorm(k1, wk, eps, out var kr1);
                    f = (be.ApplyRope(qn, pe), be.ApplyRope(kn, pe), v1, q1, k1, qr1, kr1);
                }, 5);
                var r = f!.Value;
                foreach (var t in new[] { r.QRaw, r.KRaw }) Own(t);
                (q, k, v, qr, kr) = (Own(r.Q), Own(r.K), Own(r.V), Own(r.QRstd), Own(r.KRstd));
                Tensor? merged = null;
                bwd = time(() =>
                {
                    merged?.Dispose();
                    using var dqRope = be.ApplyRopeBackward(dq, pe);
                    using var dkRope = be.ApplyRopeBackward(dk, pe);
                    using var dqn = be.RmsNormBackward(dqRope, r.QRaw, wq, r.QRstd);
                    using var dkn = be.RmsNormBackward(dkRope, r.KRaw, wk, r.KRstd);
                    merged = be.MergeQkv(dqn, dkn, dv);
                }, 5);
                dqkv = Own(merged!);
            }
            double rs = 1 / Math.Sqrt((double)a * a + eps), xh = a * rs, a2r2 = a * a * rs * rs;
            float qEven = (float)(xh * (cos - sin)), qOdd = (float)(xh * (sin + cos));
            float dEven = (float)(rs * g * (cos + sin - a2r2 * cos)), dOdd = (float)(rs * g * (cos - sin - a2r2 * cos));
            float[] qv = be.Download(q), kv = be.Download(k), dx = be.Download(dqkv);
            var checks = new[]
            {
                Uniform("q even", Every(qv, 0), qEven, Math.Abs(qEven) / 64),
                Uniform("q odd", Every(qv, 1), qOdd, qOdd / 64),
                Uniform("k even", Every(kv, 0), qEven, Math.Abs(qEven) / 64),
                Uniform("k odd", Every(kv, 1), qOdd, qOdd / 64),
                Uniform("v", be.Download(v), a, 0f),
                Uniform("q rstd", be.Download(qr), (float)rs, (float)rs * 1e-5f),
                Uniform("k rstd", be.Download(kr), (float)rs, (float)rs * 1e-5f),
                Uniform("d q, d k even", Every(Columns(dx, 3 * c, 0, 2 * c), 0), dEven, Math.Abs(dEven) / 64),
                Uniform("d q, d k odd", Every(Columns(dx, 3 * c, 0, 2 * c), 1), dOdd, Math.Abs(dOdd) / 64),
                Uniform("d v", Columns(dx, 3 * c, 2 * c, c), g, 0f),
            };
            double tok = l, pairs = (double)l * h;
            double bytesF = tok * 3 * c * 2 * 2 + tok * d * 4 + 2 * pairs * 4;
            double bytesB = tok * (2 + 3 + 3) * c * 2 + tok * d * 4 + 2 * pairs * 4;   // q, k of qkv; dq, dk, dv; d qkv
            return new BenchResult($"qkv_norm_rope v{version}",
                [new($"forward ({bytesF / (fwd * 1e-3) / 1e9:F0} GB/s)", fwd, 0), new($"backward ({bytesB / (bwd * 1e-3) / 1e9:F0} GB/s)", bwd, 0)],
                checks.All(x => x.Ok), string.Join("; ", checks.Select(x => x.Text)));
        }
        finally
        {
            foreach (var t in owned) t.Dispose();
        }
    }

    /// <summary>Every second value from <paramref name="first"/> (the even or the odd channels of rows of even length).</summary>
    internal static float[] Every(float[] values, int first)
    {
        var r = new float[(values.Length - first + 1) / 2];
        for (int i = 0; i < r.Length; i++) r[i] = values[first + 2 * i];
        return r;
    }
}
