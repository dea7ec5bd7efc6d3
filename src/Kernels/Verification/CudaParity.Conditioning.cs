using MetaLoraNative.Engine;

namespace MetaLoraNative.Kernels.Verification;

// Conditioning: the timestep embedding and the gated residual.
public static partial class CudaParity
{
    static IEnumerable<ParityCheck> ConditioningChecks() =>
    [
        new("timestep", "timestep embedding", Timestep),
        new("gated residual", "gated residual, forward and backward", GatedResidual),
    ];

    static void Timestep(ParityContext p)
    {
        float[] t = [0f, 0.25f, 0.5f, 0.998f, 1f];
        var (gt, ct) = p.Both(t, 5);
        using var ge = p.Gpu.TimestepEmbedding(gt, 256);
        using var ce = p.Cpu.TimestepEmbedding(ct, 256);
        p.Bf16("timestep embedding", ge, ce);
        using var godd = p.Gpu.TimestepEmbedding(gt, 255);   // odd dim: the zero column
        using var codd = p.Cpu.TimestepEmbedding(ct, 255);
        p.Bf16("timestep embedding, odd dim", godd, codd);
    }

    static void GatedResidual(ParityContext p)
    {
        const int B = 2, L = 130, C = 96;
        var (gx, cx) = p.Both(Rand(B * L * C, 1), B, L, C);
        var (gg, cg) = p.Both(Rand(B * C, 2), B, C);
        var (gy, cy) = p.Both(Rand(B * L * C, 3), B, L, C);
        using var go = p.Gpu.GatedResidual(gx, gg, gy);
        using var co = p.Cpu.GatedResidual(cx, cg, cy);
        p.Bf16("gated residual", go, co);
        var (gdo, cdo) = p.Both(Rand(B * L * C, 4), B, L, C);
        var (gdy, gdg) = p.Gpu.GatedResidualBackward(gdo, gg, gy);
        var (cdy, cdg) = p.Cpu.GatedResidualBackward(cdo, cg, cy);
        p.Bf16("gated residual dy", gdy, cdy);
        p.Bf16("gated residual dgate", gdg, cdg);
    }
}
