using MetaLoraNative.Engine;

namespace MetaLoraNative.Kernels.Verification;

// Gemm: GEMM in every transpose and precision mix, Linear and its input backward, and the skinny-GEMM routes at
// every LoRA target kind's shape (SkinnyGemmParity).
public static partial class CudaParity
{
    static IEnumerable<ParityCheck> GemmChecks() =>
    [
        new("gemm", "GEMM, all transposes, bf16 out and fp32 accumulation, fp32×fp32", Gemm),
        new("linear", "Linear with and without bias, and its input backward", Linear),
        .. SkinnyGemmParity.Checks,
    ];

    static void Gemm(ParityContext p)
    {
        const int M = 37, K = 70, N = 45;
        foreach (bool ta in new[] { false, true })
            foreach (bool tb in new[] { false, true })
            {
                int[] sa = ta ? [K, M] : [M, K], sb = tb ? [N, K] : [K, N];
                var (ga, ca) = p.Both(Rand(M * K, 1), sa);
                var (gb, cb) = p.Both(Rand(K * N, 2), sb);
                using var gc = p.Gpu.Zeros(M, N);
                using var cc = p.Cpu.Zeros(M, N);
                p.Gpu.Gemm(ga, ta, gb, tb, gc, 0.5f);
                p.Cpu.Gemm(ca, ta, cb, tb, cc, 0.5f);
                p.Bf16($"gemm ta={ta} tb={tb}", gc, cc);

                // Accumulating into an fp32 master (LoRA gradient style): c = 1·a·b + 1·c.
                float[] init = Rand(M * N, 3);
                using var gm = p.Gpu.Upload(init, [M, N], Precision.Master);
                using var cm = p.Cpu.Upload(init, [M, N], Precision.Master);
                p.Gpu.Gemm(ga, ta, gb, tb, gm, 1f, 1f);
                p.Cpu.Gemm(ca, ta, cb, tb, cm, 1f, 1f);
                p.F32($"gemm into fp32 ta={ta} tb={tb}", gm, cm, 1e-4);
                foreach (var t in new[] { ga, ca, gb, cb }) t.Dispose();
            }

        // fp32 × fp32 (LoRA factors) runs in fp32.
        var x = Rand(16 * 24, 4);
        var y = Rand(24 * 8, 5);
        using var gx = p.Gpu.Upload(x, [16, 24], Precision.Master);
        using var gy = p.Gpu.Upload(y, [24, 8], Precision.Master);
        using var gz = p.Gpu.Zeros([16, 8], Precision.Master);
        using var cx = p.Cpu.Upload(x, 16, 24);
        using var cy = p.Cpu.Upload(y, 24, 8);
        using var cz = p.Cpu.Zeros(16, 8);
        p.Gpu.Gemm(gx, false, gy, false, gz);
        p.Cpu.Gemm(cx, false, cy, false, cz);
        p.F32("gemm fp32", gz, cz, 1e-5);
    }

    static void Linear(ParityContext p)
    {
        var (gx, cx) = p.Both(Rand(2 * 19 * 48, 1), 2, 19, 48);
        var (gw, cw) = p.Both(Rand(40 * 48, 2, 0.2f), 40, 48);
        var (gb, cb) = p.Both(Rand(40, 3), 40);
        using var gy = p.Gpu.Linear(gx, gw, gb);
        using var cy = p.Cpu.Linear(cx, cw, cb);
        ParityContext.RequireShape(gy, [2, 19, 40], "linear output");
        p.Bf16("linear+bias", gy, cy);
        using var gy0 = p.Gpu.Linear(gx, gw, null);
        using var cy0 = p.Cpu.Linear(cx, cw, null);
        p.Bf16("linear", gy0, cy0);
        var (gdy, cdy) = p.Both(Rand(2 * 19 * 40, 4), 2, 19, 40);
        using var gdx = p.Gpu.LinearBackward(gdy, gw);
        using var cdx = p.Cpu.LinearBackward(cdy, cw);
        p.Bf16("linear backward", gdx, cdx);
    }
}
