using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Flux;

namespace MetaLoraNative.Kernels.Verification;

// The parity checks of the GELU fusions (Fusions.GeluEpilogue; Dev/CudaBackend.GeluFusion.cs), in CudaParity.Dev:
// `metalora check cuda --dev`. Small cases against the fp64 oracle (the fused op's CPU reference); FLUX.1-dev's MLP and
// single-block shapes against the engine's unfused sequence on the same GPU (the oracle being too slow there).
public static partial class CudaParity
{
    /// <summary>(M, K, N, bias, c0) of the GELU-fused products: M rows, d_in K, d_out N. The last routes to our skinny kernels (N 12), so the unfused fallback runs.</summary>
    public static readonly (int M, int K, int N, bool Bias, bool C0, bool Fused)[] GeluEpilogueCases =
    [
        (77, 64, 96, true, true, true),
        (77, 64, 96, false, false, true),
        (64, 128, 256, true, false, true),
        (33, 96, 64, false, true, true),
        (5, 64, 12, true, true, false),
    ];

    /// <summary>FLUX.1-dev's MLP at 1024², B = 1: 4,608 tokens (both streams' rows together), C 3,072 → mlp 12,288.</summary>
    public static readonly (int M, int C, int Mlp) GeluAtScale = (4608, 3072, 12288);

    static IEnumerable<ParityCheck> GeluEpilogueChecks() =>
    [
        .. GeluEpilogueCases.Select(c => new ParityCheck(
            $"gelu-epilogue {c.M}x{c.K}->{c.N}{(c.Bias ? " bias" : "")}{(c.C0 ? " c0" : "")}",
            $"LinearGelu (pre, act) and LinearBackwardGelu (dPre) vs fp64, {(c.Fused ? "the cuBLASLt GELU_AUX/DGELU epilogues" : "the unfused fallback (skinny route)")}",
            p => GeluEpilogueSmall(p, c))),
        new ParityCheck($"gelu-epilogue vs unfused {GeluAtScale.M}x{GeluAtScale.C}->{GeluAtScale.Mlp}",
            "the cuBLASLt GELU epilogues against the engine's Linear, axpy, gelu sequence on the GPU at FLUX.1-dev's MLP shape, with bias and a LoRA term",
            GeluEpilogueAtScale) { Slow = true },
    ];

    static void GeluEpilogueSmall(ParityContext p, (int M, int K, int N, bool Bias, bool C0, bool Fused) c)
    {
        var gpu = p.Gpu;
        var (gx, cx) = p.Both(Rand(c.M * c.K, 1), c.M, c.K);
        var (gw, cw) = p.Both(Rand(c.N * c.K, 2, 1f / MathF.Sqrt(c.K)), c.N, c.K);
        var (gb, cb) = p.Both(Rand(c.N, 3), c.N);
        var (gc, cc) = p.Both(Rand(c.M * c.N, 4, 0.5f), c.M, c.N);
        var (gdy, cdy) = p.Both(Rand(c.M * c.K, 5), c.M, c.K);
        var (gw2, cw2) = p.Both(Rand(c.K * c.N, 6, 1f / MathF.Sqrt(c.N)), c.K, c.N);
        var (gd, cd) = p.Both(Rand(c.M * c.N, 7, 0.5f), c.M, c.N);
        using var _ = new DisposeAll(gx, cx, gw, cw, gb, cb, gc, cc, gdy, cdy, gw2, cw2, gd, cd);
        var before = gpu.GeluEpilogueCounts;

        var (gpre, gact) = gpu.LinearGelu(gx, gw, c.Bias ? gb : null, c.C0 ? gc : null);
        var (cpre, cact) = p.Cpu.LinearGelu(cx, cw, c.Bias ? cb : null, c.C0 ? cc : null);
        // the backward reads the GPU's pre (bf16) on both sides, so it is checked on its own
        using var cpreG = p.Cpu.Upload(gpu.DownloadDouble(gpre), gpre.Shape);
        using var gdPre = gpu.LinearBackwardGelu(gdy, gw2, gpre, c.C0 ? gd : null);
        using var cdPre = p.Cpu.LinearBackwardGelu(cdy, cw2, cpreG, c.C0 ? cd : null);
        using var __ = new DisposeAll(gpre, gact, cpre, cact);
        p.Bf16("pre", gpre, cpre);
        p.Bf16("act", gact, cact);
        p.Bf16("dPre", gdPre, cdPre);
        var after = gpu.GeluEpilogueCounts;
        int fused = after.Fused - before.Fused, unfused = after.Unfused - before.Unfused;
        ParityContext.Require(c.Fused ? fused == 2 && unfused == 0 : fused == 0 && unfused == 2,
            $"expected {(c.Fused ? "the epilogue" : "the unfused fallback")} for both products; {fused} fused, {unfused} unfused ran");
    }

    static void GeluEpilogueAtScale(ParityContext p)
    {
        var gpu = p.Gpu;
        var (m, cIn, mlp) = GeluAtScale;
        bool previous = gpu.UseGeluEpilogue;
        using var x = gpu.Upload(Rand(m * cIn, 1), m, cIn);
        using var w0 = gpu.Upload(Rand(mlp * cIn, 2, 1f / MathF.Sqrt(cIn)), mlp, cIn);
        using var b0 = gpu.Upload(Rand(mlp, 3), mlp);
        using var delta = gpu.Upload(Rand(m * mlp, 4, 0.1f), m, mlp);
        using var dy = gpu.Upload(Rand(m * cIn, 5), m, cIn);
        using var w2 = gpu.Upload(Rand(cIn * mlp, 6, 1f / MathF.Sqrt(mlp)), cIn, mlp);
        using var loraDx = gpu.Upload(Rand(m * mlp, 7, 0.1f), m, mlp);
        try
        {
            var before = gpu.GeluEpilogueCounts;
            gpu.UseGeluEpilogue = true;
            var (fpre, fact) = gpu.LinearGelu(x, w0, b0, delta);
            using var fdPre = gpu.LinearBackwardGelu(dy, w2, fpre, loraDx);
            ParityContext.Require(gpu.GeluEpilogueCounts.Fused - before.Fused == 2, "the epilogue did not run at FLUX.1-dev's shape (heuristic refused?)");
            gpu.UseGeluEpilogue = false;
            var (upre, uact) = gpu.LinearGelu(x, w0, b0, delta);
            using var udPre = gpu.LinearBackwardGelu(dy, w2, fpre, loraDx);   // the same pre: only the backward differs
            using var _ = new DisposeAll(fpre, fact, upre, uact);
            p.Bf16AgainstKernel("pre (epilogue vs unfused)", fpre, upre);
            p.Bf16AgainstKernel("act (epilogue vs unfused)", fact, uact);
            p.Bf16AgainstKernel("dPre (epilogue vs unfused)", fdPre, udPre);
        }
        finally
        {
            gpu.UseGeluEpilogue = previous;
        }
    }

    /// <summary>
    /// (rows, source ld, source column, destination ld, destination column, columns) of the strided GELU checks: the
    /// first two take the 16-byte kernels (every offset and ld a multiple of 8), the others the scalar ones.
    /// </summary>
    public static readonly (int Rows, int SrcLd, int SrcCol, int DstLd, int DstCol, int Cols)[] GeluStridedCases =
    [
        (37, 160, 96, 96, 32, 64),
        (5, 24, 8, 16, 8, 8),
        (37, 61, 13, 50, 5, 37),
        (3, 10, 0, 7, 2, 5),
    ];

    static IEnumerable<ParityCheck> GeluStridedChecks() =>
    [
        .. GeluStridedCases.Select(c => new ParityCheck(
            $"gelu strided {c.Rows}x{c.Cols} ({c.SrcLd}+{c.SrcCol} -> {c.DstLd}+{c.DstCol})",
            $"GeluTanhSlice and GeluTanhBackwardSlice (kernels/dev/gelu/02_strided.cu, {(c.Cols % 8 == 0 && c.SrcLd % 8 == 0 && c.DstLd % 8 == 0 && c.SrcCol % 8 == 0 && c.DstCol % 8 == 0 ? "16-byte" : "scalar")} form) vs fp64; the rest of the destination untouched",
            p => GeluStridedSmall(p, c))),
        new ParityCheck("gelu strided vs whole 4608x(3C+mlp) -> (C+mlp)",
            "the strided GELU and its backward on the single block's slices at FLUX.1-dev's width against the engine's kernels on narrowed copies",
            GeluStridedAtScale) { Slow = true },
    ];

    static void GeluStridedSmall(ParityContext p, (int Rows, int SrcLd, int SrcCol, int DstLd, int DstCol, int Cols) c)
    {
        var (gx, cx) = p.Both(Rand(c.Rows * c.SrcLd, 1, 3f), c.Rows, c.SrcLd);
        var (gy, cy) = p.Both(Rand(c.Rows * c.DstLd, 2), c.Rows, c.DstLd);     // random: what lies outside the block must stay
        var (gdy, cdy) = p.Both(Rand(c.Rows * c.DstLd, 3), c.Rows, c.DstLd);
        var (gdx, cdx) = p.Both(Rand(c.Rows * c.SrcLd, 4), c.Rows, c.SrcLd);
        using var _ = new DisposeAll(gx, cx, gy, cy, gdy, cdy, gdx, cdx);
        MatrixSlice Src(Tensor t) => MatrixSlice.ColumnsOf(t, c.SrcCol, c.Cols);
        MatrixSlice Dst(Tensor t) => MatrixSlice.ColumnsOf(t, c.DstCol, c.Cols);
        p.Gpu.GeluTanhSlice(Src(gx), Dst(gy));
        p.Cpu.GeluTanhSlice(Src(cx), Dst(cy));
        p.Bf16("gelu slice (whole destination)", gy, cy);
        p.Gpu.GeluTanhBackwardSlice(Src(gx), Dst(gdy), Src(gdx));
        p.Cpu.GeluTanhBackwardSlice(Src(cx), Dst(cdy), Src(cdx));
        p.Bf16("gelu backward slice (whole destination)", gdx, cdx);
    }

    static void GeluStridedAtScale(ParityContext p)
    {
        var gpu = p.Gpu;
        const int rows = 4608, c = 3072, mlp = 12288;
        using var lin1 = gpu.Upload(Rand(rows * (3 * c + mlp), 1, 3f), rows, 3 * c + mlp);
        using var dcat = gpu.Upload(Rand(rows * (c + mlp), 2), rows, c + mlp);
        using var cat = gpu.Zeros(rows, c + mlp);
        using var dlin1 = gpu.Zeros(rows, 3 * c + mlp);
        gpu.GeluTanhSlice(MatrixSlice.ColumnsOf(lin1, 3 * c, mlp), MatrixSlice.ColumnsOf(cat, c, mlp));
        gpu.GeluTanhBackwardSlice(MatrixSlice.ColumnsOf(lin1, 3 * c, mlp), MatrixSlice.ColumnsOf(dcat, c, mlp), MatrixSlice.ColumnsOf(dlin1, 3 * c, mlp));
        using var mlpIn = gpu.Narrow(lin1, -1, 3 * c, mlp);
        using var dAct = gpu.Narrow(dcat, -1, c, mlp);
        using var act = gpu.GeluTanh(mlpIn);
        using var dMlpIn = gpu.GeluTanhBackward(mlpIn, dAct);
        using var catMlp = gpu.Narrow(cat, -1, c, mlp);
        using var dlin1Mlp = gpu.Narrow(dlin1, -1, 3 * c, mlp);
        p.Bf16AgainstKernel("gelu slice vs gelu_tanh_forward", catMlp, act);
        p.Bf16AgainstKernel("gelu backward slice vs gelu_tanh_backward", dlin1Mlp, dMlpIn);
        using var catAttn = gpu.Narrow(cat, -1, 0, c);
        ParityContext.Require(gpu.Download(catAttn).All(v => v == 0), "the strided GELU wrote outside its block");
    }

    static IEnumerable<ParityCheck> GeluModelChecks() =>
    [
        new("model gelu fused", "tiny FLUX with Fusions.GeluEpilogue and a random Meta LoRA: output, loss and every D, M, U gradient vs the fp64 unfused model, baseline the bf16-emulating CPU engine with the same fusion",
            p =>
            {
                var gpu = RunModel(p.Gpu, TinyCase, Fusions.GeluEpilogue);
                var reference = RunModel(p.Cpu, TinyCase, Fusions.None);
                using var emulation = new Bf16EmulationBackend();
                var emulated = RunModel(emulation, TinyCase, Fusions.GeluEpilogue);
                CompareOutputs(p, "tiny model (gelu fused)", gpu, reference, emulated);
                CompareGradients(p, gpu, reference, emulated);
            }),
    ];

    /// <summary>Disposes a check's tensors in one using.</summary>
    sealed class DisposeAll(params IDisposable?[] items) : IDisposable
    {
        public void Dispose()
        {
            foreach (var d in items) d?.Dispose();
        }
    }
}

// The benches of the GELU fusions, in KernelBenches.Dev, each beside version 1 (the engine's unfused ops) at FLUX.1-dev's
// MLP and single-block shapes.
public static partial class KernelBenches
{
    /// <summary>M rows (tokens), C the hidden size (the MLP's d_in), Mlp its hidden size (d_out).</summary>
    public readonly record struct GeluBenchShape(int M, int C, int Mlp);

    /// <summary>FLUX.1-dev at 1024², B 1: 4,608 tokens, C 3,072, mlp 12,288.</summary>
    public static GeluBenchShape GeluFluxDev { get; } = new(Tokens, Hidden, 4 * Hidden);

    static IEnumerable<KernelBench> GeluBenches() =>
    [
        new("gelu-epilogue v1", $"LinearGelu and LinearBackwardGelu unfused (Linear, axpy, gelu_tanh; the engine's ops), ({GeluFluxDev.M}, {GeluFluxDev.C}) -> {GeluFluxDev.Mlp}, bias and LoRA term",
            gpu => GeluEpilogue(gpu, GeluFluxDev, 1, gpu.TimeMs)),
        new("gelu-epilogue v2", $"LinearGelu and LinearBackwardGelu as one cuBLASLt call each (GELU_AUX_BIAS / DGELU epilogues), ({GeluFluxDev.M}, {GeluFluxDev.C}) -> {GeluFluxDev.Mlp}",
            gpu => GeluEpilogue(gpu, GeluFluxDev, 2, gpu.TimeMs)),
        new("gelu strided v1", $"the single block's GELU join unfused (Narrow, gelu_tanh, Concat and back), ({GeluFluxDev.M}, 3C + mlp) -> (C + mlp), C {GeluFluxDev.C}, mlp {GeluFluxDev.Mlp}",
            gpu => GeluStrided(gpu, GeluFluxDev, 1, gpu.TimeMs)),
        new("gelu strided v2", $"the same join with the strided GELU (kernels/dev/gelu/02_strided.cu) on linear1's and cat's column blocks",
            gpu => GeluStrided(gpu, GeluFluxDev, 2, gpu.TimeMs)),
    ];

    /// <summary>BFL's tanh GELU and its derivative, in fp64 (the closed forms' reference).</summary>
    internal static double GeluTanh(double v) => 0.5 * v * (1 + Math.Tanh(Math.Sqrt(2 / Math.PI) * (v + 0.044715 * v * v * v)));

    internal static double GeluTanhGrad(double v)
    {
        double k = Math.Sqrt(2 / Math.PI), t = Math.Tanh(k * (v + 0.044715 * v * v * v));
        return 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * k * (1 + 3 * 0.044715 * v * v);
    }

    /// <summary>
    /// x = w0 = 2⁻⁶, bias 0.5, LoRA term c0 = 0.25: pre = C · 2⁻¹² + 0.75 (1.5 at C 3,072) and act = gelu(pre) in every
    /// cell. Backward with dy = w2 = 2⁻⁶ and LoRA term 0.25 on the forward's pre: dAct = C · 2⁻¹² + 0.25, dPre =
    /// gelu'(pre) · dAct. The inputs and pre are exact in bf16; each output carries one bf16 rounding (half an ulp,
    /// at most expected/256), allowed expected/128. TFLOP/s of the product (2 · M · C · mlp each way).
    /// </summary>
    internal static BenchResult GeluEpilogue(IBackend be, GeluBenchShape s, int version, BenchTimer time)
    {
        var gpu = be as CudaBackend;
        bool previous = gpu?.UseGeluEpilogue ?? true;
        if (gpu != null) gpu.UseGeluEpilogue = version == 2;
        var owned = new List<Tensor>();
        Tensor Filled(float value, params int[] shape) { var t = be.Zeros(shape); be.Fill(t, value); owned.Add(t); return t; }
        try
        {
            var before = gpu?.GeluEpilogueCounts ?? default;
            var x = Filled(1f / 64, 1, s.M, s.C);
            var w0 = Filled(1f / 64, s.Mlp, s.C);
            var b0 = Filled(0.5f, s.Mlp);
            var c0 = Filled(0.25f, 1, s.M, s.Mlp);
            var dy = Filled(1f / 64, 1, s.M, s.C);
            var w2 = Filled(1f / 64, s.C, s.Mlp);
            var loraDx = Filled(0.25f, 1, s.M, s.Mlp);
            (Tensor Pre, Tensor Act)? f = null;
            float fwd = time(() =>
            {
                if (f is var (p, a)) { p.Dispose(); a.Dispose(); }
                f = be.LinearGelu(x, w0, b0, c0);
            }, 5);
            var (pre, act) = f!.Value;
            owned.Add(pre);
            owned.Add(act);
            Tensor? dPre = null;
            float bwd = time(() => { dPre?.Dispose(); dPre = be.LinearBackwardGelu(dy, w2, pre, loraDx); }, 5);
            owned.Add(dPre!);
            double p0 = s.C / 4096.0 + 0.75, a0 = GeluTanh(p0), d0 = GeluTanhGrad(p0) * (s.C / 4096.0 + 0.25);
            var checks = new List<(bool Ok, string Text)>
            {
                Uniform("pre", be.Download(pre), (float)p0, (float)(p0 / 128)),
                Uniform("act", be.Download(act), (float)a0, (float)(a0 / 128)),
                Uniform("dPre", be.Download(dPre!), (float)d0, (float)(d0 / 128)),
            };
            if (gpu != null)
            {
                var after = gpu.GeluEpilogueCounts;
                int fused = after.Fused - before.Fused, unfused = after.Unfused - before.Unfused;
                bool ok = version == 2 ? unfused == 0 : fused == 0;
                checks.Add((ok, $"{fused} fused, {unfused} unfused products ({(ok ? "ok" : version == 2 ? "FAIL, the epilogue was refused" : "FAIL, the epilogue ran")})"));
            }
            double flop = 2.0 * s.M * s.C * s.Mlp;
            return new BenchResult($"gelu-epilogue v{version}",
                [new("forward", fwd, flop / (fwd * 1e-3) / 1e12), new("backward", bwd, flop / (bwd * 1e-3) / 1e12)],
                checks.All(c => c.Ok), string.Join("; ", checks.Select(c => c.Text)));
        }
        finally
        {
            if (gpu != null) gpu.UseGeluEpilogue = previous;
            foreach (var t in owned) t.Dispose();
        }
    }

    /// <summary>
    /// The single block's join of attention and GELU, forward and backward, as the model issues it. Version 1 (no
    /// Fusions.GeluEpilogue): mlpIn = Narrow(lin1, 3C, mlp), cat = Concat(attn, gelu(mlpIn)); back: dlin1 = Concat(d qkv,
    /// gelu'(mlpIn) · Narrow(dcat, C, mlp)). Version 2 (SingleBlock.SlicedCat): cat uninitialised (Empty), cat[:, :C] = attn
    /// (CopyNarrow), the strided GELU of lin1's columns into cat's; back: dlin1 uninitialised, the strided backward into
    /// its columns [3C, 3C + mlp), dlin1[:, :3C] = d qkv. lin1 = 1.5, attn = 0.25, dcat = 0.5, d qkv = 0.125, so cat is 0.25 then gelu(1.5) and dlin1
    /// 0.125 then gelu'(1.5) · 0.5 (each GELU value rounded to bf16 once, allowed expected/128; the copies exact).
    /// GB/s of the tensors the join needs: forward reads lin1's mlp columns and attn and writes cat (2 · M · (C + mlp)
    /// bf16), backward reads lin1's and dcat's mlp columns and d qkv and writes dlin1 (M · (3 mlp + 6C) bf16).
    /// </summary>
    internal static BenchResult GeluStrided(IBackend be, GeluBenchShape s, int version, BenchTimer time)
    {
        var (m, c, mlp) = (s.M, s.C, s.Mlp);
        var owned = new List<Tensor>();
        Tensor Filled(float value, params int[] shape) { var t = be.Zeros(shape); be.Fill(t, value); owned.Add(t); return t; }
        try
        {
            var lin1 = Filled(1.5f, 1, m, 3 * c + mlp);
            var attn = Filled(0.25f, 1, m, c);
            var dCat = Filled(0.5f, 1, m, c + mlp);
            var dQkv = Filled(0.125f, 1, m, 3 * c);
            var mlpIn = be.Narrow(lin1, -1, 3 * c, mlp);   // version 1's saved activation
            owned.Add(mlpIn);
            Tensor? cat = null, dLin1 = null;
            float fwd = time(() =>
            {
                cat?.Dispose();
                if (version == 2)
                {
                    cat = be.Empty(1, m, c + mlp);
                    be.CopyNarrow(cat, attn, -1, 0);
                    be.GeluTanhSlice(MatrixSlice.ColumnsOf(lin1, 3 * c, mlp), MatrixSlice.ColumnsOf(cat, c, mlp));
                }
                else
                {
                    using var input = be.Narrow(lin1, -1, 3 * c, mlp);
                    using var a = be.GeluTanh(input);
                    cat = be.Concat(-1, attn, a);
                }
            }, 5);
            owned.Add(cat!);
            float bwd = time(() =>
            {
                dLin1?.Dispose();
                if (version == 2)
                {
                    dLin1 = be.Empty(1, m, 3 * c + mlp);
                    be.GeluTanhBackwardSlice(MatrixSlice.ColumnsOf(lin1, 3 * c, mlp), MatrixSlice.ColumnsOf(dCat, c, mlp),
                                             MatrixSlice.ColumnsOf(dLin1, 3 * c, mlp));
                    be.CopyNarrow(dLin1, dQkv, -1, 0);
                }
                else
                {
                    using var dAct = be.Narrow(dCat, -1, c, mlp);
                    using var dMlpIn = be.GeluTanhBackward(mlpIn, dAct);
                    dLin1 = be.Concat(-1, dQkv, dMlpIn);
                }
            }, 5);
            owned.Add(dLin1!);
            float g = (float)GeluTanh(1.5), dg = (float)(GeluTanhGrad(1.5) * 0.5);
            float[] catValues = be.Download(cat!), dValues = be.Download(dLin1!);
            var checks = new[]
            {
                Uniform("cat[:, :C]", Columns(catValues, c + mlp, 0, c), 0.25f, 0f),
                Uniform("cat[:, C:]", Columns(catValues, c + mlp, c, mlp), g, g / 128),
                Uniform("dlin1[:, :3C]", Columns(dValues, 3 * c + mlp, 0, 3 * c), 0.125f, 0f),
                Uniform("dlin1[:, 3C:]", Columns(dValues, 3 * c + mlp, 3 * c, mlp), dg, dg / 128),
            };
            double bytesF = 2.0 * m * (c + mlp) * 2, bytesB = (double)m * (3 * mlp + 6 * c) * 2;
            return new BenchResult($"gelu strided v{version}",
                [new($"forward ({bytesF / (fwd * 1e-3) / 1e9:F0} GB/s)", fwd, 0), new($"backward ({bytesB / (bwd * 1e-3) / 1e9:F0} GB/s)", bwd, 0)],
                checks.All(x => x.Ok), string.Join("; ", checks.Select(x => x.Text)));
        }
        finally
        {
            foreach (var t in owned) t.Dispose();
        }
    }

    /// <summary>Columns [start, start + count) of every row of a row-major matrix of <paramref name="ld"/> columns.</summary>
    internal static float[] Columns(float[] values, int ld, int start, int count)
    {
        int rows = values.Length / ld;
        var r = new float[(long)rows * count];
        for (int i = 0; i < rows; i++) Array.Copy(values, (long)i * ld + start, r, (long)i * count, count);
        return r;
    }
}
