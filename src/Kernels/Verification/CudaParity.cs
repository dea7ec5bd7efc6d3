using System.Diagnostics;
using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;

namespace MetaLoraNative.Kernels.Verification;

/// <summary>A named CUDA-vs-oracle check.</summary>
public sealed record ParityCheck(string Name, string Description, Action<ParityContext> Body)
{
    /// <summary>Runs the check on the given backends (the caller owns and disposes them). Never throws.</summary>
    public ParityResult Run(CudaBackend gpu, IBackend oracle)
    {
        var ctx = new ParityContext(gpu, oracle);
        var clock = Stopwatch.StartNew();
        string? failure = null;
        try { Body(ctx); }
        catch (Exception e) { failure = e is ParityFailure ? e.Message : $"{e.GetType().Name}: {e.Message}"; }
        var ms = ctx.Measures;
        if (failure == null && ms.Count == 0) failure = "the check made no comparison";
        var worst = ms.Count == 0 ? null : ms.OrderByDescending(ParityResult.Ratio).First();
        return new ParityResult(Name, worst?.Error ?? double.NaN, worst?.Allowed ?? double.NaN, worst?.Baseline ?? double.NaN,
                                failure == null && ms.All(m => m.Pass), ms, failure, clock.Elapsed);
    }
}

/// <summary>
/// Every CUDA parity check: the CUDA backend against the fp64 CPU oracle, op by op on random inputs (shapes
/// deliberately not multiples of the kernels' tiles), then the whole tiny model and a short Stage 2 run. Used by
/// the xunit tests (tests/.../Cuda/CudaParityTests.cs) and by `metalora check cuda`, so a machine that only has
/// the published binary runs exactly the same checks.
///
/// Tolerance rules (the FlashAttention rule, see docs/GPU.md):
/// - bf16 results: max|ours − ref| ≤ 2 · max|baseline − ref| + 2^-10 · max|ref|, where ref is the fp64 oracle on
///   the same bf16-exact inputs and the baseline is a plain bf16 computation of the same thing: for single ops the
///   oracle's result with every tensor that crosses an op boundary in bf16 on the GPU (the output, saved activations
///   fed to a backward) rounded to bf16; for the whole model the <see cref="Bf16EmulationBackend"/> (fp32 CPU
///   engine, same bf16 weights and inputs, every bf16 tensor rounded as the GPU stores it). The floor is a quarter
///   bf16 ulp at the largest value.
/// - fp32 results (Gemm into a Master c, AdamW, RoPE table, lse): max error ≤ rel · max|ref| (rel 1e-5 unless stated).
/// - Exact: Fill and the Split/Merge qkv round trip.
/// </summary>
public static partial class CudaParity
{
    /// <summary>The reference backend every check compares against.</summary>
    public static IBackend Oracle() => CpuBackend.F64();

    public static IReadOnlyList<ParityCheck> All => all ??= Build();
    static ParityCheck[]? all;

    public static ParityCheck Find(string name) =>
        All.FirstOrDefault(c => c.Name == name) ?? throw new ArgumentException($"no CUDA parity check named '{name}'");

    static ParityCheck[] Build()
    {
        var list = new List<ParityCheck>
        {
            new("gemm", "GEMM, all transposes, bf16 out and fp32 accumulation, fp32×fp32", Gemm),
            new("linear", "Linear with and without bias, and its input backward", Linear),
            new("elementwise", "axpy, scale, fp32→bf16 copy, fill", Elementwise),
            new("activations", "SiLU and tanh-GELU, forward and backward", Activations),
            new("layout", "narrow, add_narrow, concat on every axis; qkv split and merge", Layout),
            new("layernorm", "LayerNorm + modulation, forward and backward", LayerNorm),
            new("rmsnorm", "QK RMSNorm, forward and backward", RmsNorm),
            new("rope", "RoPE table, apply and backward", Rope),
        };
        foreach (var (b, h, l, d, f, k) in AttentionCases)
            list.Add(new($"attention {Tag(f)}/{Tag(k)} {b}x{h}x{l}x{d}",
                         $"joint attention ({f} forward, {k} backward kernels), B {b}, H {h}, L {l}, D {d}: output, lse, dq, dk, dv",
                         ctx => Attention(ctx, b, h, l, d, f, k)));
        list.AddRange(
        [
            new("timestep", "timestep embedding, forward and backward", Timestep),
            new("gated residual", "gated residual, forward and backward", GatedResidual),
            new("mse", "MSE loss, its gradient, sum of squares", Mse),
            new("adamw", "five AdamW steps of an fp32 master", AdamW),
            new("model forward", "tiny FLUX with a random Meta LoRA: output and loss vs fp64, baseline the bf16-emulating CPU engine", ModelForward),
            new("model lora grads", "tiny FLUX with a random Meta LoRA: every D, M, U gradient vs fp64, baseline the bf16-emulating CPU engine", ModelGradients),
            new("stage2 curve", $"{Stage2Iterations} Stage 2 iterations on the tiny model: loss curve and trained U vs fp64, baseline the bf16-emulating CPU engine", Stage2Curve),
        ]);
        return [.. list];
    }

    /// <summary>
    /// (B, H, L, D, forward kernel, backward kernel) of the attention checks. The tensor-core backward runs only for
    /// D = 128 (else the scalar one does, which the D 64 and 32 cases check); it is checked after both forwards, so a
    /// failure points at one kernel. Lengths are not multiples of the tiles (16, 32, 64), and 1 and 65 sit at the edges.
    /// </summary>
    public static readonly (int B, int H, int L, int D, AttentionKernel Forward, AttentionKernel Backward)[] AttentionCases =
    [
        (2, 3, 77, 64, AttentionKernel.Scalar, AttentionKernel.Scalar),
        (1, 2, 130, 128, AttentionKernel.Scalar, AttentionKernel.Scalar),
        (1, 1, 5, 32, AttentionKernel.Scalar, AttentionKernel.Scalar),
        (1, 3, 100, 24, AttentionKernel.Scalar, AttentionKernel.Scalar),
        (2, 3, 77, 64, AttentionKernel.TensorCore, AttentionKernel.Scalar),
        (1, 2, 130, 128, AttentionKernel.TensorCore, AttentionKernel.Scalar),
        (1, 1, 5, 32, AttentionKernel.TensorCore, AttentionKernel.Scalar),
        (1, 2, 300, 128, AttentionKernel.TensorCore, AttentionKernel.Scalar),
        (1, 2, 130, 128, AttentionKernel.Scalar, AttentionKernel.TensorCore),
        (2, 3, 77, 64, AttentionKernel.TensorCore, AttentionKernel.TensorCore),
        (1, 2, 130, 128, AttentionKernel.TensorCore, AttentionKernel.TensorCore),
        (1, 1, 5, 32, AttentionKernel.TensorCore, AttentionKernel.TensorCore),
        (1, 2, 300, 128, AttentionKernel.TensorCore, AttentionKernel.TensorCore),
        (1, 1, 1, 128, AttentionKernel.TensorCore, AttentionKernel.TensorCore),
        (2, 2, 65, 128, AttentionKernel.TensorCore, AttentionKernel.TensorCore),
    ];

    static string Tag(AttentionKernel k) => k == AttentionKernel.Scalar ? "scalar" : "tc";

    static float[] Rand(int n, int seed, float scale = 1f, float offset = 0f) => ParityContext.Rand(n, seed, scale, offset);
    static double[] RoundBf16(double[] v) => ParityContext.RoundBf16(v);

    // ---------------------------------------------------------------- matrix products

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

    // ---------------------------------------------------------------- elementwise

    static void Elementwise(ParityContext p)
    {
        float[] a = Rand(1000, 1), b = Rand(1000, 2);
        using var gacc = p.Gpu.Upload(a, [1000], Precision.Master);
        using var cacc = p.Cpu.Upload(a, [1000], Precision.Master);
        var (gx, cx) = p.Both(b, 1000);
        p.Gpu.AddInPlace(gacc, gx, 0.3f);
        p.Cpu.AddInPlace(cacc, cx, 0.3f);
        p.Gpu.ScaleInPlace(gacc, -1.5f);
        p.Cpu.ScaleInPlace(cacc, -1.5f);
        p.F32("axpy+scale fp32", gacc, cacc);

        using var gbf = p.Gpu.Zeros(1000);
        p.Gpu.Copy(gacc, gbf);   // fp32 -> bf16 rounds
        p.Bf16("copy fp32->bf16", gbf, cacc);
        p.Gpu.Fill(gbf, 0.1f);
        p.Exact("fill bf16", p.Gpu.Download(gbf), Enumerable.Repeat(Bf16Bits.Round(0.1f), 1000).ToArray());

        p.Gpu.AddInPlace(gx, gx, 1f);   // bf16 accumulator
        p.Cpu.AddInPlace(cx, cx, 1f);
        p.Bf16("axpy bf16", gx, cx);
    }

    static void Activations(ParityContext p)
    {
        var (gx, cx) = p.Both(Rand(3 * 1031, 1, 4f), 3, 1031);
        var (gdy, cdy) = p.Both(Rand(3 * 1031, 2), 3, 1031);
        foreach (var (name, gpu, cpu) in new (string, Func<Tensor>, Func<Tensor>)[]
                 {
                     ("silu", () => p.Gpu.Silu(gx), () => p.Cpu.Silu(cx)),
                     ("gelu", () => p.Gpu.GeluTanh(gx), () => p.Cpu.GeluTanh(cx)),
                     ("silu backward", () => p.Gpu.SiluBackward(gx, gdy), () => p.Cpu.SiluBackward(cx, cdy)),
                     ("gelu backward", () => p.Gpu.GeluTanhBackward(gx, gdy), () => p.Cpu.GeluTanhBackward(cx, cdy)),
                 })
        {
            using var gf = gpu();
            using var cf = cpu();
            p.Bf16(name, gf, cf);
        }
    }

    // ---------------------------------------------------------------- layout

    static void Layout(ParityContext p)
    {
        var (gx, cx) = p.Both(Rand(2 * 9 * 14, 1), 2, 9, 14);
        for (int axis = 0; axis < 3; axis++)
        {
            int len = gx.Shape[axis] / 2, start = gx.Shape[axis] - len;
            using var gn = p.Gpu.Narrow(gx, axis, start, len);
            using var cn = p.Cpu.Narrow(cx, axis, start, len);
            p.Bf16($"narrow axis {axis}", gn, cn);
            using var gd = p.Gpu.Zeros(gx.Shape);
            using var cd = p.Cpu.Zeros(cx.Shape);
            p.Gpu.AddNarrow(gd, gn, axis, start);
            p.Cpu.AddNarrow(cd, cn, axis, start);
            p.Gpu.AddNarrow(gd, gn, axis, 0);
            p.Cpu.AddNarrow(cd, cn, axis, 0);
            p.Bf16($"add_narrow axis {axis}", gd, cd);
            using var gc = p.Gpu.Concat(axis, gx, gn, gx);
            using var cc = p.Cpu.Concat(axis, cx, cn, cx);
            p.Bf16($"concat axis {axis}", gc, cc);
        }

        const int B = 2, L = 7, H = 3, D = 10;
        var (gqkv, cqkv) = p.Both(Rand(B * L * 3 * H * D, 2), B, L, 3 * H * D);
        var (gq, gk, gv) = p.Gpu.SplitQkv(gqkv, H);
        var (cq, ck, cv) = p.Cpu.SplitQkv(cqkv, H);
        p.Bf16("split q", gq, cq);
        p.Bf16("split k", gk, ck);
        p.Bf16("split v", gv, cv);
        using var gm = p.Gpu.MergeQkv(gq, gk, gv);
        p.Exact("merge qkv round trip", p.Gpu.Download(gm), p.Gpu.Download(gqkv));
    }

    // ---------------------------------------------------------------- normalisation

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

    // ---------------------------------------------------------------- position and attention

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

    // ---------------------------------------------------------------- conditioning and residuals

    static void Timestep(ParityContext p)
    {
        float[] t = [0f, 0.25f, 0.5f, 0.998f, 1f];
        var (gt, ct) = p.Both(t, 5);
        using var ge = p.Gpu.TimestepEmbedding(gt, 256);
        using var ce = p.Cpu.TimestepEmbedding(ct, 256);
        p.Bf16("timestep embedding", ge, ce);
        var (gdy, cdy) = p.Both(Rand(5 * 256, 1, 1e-3f), 5, 256);
        using var gdt = p.Gpu.TimestepEmbeddingBackward(gt, gdy);
        using var cdt = p.Cpu.TimestepEmbeddingBackward(ct, cdy);
        p.Bf16("timestep embedding backward", gdt, cdt);
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

    // ---------------------------------------------------------------- objective and optimiser

    static void Mse(ParityContext p)
    {
        var (gp, cp) = p.Both(Rand(3 * 4099, 1), 3, 4099);
        var (gt, ct) = p.Both(Rand(3 * 4099, 2), 3, 4099);
        double gl = p.Gpu.MseLoss(gp, gt, out var gd);
        double cl = p.Cpu.MseLoss(cp, ct, out var cd);
        p.Scalar("mse loss", gl, cl, cl * 1e-7);   // fp64 sums of fp32 differences of the same bf16 inputs
        p.Bf16("mse dpred", gd, cd);
        double css = p.Cpu.SumSquares(cp);
        p.Scalar("sum of squares bf16", p.Gpu.SumSquares(gp), css, 1e-9 * css);
        float[] g = Rand(5000, 3);
        using var gm = p.Gpu.Upload(g, [5000], Precision.Master);
        double exact = g.Sum(v => (double)v * v);
        p.Scalar("sum of squares fp32", p.Gpu.SumSquares(gm), exact, 1e-9 * exact);
        // the many-tensor form (one read-back) must agree with the sum of single reductions
        p.Scalar("sum of squares, list", p.Gpu.SumSquares([gp, gm, gp]), 2 * css + exact, 1e-9 * (2 * css + exact));
    }

    static void AdamW(ParityContext p)
    {
        const int n = 3001;
        float[] w = Rand(n, 1), grad = Rand(n, 2, 0.1f);
        using var gw = p.Gpu.Upload(w, [n], Precision.Master);
        using var cw = p.Cpu.Upload(w, [n], Precision.Master);
        using var gg = p.Gpu.Upload(grad, [n], Precision.Master);
        using var cg = p.Cpu.Upload(grad, [n], Precision.Master);
        using var gm = p.Gpu.Zeros([n], Precision.Master);
        using var gv = p.Gpu.Zeros([n], Precision.Master);
        using var cm = p.Cpu.Zeros([n], Precision.Master);
        using var cv = p.Cpu.Zeros([n], Precision.Master);
        for (int step = 1; step <= 5; step++)
        {
            var s = new AdamWStep(step, 4e-4f, GradScale: 0.5f);
            p.Gpu.AdamW(gw, gg, gm, gv, s);
            p.Cpu.AdamW(cw, cg, cm, cv, s);
        }
        p.F32("adamw param", gw, cw, 1e-5);
        p.F32("adamw m", gm, cm, 1e-5);
        p.F32("adamw v", gv, cv, 1e-4);
    }
}
