using MetaLoraNative.Engine;

namespace MetaLoraNative.Kernels.Verification;

// Attention: the RoPE table, apply and backward; attention forward and backward.
public static partial class CudaParity
{
    static IEnumerable<ParityCheck> AttentionChecks() =>
    [
        new("rope", "RoPE table, apply and backward", Rope),
        .. AttentionCases.Select(c => AttentionCheck(c, AttentionKernel.Scalar, AttentionKernel.Scalar)),
    ];

    /// <summary>
    /// (B, H, L, D) of the checks of the engine's attention (version 1). Lengths are not multiples of the tiles (8,
    /// 16, 32), and 1 and 65 sit at the edges; D 24, 32 and 64 are below FLUX's 128.
    /// </summary>
    public static readonly (int B, int H, int L, int D)[] AttentionCases =
    [
        (2, 3, 77, 64),
        (1, 2, 130, 128),
        (1, 1, 5, 32),
        (1, 3, 100, 24),
        (1, 1, 1, 128),
        (2, 2, 65, 128),
    ];

    /// <summary>One attention check of a shape with the given forward and backward kernel versions.</summary>
    static ParityCheck AttentionCheck((int B, int H, int L, int D) c, AttentionKernel forward, AttentionKernel backward) =>
        new($"attention {forward.Tag()}/{backward.Tag()} {c.B}x{c.H}x{c.L}x{c.D}",
            $"joint attention ({forward} forward, {backward} backward kernels), B {c.B}, H {c.H}, L {c.L}, D {c.D}: output, lse, dq, dk, dv",
            ctx => Attention(ctx, c.B, c.H, c.L, c.D, forward, backward));

    static void Rope(ParityContext p)
    {
        const int B = 2, L = 40, H = 3;
        int[] axes = [16, 56, 56];
        int D = axes.Sum();
        var ids = new float[B * L * 3];
        for (int i = 0; i < B * L; i++) { ids[3 * i + 1] = i % L / 8; ids[3 * i + 2] = i % 8 + 60; }   // img-grid style
        var (gids, cids) = p.Both(ids, B, L, 3);
        using var gpe = p.Gpu.RopeTable(gids, axes, 10000f);
        using var cpe = p.Cpu.RopeTable(cids, axes, 10000f);
        p.F32("rope table (fp32 on the GPU)", gpe, cpe, 1e-6);
        var (gx, cx) = p.Both(Rand(B * H * L * D, 1), B, H, L, D);
        using var gy = p.Gpu.ApplyRope(gx, gpe);
        using var cy = p.Cpu.ApplyRope(cx, cpe);
        p.Bf16("apply_rope", gy, cy);
        using var gb = p.Gpu.ApplyRopeBackward(gx, gpe);
        using var cb = p.Cpu.ApplyRopeBackward(cx, cpe);
        p.Bf16("apply_rope backward", gb, cb);
    }

    static void Attention(ParityContext p, int B, int H, int L, int D, AttentionKernel forward, AttentionKernel backward)
    {
        var (previous, previousBackward) = (p.Gpu.AttentionForwardKernel, p.Gpu.AttentionBackwardKernel);
        p.Gpu.AttentionForwardKernel = forward;
        p.Gpu.AttentionBackwardKernel = backward;
        try
        {
            var (gq, cq) = p.Both(Rand(B * H * L * D, 1, 2f), B, H, L, D);
            var (gk, ck) = p.Both(Rand(B * H * L * D, 2, 2f), B, H, L, D);
            var (gv, cv) = p.Both(Rand(B * H * L * D, 3), B, H, L, D);
            using var go = p.Gpu.Attention(gq, gk, gv, out var glse);
            using var co = p.Cpu.Attention(cq, ck, cv, out var clse);
            ParityContext.RequireShape(go, [B, L, H * D], "attention output");
            p.Bf16("attention output", go, co);
            p.F32("attention lse", glse, clse, 1e-5);

            var (gdo, cdo) = p.Both(Rand(B * L * H * D, 4), B, L, H * D);
            var (gdq, gdk, gdv) = p.Gpu.AttentionBackward(gdo, gq, gk, gv, go, glse);
            var (cdq, cdk, cdv) = p.Cpu.AttentionBackward(cdo, cq, ck, cv, co, clse);
            // Baseline: the oracle's backward fed the bf16-rounded forward output (what the GPU saved), then rounded.
            using var coRounded = p.RoundedCopy(co);
            var (bdq, bdk, bdv) = p.Cpu.AttentionBackward(cdo, cq, ck, cv, coRounded, clse);
            p.Bf16("attention dq", gdq, p.Cpu.DownloadDouble(cdq), RoundBf16(p.Cpu.DownloadDouble(bdq)));
            p.Bf16("attention dk", gdk, p.Cpu.DownloadDouble(cdk), RoundBf16(p.Cpu.DownloadDouble(bdk)));
            p.Bf16("attention dv", gdv, p.Cpu.DownloadDouble(cdv), RoundBf16(p.Cpu.DownloadDouble(bdv)));
        }
        finally { (p.Gpu.AttentionForwardKernel, p.Gpu.AttentionBackwardKernel) = (previous, previousBackward); }
    }
}
