using MetaLoraNative.Engine;

namespace MetaLoraNative.Kernels.Verification;

// Norm: LayerNorm with modulation and RMSNorm, forward and backward.
public static partial class CudaParity
{
    static IEnumerable<ParityCheck> NormChecks() =>
    [
        new("layernorm", "LayerNorm + modulation, forward and backward", LayerNorm),
        new("rmsnorm", "QK RMSNorm, forward and backward", RmsNorm),
    ];

    static void LayerNorm(ParityContext p)
    {
        const int B = 2, L = 70, C = 200;   // L > one chunk, C not a multiple of 32
        var (gx, cx) = p.Both(Rand(B * L * C, 1, 2f, 0.5f), B, L, C);
        var (gsh, csh) = p.Both(Rand(B * C, 2), B, C);
        var (gsc, csc) = p.Both(Rand(B * C, 3), B, C);
        using var gy = p.Gpu.LayerNormModulate(gx, gsh, gsc, 1e-6f, out var gst);
        using var cy = p.Cpu.LayerNormModulate(cx, csh, csc, 1e-6f, out var cst);
        p.Bf16("layernorm_modulate", gy, cy);
        var (gdy, cdy) = p.Both(Rand(B * L * C, 4), B, L, C);
        var (gdx, gdsh, gdsc) = p.Gpu.LayerNormModulateBackward(gdy, gx, gsc, gst);
        var (cdx, cdsh, cdsc) = p.Cpu.LayerNormModulateBackward(cdy, cx, csc, cst);
        p.Bf16("layernorm_modulate dx", gdx, cdx);
        p.Bf16("layernorm_modulate dshift", gdsh, cdsh);
        p.Bf16("layernorm_modulate dscale", gdsc, cdsc);
    }

    static void RmsNorm(ParityContext p)
    {
        var (gx, cx) = p.Both(Rand(2 * 3 * 33 * 128, 1, 3f), 2, 3, 33, 128);
        var (gw, cw) = p.Both(Rand(128, 2, 0.5f, 1f), 128);
        using var gy = p.Gpu.RmsNorm(gx, gw, 1e-6f, out var gr);
        using var cy = p.Cpu.RmsNorm(cx, cw, 1e-6f, out var cr);
        p.Bf16("rmsnorm", gy, cy);
        var (gdy, cdy) = p.Both(Rand(2 * 3 * 33 * 128, 3), 2, 3, 33, 128);
        using var gdx = p.Gpu.RmsNormBackward(gdy, gx, gw, gr);
        using var cdx = p.Cpu.RmsNormBackward(cdy, cx, cw, cr);
        p.Bf16("rmsnorm backward", gdx, cdx);
    }
}
