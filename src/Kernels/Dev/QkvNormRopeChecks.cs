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
