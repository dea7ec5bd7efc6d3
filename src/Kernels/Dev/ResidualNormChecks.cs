using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;

namespace MetaLoraNative.Kernels.Verification;

// The parity checks of the fused gated residual + LayerNorm-modulate, version 2 (kernels/dev/residual_norm), in
// CudaParity.Dev: `metalora check cuda --dev`.
public static partial class CudaParity
{
    /// <summary>
    /// (B, L, C, version) of the op checks. Version 2 needs C a multiple of 8; C = 100 is not, so that case checks the
    /// fallback to version 1 under the same switch. 70 and 33 rows are not multiples of the backward's rows per block
    /// (at least 8); C = 200 leaves 7 of the 32 threads of a block idle; C = 3072, L = 4,608 is FLUX.1-dev at 1024²
    /// (4,096 image + 512 text tokens), held against the fp64 oracle too (slow).
    /// </summary>
    public static readonly (int B, int L, int C, int Version)[] ResidualNormCases =
    [
        (2, 70, 200, 2), (1, 33, 64, 2), (3, 9, 3072, 2), (2, 33, 100, 2), (2, 70, 200, 1), (1, 4608, 3072, 2),
    ];

    static IEnumerable<ParityCheck> ResidualNormChecks() =>
    [
        .. ResidualNormCases.Select(c => new ParityCheck($"residual-norm v{c.Version} {c.B}x{c.L}x{c.C}",
            $"gated residual + LayerNorm-modulate, version {c.Version} (kernels/dev/residual_norm), B {c.B}, L {c.L}, C {c.C}: " +
            "x1, modulated, stats, then dx1, dy, dgate, dshift, dscale against fp64",
            p => ResidualNorm(p, c)) { Slow = c.L * c.C > 1 << 20 }),
        new("model residual-norm v2", "tiny FLUX with METALORA_FUSE=residual-norm, B 1 (the txt/img joins as views) and B 2: " +
            "output, loss and every LoRA gradient vs fp64, baseline the bf16-emulating CPU engine", ModelResidualNorm),
    ];

    /// <summary>
    /// The forward against the oracle's fused op; its baseline is an honest bf16 sequence: x1 rounded, then the
    /// LayerNorm-modulate of the rounded x1, rounded. The backward gets identical inputs on both sides (bf16-exact
    /// dModulated, dOut, x1, scale, gate, y; the stats of x1 formed by the oracle and uploaded in fp32), so it is
    /// compared with the output-rounding baseline.
    /// </summary>
    static void ResidualNorm(ParityContext p, (int B, int L, int C, int Version) c)
    {
        var gpu = p.Gpu;
        bool previous = gpu.ResidualNormKernel;
        gpu.ResidualNormKernel = c.Version == 2;
        try
        {
            int n = c.B * c.L * c.C, m = c.B * c.C;
            const float eps = 1e-6f;
            var (gx, cx) = p.Both(Rand(n, 1, 2f), c.B, c.L, c.C);
            var (gg, cg) = p.Both(Rand(m, 2), c.B, c.C);
            var (gy, cy) = p.Both(Rand(n, 3, 1.5f), c.B, c.L, c.C);
            var (gsh, csh) = p.Both(Rand(m, 4), c.B, c.C);
            var (gsc, csc) = p.Both(Rand(m, 5, 0.5f), c.B, c.C);
            var (gx1, gm) = gpu.ResidualLayerNormModulate(gx, gg, gy, gsh, gsc, eps, out var gst);
            var (cx1, cm) = p.Cpu.ResidualLayerNormModulate(cx, cg, cy, csh, csc, eps, out var cst);
            using (var rx1 = p.RoundedCopy(cx1))
            using (var bm = p.Cpu.LayerNormModulate(rx1, csh, csc, eps, out var bst))
            using (bst)
            {
                double[] x1Ref = p.Cpu.DownloadDouble(cx1);
                p.Bf16("x1", gx1, x1Ref, RoundBf16(x1Ref));
                p.Bf16("modulated", gm, p.Cpu.DownloadDouble(cm), RoundBf16(p.Cpu.DownloadDouble(bm)));
                p.Bf16("stats", gst, p.Cpu.DownloadDouble(cst), p.Cpu.DownloadDouble(bst));
            }
            foreach (var t in new[] { gx1, gm, gst, cx1, cm, cst }) t.Dispose();

            var (gdm, cdm) = p.Both(Rand(n, 6), c.B, c.L, c.C);
            var (gdo, cdo) = p.Both(Rand(n, 7), c.B, c.L, c.C);
            var (bx1, ox1) = p.Both(Rand(n, 8, 2f, 0.25f), c.B, c.L, c.C);
            using (p.Cpu.LayerNormModulate(ox1, csh, csc, eps, out var ost))
            {
                using var gst2 = gpu.Upload(Array.ConvertAll(p.Cpu.DownloadDouble(ost), v => (float)v), [c.B * c.L, 2], Precision.Master);
                var g = gpu.ResidualLayerNormModulateBackward(gdm, gdo, bx1, gsc, gst2, gg, gy);
                var r = p.Cpu.ResidualLayerNormModulateBackward(cdm, cdo, ox1, csc, ost, cg, cy);
                p.Bf16("dx1", g.Dx1, r.Dx1);
                p.Bf16("dy", g.Dy, r.Dy);
                p.Bf16("dgate", g.DGate, r.DGate);
                p.Bf16("dshift", g.DShift, r.DShift);
                p.Bf16("dscale", g.DScale, r.DScale);
                foreach (var t in new[] { g.Dx1, g.Dy, g.DGate, g.DShift, g.DScale, r.Dx1, r.Dy, r.DGate, r.DShift, r.DScale }) t.Dispose();
                ost.Dispose();
            }
        }
        finally { gpu.ResidualNormKernel = previous; }
    }

    /// <summary>The whole tiny model with the fusion on every backend; B 1 takes the joins as views, B 2 as copies.</summary>
    static void ModelResidualNorm(ParityContext p)
    {
        foreach (var mc in new[] { TinyCase with { Batch = 1 }, TinyCase })
        {
            var g = RunModel(p.Gpu, mc, Fusions.ResidualNorm);
            var r = RunModel(p.Cpu, mc, Fusions.ResidualNorm);
            using var emulation = new Bf16EmulationBackend();
            var e = RunModel(emulation, mc, Fusions.ResidualNorm);
            CompareOutputs(p, $"tiny model residual-norm B {mc.Batch}", g, r, e);
            CompareGradients(p, g, r, e);
        }
    }
}

// The bench of the fused gated residual + LayerNorm-modulate, in KernelBenches.Dev, beside version 1 (the engine's ops).
public static partial class KernelBenches
{
    static IEnumerable<KernelBench> ResidualNormBenches() =>
    [
        new("residual-norm v1", $"gated residual then LayerNorm-modulate, the engine's ops (1, {Tokens}, {Hidden}): forward, backward",
            gpu => ResidualNorm(gpu, 1)),
        new("residual-norm v2", $"gated residual + LayerNorm-modulate fused (kernels/dev/residual_norm), (1, {Tokens}, {Hidden}): forward, backward",
            gpu => ResidualNorm(gpu, 2)),
    ];

    /// <summary>
    /// x = 1, gate = 0.5, y = 2, so x1 = 2 everywhere: mean 2, variance 0, rstd = 1/√eps with eps = 1 (so LN(x1) = 0 and
    /// modulated = shift = 0.25). Backward with dModulated = 0.01, dOut = 0.5, scale = 1: g is constant, so the LN part of
    /// dx1 is 0 and dx1 = 0.5, dy = 0.25, dgate = L·0.5·2, dshift = L·0.01, dscale = 0 (x̂ = 0). The bytes moved per
    /// call: forward reads x, y and writes x1, modulated (4 · L·C bf16); backward reads dModulated, dOut, x1, y and writes
    /// dx1, dy (6 · L·C bf16), the (B, C) vectors and partials aside. The GB/s figure is that count over the time.
    /// </summary>
    static BenchResult ResidualNorm(CudaBackend gpu, int version)
    {
        bool previous = gpu.ResidualNormKernel;
        gpu.ResidualNormKernel = version == 2;
        try
        {
            const int L = Tokens, C = Hidden;
            using var x = gpu.Zeros(1, L, C);
            using var y = gpu.Zeros(1, L, C);
            using var gate = gpu.Zeros(1, C);
            using var shift = gpu.Zeros(1, C);
            using var scale = gpu.Zeros(1, C);
            using var dMod = gpu.Zeros(1, L, C);
            using var dOut = gpu.Zeros(1, L, C);
            gpu.Fill(x, 1f);
            gpu.Fill(y, 2f);
            gpu.Fill(gate, 0.5f);
            gpu.Fill(shift, 0.25f);
            gpu.Fill(scale, 1f);
            gpu.Fill(dMod, 0.01f);
            gpu.Fill(dOut, 0.5f);
            (Tensor X1, Tensor M, Tensor S)? f = null;
            float fwd = gpu.TimeMs(() =>
            {
                if (f is var (a, b, s)) { a.Dispose(); b.Dispose(); s.Dispose(); }
                var (x1, m) = gpu.ResidualLayerNormModulate(x, gate, y, shift, scale, 1f, out var st);
                f = (x1, m, st);
            }, 5);
            var (fx1, fm, fst) = f!.Value;
            (Tensor Dx1, Tensor Dy, Tensor DGate, Tensor DShift, Tensor DScale)? g = null;
            float bwd = gpu.TimeMs(() =>
            {
                if (g is { } o) { o.Dx1.Dispose(); o.Dy.Dispose(); o.DGate.Dispose(); o.DShift.Dispose(); o.DScale.Dispose(); }
                g = gpu.ResidualLayerNormModulateBackward(dMod, dOut, fx1, scale, fst, gate, y);
            }, 5);
            var r = g!.Value;
            using (fx1) using (fm) using (fst) using (r.Dx1) using (r.Dy) using (r.DGate) using (r.DShift) using (r.DScale)
            {
                float dshift = HalfPrecision.RoundToBFloat16(L * HalfPrecision.RoundToBFloat16(0.01f));
                var checks = new[]
                {
                    Uniform("x1", gpu.Download(fx1), 2f, 0f),
                    Uniform("modulated", gpu.Download(fm), 0.25f, 0f),
                    Uniform("dx1", gpu.Download(r.Dx1), 0.5f, 1e-3f),
                    Uniform("dy", gpu.Download(r.Dy), 0.25f, 1e-3f),
                    Uniform("dgate", gpu.Download(r.DGate), L, L / 128f),
                    Uniform("dshift", gpu.Download(r.DShift), dshift, dshift / 128),
                    Uniform("dscale", gpu.Download(r.DScale), 0f, 1e-3f),
                };
                double bytesF = 4.0 * L * C * 2, bytesB = 6.0 * L * C * 2;
                return new BenchResult($"residual-norm v{version}",
                    [new($"forward ({bytesF / (fwd * 1e-3) / 1e9:F0} GB/s)", fwd, 0), new($"backward ({bytesB / (bwd * 1e-3) / 1e9:F0} GB/s)", bwd, 0)],
                    checks.All(c => c.Ok), string.Join("; ", checks.Select(c => c.Text)));
            }
        }
        finally { gpu.ResidualNormKernel = previous; }
    }
}
