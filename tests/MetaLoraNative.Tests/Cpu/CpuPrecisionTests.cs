using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Tests.Testing;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cpu;

/// <summary>
/// The fp32 engine against the fp64 oracle on medium random cases, one per op. Both engines receive the same
/// fp32-representable inputs, so the difference is the fp32 engine's own rounding (stores of intermediates such
/// as attention's lse and LayerNorm's stats, and of results). Metric: max|f32 − f64| / max|f64| per output,
/// which must stay under 1e-5 (≈ 100 ulps of fp32).
/// </summary>
public sealed class CpuPrecisionTests(ITestOutputHelper output)
{
    private const double Tolerance = 1e-5;

    // Medium sizes: B batches of L tokens with C channels; H heads of D channels for attention.
    private const int B = 2, L = 48, C = 96, H = 3, D = 32;

    /// <summary>Runs one op on a backend with inputs from a fixed seed and returns every output, downloaded.</summary>
    private delegate double[][] Case(IBackend be, TestData rand);

    private static readonly Dictionary<string, Case> Cases = new()
    {
        ["Gemm"] = (be, r) => [.. new[] { (false, false), (false, true), (true, false), (true, true) }.Select(t =>
        {
            const int M = 70, K = 150, N = 90;
            var a = be.Upload(r.Normal(M * K), t.Item1 ? [K, M] : [M, K]);
            var b = be.Upload(r.Normal(K * N), t.Item2 ? [N, K] : [K, N]);
            var c = be.Upload(r.Normal(M * N), M, N);
            be.Gemm(a, t.Item1, b, t.Item2, c, 0.5f, 1f);
            return be.DownloadDouble(c);
        })],
        ["Linear"] = (be, r) =>
        {
            var x = be.Upload(r.Normal(B * L * C), B, L, C);
            var w = be.Upload(r.Normal(2 * C * C, 0.1), 2 * C, C);
            var bias = be.Upload(r.Normal(2 * C), 2 * C);
            var dy = be.Upload(r.Normal(B * L * 2 * C), B, L, 2 * C);
            return [be.DownloadDouble(be.Linear(x, w, bias)), be.DownloadDouble(be.LinearBackward(dy, w))];
        },
        ["Silu"] = (be, r) => Elementwise(be, r, be.Silu, be.SiluBackward),
        ["GeluTanh"] = (be, r) => Elementwise(be, r, be.GeluTanh, be.GeluTanhBackward),
        ["AddInPlace/ScaleInPlace"] = (be, r) =>
        {
            var a = be.Upload(r.Normal(B * L * C), B * L * C);
            be.AddInPlace(a, be.Upload(r.Normal(B * L * C), B * L * C), 0.3f);
            be.ScaleInPlace(a, 1.7f);
            return [be.DownloadDouble(a)];
        },
        ["Narrow/AddNarrow/Concat"] = (be, r) =>
        {
            var x = be.Upload(r.Normal(B * L * C), B, L, C);
            var n = be.Narrow(x, 2, 5, 40);
            be.AddNarrow(x, be.Upload(r.Normal(B * L * 40), B, L, 40), 2, 10);
            return [be.DownloadDouble(n), be.DownloadDouble(x), be.DownloadDouble(be.Concat(1, x, n.Reshape(B, -1, C)))];
        },
        ["SplitQkv/MergeQkv"] = (be, r) =>
        {
            var (q, k, v) = be.SplitQkv(be.Upload(r.Normal(B * L * 3 * H * D), B, L, 3 * H * D), H);
            return [be.DownloadDouble(q), be.DownloadDouble(be.MergeQkv(v, q, k))];
        },
        ["LayerNormModulate"] = (be, r) =>
        {
            var x = be.Upload(r.Normal(B * L * C, 2), B, L, C);
            var shift = be.Upload(r.Normal(B * C), B, C);
            var scale = be.Upload(r.Normal(B * C, 0.5), B, C);
            var y = be.LayerNormModulate(x, shift, scale, 1e-6f, out var stats);
            var (dx, dsh, dsc) = be.LayerNormModulateBackward(be.Upload(r.Normal(B * L * C), B, L, C), x, scale, stats);
            return [be.DownloadDouble(y), be.DownloadDouble(dx), be.DownloadDouble(dsh), be.DownloadDouble(dsc)];
        },
        ["RmsNorm"] = (be, r) =>
        {
            var x = be.Upload(r.Normal(B * H * L * D), B, H, L, D);
            var w = be.Upload(r.Uniform(D, 0.5, 1.5), D);
            var y = be.RmsNorm(x, w, 1e-6f, out var rstd);
            var dx = be.RmsNormBackward(be.Upload(r.Normal(B * H * L * D), B, H, L, D), x, w, rstd);
            return [be.DownloadDouble(y), be.DownloadDouble(dx)];
        },
        ["RopeTable/ApplyRope"] = (be, r) =>
        {
            var ids = new double[B * L * 3];
            for (int i = 0; i < B * L; i++) { ids[i * 3 + 1] = i % L / 8; ids[i * 3 + 2] = i % 8; }
            var pe = be.RopeTable(be.Upload(ids, B, L, 3), [4, 14, 14], 10000f);
            var x = be.Upload(r.Normal(B * H * L * D), B, H, L, D);
            var y = be.ApplyRope(x, pe);
            return [be.DownloadDouble(pe), be.DownloadDouble(y), be.DownloadDouble(be.ApplyRopeBackward(y, pe))];
        },
        ["Attention"] = (be, r) =>
        {
            var q = be.Upload(r.Normal(B * H * L * D), B, H, L, D);
            var k = be.Upload(r.Normal(B * H * L * D), B, H, L, D);
            var v = be.Upload(r.Normal(B * H * L * D), B, H, L, D);
            var o = be.Attention(q, k, v, out var lse);
            var (dq, dk, dv) = be.AttentionBackward(be.Upload(r.Normal(B * L * H * D), B, L, H * D), q, k, v, o, lse);
            return [be.DownloadDouble(o), be.DownloadDouble(lse), be.DownloadDouble(dq), be.DownloadDouble(dk), be.DownloadDouble(dv)];
        },
        ["TimestepEmbedding"] = (be, r) =>
        {
            // fp32 keeps t to 2^-24 ≈ 6e-8 and the largest argument is 1000·t, so exact fp32 inputs matter here.
            var t = be.Upload(r.Uniform(B * 4, 0, 1), B * 4);
            var e = be.TimestepEmbedding(t, 256);
            return [be.DownloadDouble(e), be.DownloadDouble(be.TimestepEmbeddingBackward(t, be.Upload(r.Normal(B * 4 * 256), B * 4, 256)))];
        },
        ["GatedResidual"] = (be, r) =>
        {
            var x = be.Upload(r.Normal(B * L * C), B, L, C);
            var g = be.Upload(r.Normal(B * C), B, C);
            var y = be.Upload(r.Normal(B * L * C), B, L, C);
            var (dy, dg) = be.GatedResidualBackward(be.Upload(r.Normal(B * L * C), B, L, C), g, y);
            return [be.DownloadDouble(be.GatedResidual(x, g, y)), be.DownloadDouble(dy), be.DownloadDouble(dg)];
        },
        ["MseLoss/SumSquares"] = (be, r) =>
        {
            var p = be.Upload(r.Normal(B * L * C), B, L, C);
            double loss = be.MseLoss(p, be.Upload(r.Normal(B * L * C), B, L, C), out var dp);
            return [[loss, be.SumSquares(p)], be.DownloadDouble(dp)];
        },
        ["AdamW"] = (be, r) =>
        {
            var p = be.Upload(r.Normal(4096), 4096);
            var m = be.Upload(r.Normal(4096, 0.01), 4096);
            var v = be.Upload(r.Uniform(4096, 0, 1e-4), 4096);
            var g = be.Upload(r.Normal(4096, 0.01), 4096);
            for (int s = 1; s <= 3; s++) be.AdamW(p, g, m, v, new AdamWStep(s, 1e-3f, GradScale: 0.5f));
            return [be.DownloadDouble(p), be.DownloadDouble(m), be.DownloadDouble(v)];
        },
    };

    private static double[][] Elementwise(IBackend be, TestData r, Func<Tensor, Tensor> f, Func<Tensor, Tensor, Tensor> df)
    {
        var x = be.Upload(r.Normal(B * L * C, 3), B, L, C);
        return [be.DownloadDouble(f(x)), be.DownloadDouble(df(x, be.Upload(r.Normal(B * L * C), B, L, C)))];
    }

    public static TheoryData<string> Ops() => [.. Cases.Keys];

    [Theory]
    [MemberData(nameof(Ops))]
    public void Fp32EngineMatchesFp64Oracle(string op)
    {
        using var f32 = CpuBackend.F32();
        using var f64 = CpuBackend.F64();
        var lo = Cases[op](f32, new TestData(99));
        var hi = Cases[op](f64, new TestData(99));
        Assert.Equal(hi.Length, lo.Length);
        double worst = 0;
        for (int o = 0; o < hi.Length; o++)
        {
            Assert.Equal(hi[o].Length, lo[o].Length);
            double diff = 0, scale = 0;
            for (int i = 0; i < hi[o].Length; i++)
            {
                diff = Math.Max(diff, Math.Abs(lo[o][i] - hi[o][i]));
                scale = Math.Max(scale, Math.Abs(hi[o][i]));
            }
            double rel = diff / Math.Max(scale, 1e-300);
            worst = Math.Max(worst, rel);
            Assert.True(rel <= Tolerance, $"{op} output {o}: fp32 vs fp64 max diff / max |value| = {rel:E2}");
        }
        Report.Record($"f32-vs-f64 {op}: worst rel diff {worst:E2}", "f32-vs-f64 " + op, worst, output);
    }
}
