using MetaLoraNative.Engine;
using MetaLoraNative.Kernels;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cuda;

/// <summary>
/// CUDA vs the fp64 CPU oracle, one test per op family, on random inputs (shapes deliberately not multiples of
/// the kernels' tiles). Inputs are rounded to bf16 before they reach either backend, so both see the same values.
///
/// Tolerance rule (FlashAttention's): with ref the oracle's result, our max |error| must be at most twice the max
/// |error| of a plain bf16 computation plus a floor of 2^-10 · max|ref| (a quarter bf16 ulp at the largest value).
/// The plain bf16 computation is the oracle run on the same bf16 inputs, with every tensor that crosses an op
/// boundary in bf16 on the GPU (the output, and saved activations fed to a backward) rounded to bf16: the error any
/// honest bf16 implementation carries. fp32 results (Gemm into a Master c, AdamW) must match to 1e-5 relative.
///
/// Skips, saying why, without a CUDA GPU or while the oracle is not wired (see Oracle.cs).
/// </summary>
public class CudaParityTests(ITestOutputHelper output)
{
    sealed class Pair(CudaBackend gpu, IBackend cpu) : IDisposable
    {
        public CudaBackend Gpu { get; } = gpu;
        public IBackend Cpu { get; } = cpu;
        public void Dispose()
        {
            Gpu.Dispose();
            Cpu.Dispose();
        }
    }

    Pair Open()
    {
        bool ok = CudaBackend.TryCreate(out var gpu, out string reason);
        if (!ok) output.WriteLine($"skipped: {reason}");
        Skip.IfNot(ok, reason);
        try
        {
            return new Pair(gpu!, Oracle.Cpu());
        }
        catch (NotImplementedException e)
        {
            gpu!.Dispose();
            output.WriteLine($"skipped: oracle not wired ({e.Message})");
            Skip.If(true, $"oracle not wired: {e.Message}");
            throw;
        }
    }

    // ---------------------------------------------------------------- helpers

    static float[] Rand(int n, int seed, float scale = 1f, float offset = 0f)
    {
        var rng = new Random(seed);
        var v = new float[n];
        for (int i = 0; i < n; i++) v[i] = Bf16Bits.Round(offset + scale * (float)(rng.NextDouble() * 2 - 1));
        return v;
    }

    static double[] RoundBf16(double[] v) => Array.ConvertAll(v, x => (double)Bf16Bits.Round((float)x));
    static float[] RoundBf16(float[] v) => Array.ConvertAll(v, Bf16Bits.Round);

    /// <summary>Uploads the same values to both backends (bf16-exact, so both hold identical inputs).</summary>
    static (Tensor G, Tensor C) Both(Pair p, float[] values, params int[] shape) =>
        (p.Gpu.Upload(values, shape), p.Cpu.Upload(values, shape));

    void AssertBf16(string what, Tensor ours, double[] reference, double[] baseline)
    {
        float[] o = ours.Backend.Download(ours);
        Assert.Equal(reference.Length, o.Length);
        double errOurs = 0, errBase = 0, maxRef = 0;
        for (int i = 0; i < o.Length; i++)
        {
            Assert.False(double.IsNaN(o[i]), $"{what}: NaN at {i}");
            errOurs = Math.Max(errOurs, Math.Abs(o[i] - reference[i]));
            errBase = Math.Max(errBase, Math.Abs(baseline[i] - reference[i]));
            maxRef = Math.Max(maxRef, Math.Abs(reference[i]));
        }
        double floor = maxRef / 1024 + 1e-30;
        output.WriteLine($"{what}: ours {errOurs:E3}, bf16 baseline {errBase:E3}, floor {floor:E3}, max|ref| {maxRef:E3}");
        Assert.True(errOurs <= 2 * errBase + floor, $"{what}: error {errOurs:E3} > 2 × {errBase:E3} + {floor:E3}");
    }

    /// <summary>Output-rounding baseline: the oracle's result rounded to bf16.</summary>
    void AssertBf16(string what, Tensor ours, Tensor reference)
    {
        double[] r = reference.Backend.DownloadDouble(reference);
        AssertBf16(what, ours, r, RoundBf16(r));
    }

    void AssertF32(string what, Tensor ours, Tensor reference, double rel = 1e-5)
    {
        float[] o = ours.Backend.Download(ours);
        double[] r = reference.Backend.DownloadDouble(reference);
        double maxRef = r.Length == 0 ? 0 : r.Max(Math.Abs), err = 0;
        for (int i = 0; i < o.Length; i++) err = Math.Max(err, Math.Abs(o[i] - r[i]));
        output.WriteLine($"{what}: max error {err:E3}, max|ref| {maxRef:E3}");
        Assert.True(err <= rel * maxRef + 1e-12, $"{what}: fp32 error {err:E3} > {rel} × {maxRef:E3}");
    }

    /// <summary>Re-uploads an oracle tensor rounded to bf16 (the value the GPU keeps between ops).</summary>
    static Tensor RoundedCopy(IBackend cpu, Tensor t) =>
        cpu.Upload(RoundBf16(cpu.Download(t)), t.Shape);

    // ---------------------------------------------------------------- matrix products

    [SkippableFact]
    public void GemmAllTransposesAndPrecisions()
    {
        using var p = Open();
        const int M = 37, K = 70, N = 45;
        foreach (bool ta in new[] { false, true })
            foreach (bool tb in new[] { false, true })
            {
                int[] sa = ta ? [K, M] : [M, K], sb = tb ? [N, K] : [K, N];
                var (ga, ca) = Both(p, Rand(M * K, 1), sa);
                var (gb, cb) = Both(p, Rand(K * N, 2), sb);
                using var gc = p.Gpu.Zeros(M, N);
                using var cc = p.Cpu.Zeros(M, N);
                p.Gpu.Gemm(ga, ta, gb, tb, gc, 0.5f);
                p.Cpu.Gemm(ca, ta, cb, tb, cc, 0.5f);
                AssertBf16($"gemm ta={ta} tb={tb}", gc, cc);

                // Accumulating into an fp32 master (LoRA gradient style): c = 1·a·b + 1·c.
                float[] init = Rand(M * N, 3);
                using var gm = p.Gpu.Upload(init, [M, N], Precision.Master);
                using var cm = p.Cpu.Upload(init, [M, N], Precision.Master);
                p.Gpu.Gemm(ga, ta, gb, tb, gm, 1f, 1f);
                p.Cpu.Gemm(ca, ta, cb, tb, cm, 1f, 1f);
                AssertF32($"gemm into fp32 ta={ta} tb={tb}", gm, cm, 1e-4);
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
        AssertF32("gemm fp32", gz, cz, 1e-5);
    }

    [SkippableFact]
    public void LinearWithBiasAndBackward()
    {
        using var p = Open();
        var (gx, cx) = Both(p, Rand(2 * 19 * 48, 1), 2, 19, 48);
        var (gw, cw) = Both(p, Rand(40 * 48, 2, 0.2f), 40, 48);
        var (gb, cb) = Both(p, Rand(40, 3), 40);
        using var gy = p.Gpu.Linear(gx, gw, gb);
        using var cy = p.Cpu.Linear(cx, cw, cb);
        Assert.Equal(new[] { 2, 19, 40 }, gy.Shape);
        AssertBf16("linear+bias", gy, cy);
        using var gy0 = p.Gpu.Linear(gx, gw, null);
        using var cy0 = p.Cpu.Linear(cx, cw, null);
        AssertBf16("linear", gy0, cy0);
        var (gdy, cdy) = Both(p, Rand(2 * 19 * 40, 4), 2, 19, 40);
        using var gdx = p.Gpu.LinearBackward(gdy, gw);
        using var cdx = p.Cpu.LinearBackward(cdy, cw);
        AssertBf16("linear backward", gdx, cdx);
    }

    // ---------------------------------------------------------------- elementwise

    [SkippableFact]
    public void FillCopyAxpyScale()
    {
        using var p = Open();
        float[] a = Rand(1000, 1), b = Rand(1000, 2);
        using var gacc = p.Gpu.Upload(a, [1000], Precision.Master);
        using var cacc = p.Cpu.Upload(a, [1000], Precision.Master);
        var (gx, cx) = Both(p, b, 1000);
        p.Gpu.AddInPlace(gacc, gx, 0.3f);
        p.Cpu.AddInPlace(cacc, cx, 0.3f);
        p.Gpu.ScaleInPlace(gacc, -1.5f);
        p.Cpu.ScaleInPlace(cacc, -1.5f);
        AssertF32("axpy+scale fp32", gacc, cacc);

        using var gbf = p.Gpu.Zeros(1000);
        p.Gpu.Copy(gacc, gbf);   // fp32 -> bf16 rounds
        AssertBf16("copy fp32->bf16", gbf, cacc);
        p.Gpu.Fill(gbf, 0.1f);
        Assert.All(p.Gpu.Download(gbf), v => Assert.Equal(Bf16Bits.Round(0.1f), v));

        p.Gpu.AddInPlace(gx, gx, 1f);   // bf16 accumulator
        p.Cpu.AddInPlace(cx, cx, 1f);
        AssertBf16("axpy bf16", gx, cx);
    }

    [SkippableFact]
    public void ActivationsForwardAndBackward()
    {
        using var p = Open();
        var (gx, cx) = Both(p, Rand(3 * 1031, 1, 4f), 3, 1031);
        var (gdy, cdy) = Both(p, Rand(3 * 1031, 2), 3, 1031);
        foreach (var (name, gf, cf) in new (string, Tensor, Tensor)[]
                 {
                     ("silu", p.Gpu.Silu(gx), p.Cpu.Silu(cx)),
                     ("gelu", p.Gpu.GeluTanh(gx), p.Cpu.GeluTanh(cx)),
                     ("silu backward", p.Gpu.SiluBackward(gx, gdy), p.Cpu.SiluBackward(cx, cdy)),
                     ("gelu backward", p.Gpu.GeluTanhBackward(gx, gdy), p.Cpu.GeluTanhBackward(cx, cdy)),
                 })
        {
            AssertBf16(name, gf, cf);
            gf.Dispose();
            cf.Dispose();
        }
    }

    // ---------------------------------------------------------------- layout

    [SkippableFact]
    public void NarrowAddNarrowConcatSplitMerge()
    {
        using var p = Open();
        var (gx, cx) = Both(p, Rand(2 * 9 * 14, 1), 2, 9, 14);
        for (int axis = 0; axis < 3; axis++)
        {
            int len = gx.Shape[axis] / 2, start = gx.Shape[axis] - len;
            using var gn = p.Gpu.Narrow(gx, axis, start, len);
            using var cn = p.Cpu.Narrow(cx, axis, start, len);
            AssertBf16($"narrow axis {axis}", gn, cn);
            using var gd = p.Gpu.Zeros(gx.Shape);
            using var cd = p.Cpu.Zeros(cx.Shape);
            p.Gpu.AddNarrow(gd, gn, axis, start);
            p.Cpu.AddNarrow(cd, cn, axis, start);
            p.Gpu.AddNarrow(gd, gn, axis, 0);
            p.Cpu.AddNarrow(cd, cn, axis, 0);
            AssertBf16($"add_narrow axis {axis}", gd, cd);
            using var gc = p.Gpu.Concat(axis, gx, gn, gx);
            using var cc = p.Cpu.Concat(axis, cx, cn, cx);
            AssertBf16($"concat axis {axis}", gc, cc);
        }

        const int B = 2, L = 7, H = 3, D = 10;
        var (gqkv, cqkv) = Both(p, Rand(B * L * 3 * H * D, 2), B, L, 3 * H * D);
        var (gq, gk, gv) = p.Gpu.SplitQkv(gqkv, H);
        var (cq, ck, cv) = p.Cpu.SplitQkv(cqkv, H);
        AssertBf16("split q", gq, cq);
        AssertBf16("split k", gk, ck);
        AssertBf16("split v", gv, cv);
        using var gm = p.Gpu.MergeQkv(gq, gk, gv);
        Assert.Equal(p.Gpu.Download(gqkv), p.Gpu.Download(gm));   // exact round trip
    }

    // ---------------------------------------------------------------- normalisation

    [SkippableFact]
    public void LayerNormModulateForwardAndBackward()
    {
        using var p = Open();
        const int B = 2, L = 70, C = 200;   // L > one chunk, C not a multiple of 32
        var (gx, cx) = Both(p, Rand(B * L * C, 1, 2f, 0.5f), B, L, C);
        var (gsh, csh) = Both(p, Rand(B * C, 2), B, C);
        var (gsc, csc) = Both(p, Rand(B * C, 3), B, C);
        using var gy = p.Gpu.LayerNormModulate(gx, gsh, gsc, 1e-6f, out var gst);
        using var cy = p.Cpu.LayerNormModulate(cx, csh, csc, 1e-6f, out var cst);
        AssertBf16("layernorm_modulate", gy, cy);
        var (gdy, cdy) = Both(p, Rand(B * L * C, 4), B, L, C);
        var (gdx, gdsh, gdsc) = p.Gpu.LayerNormModulateBackward(gdy, gx, gsc, gst);
        var (cdx, cdsh, cdsc) = p.Cpu.LayerNormModulateBackward(cdy, cx, csc, cst);
        AssertBf16("layernorm_modulate dx", gdx, cdx);
        AssertBf16("layernorm_modulate dshift", gdsh, cdsh);
        AssertBf16("layernorm_modulate dscale", gdsc, cdsc);
    }

    [SkippableFact]
    public void RmsNormForwardAndBackward()
    {
        using var p = Open();
        var (gx, cx) = Both(p, Rand(2 * 3 * 33 * 128, 1, 3f), 2, 3, 33, 128);
        var (gw, cw) = Both(p, Rand(128, 2, 0.5f, 1f), 128);
        using var gy = p.Gpu.RmsNorm(gx, gw, 1e-6f, out var gr);
        using var cy = p.Cpu.RmsNorm(cx, cw, 1e-6f, out var cr);
        AssertBf16("rmsnorm", gy, cy);
        var (gdy, cdy) = Both(p, Rand(2 * 3 * 33 * 128, 3), 2, 3, 33, 128);
        using var gdx = p.Gpu.RmsNormBackward(gdy, gx, gw, gr);
        using var cdx = p.Cpu.RmsNormBackward(cdy, cx, cw, cr);
        AssertBf16("rmsnorm backward", gdx, cdx);
    }

    // ---------------------------------------------------------------- position and attention

    [SkippableFact]
    public void RopeTableApplyAndBackward()
    {
        using var p = Open();
        const int B = 2, L = 40, H = 3;
        int[] axes = [16, 56, 56];
        int D = axes.Sum();
        var ids = new float[B * L * 3];
        for (int i = 0; i < B * L; i++) { ids[3 * i + 1] = i % L / 8; ids[3 * i + 2] = i % 8 + 60; }   // img-grid style
        var (gids, cids) = Both(p, ids, B, L, 3);
        using var gpe = p.Gpu.RopeTable(gids, axes, 10000f);
        using var cpe = p.Cpu.RopeTable(cids, axes, 10000f);
        AssertF32("rope table (fp32 on the GPU)", gpe, cpe, 1e-6);
        var (gx, cx) = Both(p, Rand(B * H * L * D, 1), B, H, L, D);
        using var gy = p.Gpu.ApplyRope(gx, gpe);
        using var cy = p.Cpu.ApplyRope(cx, cpe);
        AssertBf16("apply_rope", gy, cy);
        using var gb = p.Gpu.ApplyRopeBackward(gx, gpe);
        using var cb = p.Cpu.ApplyRopeBackward(cx, cpe);
        AssertBf16("apply_rope backward", gb, cb);
    }

    [SkippableTheory]
    [InlineData(2, 3, 77, 64, AttentionKernel.Scalar)]
    [InlineData(1, 2, 130, 128, AttentionKernel.Scalar)]
    [InlineData(1, 1, 5, 32, AttentionKernel.Scalar)]
    [InlineData(1, 3, 100, 24, AttentionKernel.Scalar)]
    [InlineData(2, 3, 77, 64, AttentionKernel.TensorCore)]
    [InlineData(1, 2, 130, 128, AttentionKernel.TensorCore)]
    [InlineData(1, 1, 5, 32, AttentionKernel.TensorCore)]
    [InlineData(1, 2, 300, 128, AttentionKernel.TensorCore)]
    public void AttentionForwardAndBackward(int B, int H, int L, int D, AttentionKernel kernel)
    {
        using var p = Open();
        p.Gpu.AttentionForwardKernel = kernel;
        var (gq, cq) = Both(p, Rand(B * H * L * D, 1, 2f), B, H, L, D);
        var (gk, ck) = Both(p, Rand(B * H * L * D, 2, 2f), B, H, L, D);
        var (gv, cv) = Both(p, Rand(B * H * L * D, 3), B, H, L, D);
        using var go = p.Gpu.Attention(gq, gk, gv, out var glse);
        using var co = p.Cpu.Attention(cq, ck, cv, out var clse);
        Assert.Equal(new[] { B, L, H * D }, go.Shape);
        AssertBf16($"attention {kernel} ({B},{H},{L},{D})", go, co);
        AssertF32("attention lse", glse, clse, 1e-5);

        var (gdo, cdo) = Both(p, Rand(B * L * H * D, 4), B, L, H * D);
        var (gdq, gdk, gdv) = p.Gpu.AttentionBackward(gdo, gq, gk, gv, go, glse);
        var (cdq, cdk, cdv) = p.Cpu.AttentionBackward(cdo, cq, ck, cv, co, clse);
        // Baseline: the oracle's backward fed the bf16-rounded forward output (what the GPU saved), then rounded.
        using var coRounded = RoundedCopy(p.Cpu, co);
        var (bdq, bdk, bdv) = p.Cpu.AttentionBackward(cdo, cq, ck, cv, coRounded, clse);
        AssertBf16("attention dq", gdq, p.Cpu.DownloadDouble(cdq), RoundBf16(p.Cpu.DownloadDouble(bdq)));
        AssertBf16("attention dk", gdk, p.Cpu.DownloadDouble(cdk), RoundBf16(p.Cpu.DownloadDouble(bdk)));
        AssertBf16("attention dv", gdv, p.Cpu.DownloadDouble(cdv), RoundBf16(p.Cpu.DownloadDouble(bdv)));
    }

    // ---------------------------------------------------------------- conditioning and residuals

    [SkippableFact]
    public void TimestepEmbeddingForwardAndBackward()
    {
        using var p = Open();
        float[] t = [0f, 0.25f, 0.5f, 0.998f, 1f];
        var (gt, ct) = Both(p, t, 5);
        using var ge = p.Gpu.TimestepEmbedding(gt, 256);
        using var ce = p.Cpu.TimestepEmbedding(ct, 256);
        AssertBf16("timestep embedding", ge, ce);
        var (gdy, cdy) = Both(p, Rand(5 * 256, 1, 1e-3f), 5, 256);
        using var gdt = p.Gpu.TimestepEmbeddingBackward(gt, gdy);
        using var cdt = p.Cpu.TimestepEmbeddingBackward(ct, cdy);
        AssertBf16("timestep embedding backward", gdt, cdt);
    }

    [SkippableFact]
    public void GatedResidualForwardAndBackward()
    {
        using var p = Open();
        const int B = 2, L = 130, C = 96;
        var (gx, cx) = Both(p, Rand(B * L * C, 1), B, L, C);
        var (gg, cg) = Both(p, Rand(B * C, 2), B, C);
        var (gy, cy) = Both(p, Rand(B * L * C, 3), B, L, C);
        using var go = p.Gpu.GatedResidual(gx, gg, gy);
        using var co = p.Cpu.GatedResidual(cx, cg, cy);
        AssertBf16("gated residual", go, co);
        var (gdo, cdo) = Both(p, Rand(B * L * C, 4), B, L, C);
        var (gdy, gdg) = p.Gpu.GatedResidualBackward(gdo, gg, gy);
        var (cdy, cdg) = p.Cpu.GatedResidualBackward(cdo, cg, cy);
        AssertBf16("gated residual dy", gdy, cdy);
        AssertBf16("gated residual dgate", gdg, cdg);
    }

    // ---------------------------------------------------------------- objective and optimiser

    [SkippableFact]
    public void MseLossAndSumSquares()
    {
        using var p = Open();
        var (gp, cp) = Both(p, Rand(3 * 4099, 1), 3, 4099);
        var (gt, ct) = Both(p, Rand(3 * 4099, 2), 3, 4099);
        double gl = p.Gpu.MseLoss(gp, gt, out var gd);
        double cl = p.Cpu.MseLoss(cp, ct, out var cd);
        output.WriteLine($"mse: {gl} vs {cl}");
        Assert.Equal(cl, gl, cl * 1e-7);   // fp64 sums of fp32 differences of the same bf16 inputs
        AssertBf16("mse dpred", gd, cd);
        Assert.Equal(p.Cpu.SumSquares(cp), p.Gpu.SumSquares(gp), 1e-9 * p.Cpu.SumSquares(cp));
        float[] g = Rand(5000, 3);
        using var gm = p.Gpu.Upload(g, [5000], Precision.Master);
        Assert.Equal(g.Sum(v => (double)v * v), p.Gpu.SumSquares(gm), 1e-9 * g.Sum(v => (double)v * v));
    }

    [SkippableFact]
    public void AdamWMatchesOracle()
    {
        using var p = Open();
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
        AssertF32("adamw param", gw, cw, 1e-5);
        AssertF32("adamw m", gm, cm, 1e-5);
        AssertF32("adamw v", gv, cv, 1e-4);
    }
}

/// <summary>GPU-only checks that need no oracle.</summary>
public class CudaBackendTests(ITestOutputHelper output)
{
    CudaBackend Open()
    {
        bool ok = CudaBackend.TryCreate(out var gpu, out string reason);
        output.WriteLine(ok ? $"device: {reason}" : $"skipped: {reason}");
        Skip.IfNot(ok, reason);
        return gpu!;
    }

    [SkippableFact]
    public void UploadDownloadRoundTripsAndPoolReuses()
    {
        using var gpu = Open();
        float[] v = [1f, -2.5f, 3.140625f, 1e-3f];
        using (var t = gpu.Upload(v, [2, 2], Precision.Master)) Assert.Equal(v, gpu.Download(t));
        using (var t = gpu.Upload(v, 4)) Assert.Equal(Array.ConvertAll(v, Bf16Bits.Round), gpu.Download(t));
        long reserved = gpu.Pool.ReservedBytes;
        for (int i = 0; i < 10; i++) using (gpu.Zeros(1000, 1000)) { }
        Assert.True(gpu.Pool.ReservedBytes <= reserved + DevicePool.SizeClass(2_000_000), "the pool did not reuse a freed block");
        Assert.True(gpu.PeakBytes >= 2_000_000);
        var t2 = gpu.Zeros(3, 4);
        var r = t2.Reshape(12);
        t2.Dispose();
        Assert.Equal(new float[12], gpu.Download(r));   // storage lives while a view does
        r.Dispose();
    }

    [SkippableFact]
    public void MissingKernelArgumentsFailWithTheExpression()
    {
        using var gpu = Open();
        using var a = gpu.Zeros(2, 3);
        using var b = gpu.Zeros(4, 5);
        var e = Assert.Throws<ArgumentException>(() => gpu.Gemm(a, false, b, false, a));
        Assert.Contains("gemm", e.Message);
    }
}

/// <summary>Host bf16 rounding (always runs): nearest, ties to even, NaN kept.</summary>
public class Bf16BitsTests
{
    [Fact]
    public void RoundsToNearestEven()
    {
        Assert.Equal(1f, Bf16Bits.Round(1f));
        Assert.Equal(1f, Bf16Bits.Round(BitConverter.UInt32BitsToSingle(0x3f808000)));            // tie -> even (down)
        Assert.Equal(BitConverter.UInt32BitsToSingle(0x3f820000), Bf16Bits.Round(BitConverter.UInt32BitsToSingle(0x3f818000)));   // tie -> even (up)
        Assert.Equal(BitConverter.UInt32BitsToSingle(0x3f810000), Bf16Bits.Round(BitConverter.UInt32BitsToSingle(0x3f808001)));
        Assert.True(float.IsNaN(Bf16Bits.Round(float.NaN)));
        Assert.Equal(float.PositiveInfinity, Bf16Bits.Round(float.PositiveInfinity));
    }
}
