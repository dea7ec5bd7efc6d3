using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Kernels;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Kernels;

/// <summary>
/// CPU emulation of kernels/dev/residual_norm/02_fused.cu, block by block and thread by thread, on the launch the
/// CUDA launcher makes (CudaBackend.ResidualNormThreads, ResidualNormRowsPerBlock for a given SM count): one block
/// per row in the forward, thread t owning the 16-byte vector t of its row (columns [8t, 8t+8)) and threads past
/// C/8 idle; the backward's (chunks, B) grid walking its rows in order, per-thread column sums, the partials laid
/// out (3, B, chunks, C), and the sums kernel's grid-stride index split (s, b, c). The ports keep the .cu file's
/// 32-bit index expressions and fp32 arithmetic (block sums in thread order, which on the GPU is a tree: both are
/// within fp32 rounding). Every element of every output is written exactly once, every index is bounds-checked.
/// The result is held to the parity rule against the fp64 oracle (max error ≤ 2·max|round_bf16(ref) − ref| +
/// 2^-10·max|ref|, the output-rounding baseline), so a wrong stride, vector or chunk bound shows up without a GPU.
/// Keep it in step with 02_fused.cu.
/// </summary>
public class ResidualNormEmulationTests(ITestOutputHelper output)
{
    const int Vec = 8;   // bf16 per 16-byte load

    static float Bf(float v) => HalfPrecision.RoundToBFloat16(v);

    /// <summary>An output buffer that counts its writes, so each element is shown to be written exactly once.</summary>
    sealed class Out(int n)
    {
        public readonly float[] V = new float[n];
        public readonly int[] Writes = new int[n];
        public void Store(long i, float v)
        {
            Assert.InRange(i, 0, V.Length - 1);
            V[i] = v;
            Writes[i]++;
        }
        public void AllWrittenOnce(string what)
        {
            int bad = Array.FindIndex(Writes, w => w != 1);
            Assert.True(bad < 0, bad < 0 ? "" : $"{what}[{bad}] written {Writes[bad]} times");
        }
    }

    /// <summary>Sum over a block's threads (rn_block_sum2): every thread contributes, idle ones 0.</summary>
    static float BlockSum(float[] perThread) { float s = 0; foreach (var v in perThread) s += v; return s; }

    static (Out X1, Out Mod, Out Stats) Forward(int B, int L, int C, float[] x, float[] gate, float[] y, float[] shift, float[] scale, float eps)
    {
        uint T = CudaBackend.ResidualNormThreads(C), nvec = (uint)(C / Vec);
        var x1o = new Out(B * L * C);
        var mo = new Out(B * L * C);
        var so = new Out(B * L * 2);
        for (uint row = 0; row < B * L; row++)   // blockIdx.x
        {
            uint b = row / (uint)L;
            var x1 = new float[T, Vec];
            var s = new float[T];
            for (uint t = 0; t < T; t++)
            {
                if (t >= nvec) continue;
                uint e = row * nvec + t, m = b * nvec + t;
                for (int k = 0; k < Vec; k++)
                {
                    x1[t, k] = Bf(x[Vec * e + k] + gate[Vec * m + k] * y[Vec * e + k]);
                    x1o.Store(Vec * e + k, x1[t, k]);
                    s[t] += x1[t, k];
                }
            }
            float mean = BlockSum(s) / C;
            var q = new float[T];
            for (uint t = 0; t < nvec; t++)
                for (int k = 0; k < Vec; k++) { float d = x1[t, k] - mean; q[t] += d * d; }
            float rstd = 1f / MathF.Sqrt(BlockSum(q) / C + eps);
            for (uint t = 0; t < nvec; t++)
            {
                uint e = row * nvec + t, m = b * nvec + t;
                for (int k = 0; k < Vec; k++)
                    mo.Store(Vec * e + k, Bf((1f + scale[Vec * m + k]) * ((x1[t, k] - mean) * rstd) + shift[Vec * m + k]));
            }
            so.Store(2 * row, mean);
            so.Store(2 * row + 1, rstd);
        }
        return (x1o, mo, so);
    }

    sealed record Grads(Out Dx1, Out Dy, Out DGate, Out DShift, Out DScale, Out Partial);

    static Grads Backward(int B, int L, int C, int rows, float[] dmod, float[] dout, float[] x1, float[] scale, float[] stats, float[] gate, float[] y)
    {
        uint T = CudaBackend.ResidualNormThreads(C), nvec = (uint)(C / Vec);
        int chunks = (L + rows - 1) / rows;
        var dx1 = new Out(B * L * C);
        var dy = new Out(B * L * C);
        var partial = new Out(3 * B * chunks * C);
        for (uint b = 0; b < B; b++)                 // blockIdx.y
            for (uint k = 0; k < chunks; k++)        // blockIdx.x
            {
                var sg = new float[T, Vec];
                var ssh = new float[T, Vec];
                var ssc = new float[T, Vec];
                uint l0 = k * (uint)rows, l1 = Math.Min((uint)L, l0 + (uint)rows);
                for (uint l = l0; l < l1; l++)
                {
                    uint row = b * (uint)L + l;
                    float mean = stats[2 * row], rstd = stats[2 * row + 1];
                    var s1 = new float[T];
                    var s2 = new float[T];
                    for (uint t = 0; t < nvec; t++)
                    {
                        uint e = row * nvec + t, m = b * nvec + t;
                        for (int j = 0; j < Vec; j++)
                        {
                            float xh = (x1[Vec * e + j] - mean) * rstd, dm = dmod[Vec * e + j];
                            float g = dm * (1f + scale[Vec * m + j]);
                            s1[t] += g;
                            s2[t] += g * xh;
                            ssh[t, j] += dm;
                            ssc[t, j] += dm * xh;
                        }
                    }
                    float m1 = BlockSum(s1) / C, m2 = BlockSum(s2) / C;
                    for (uint t = 0; t < nvec; t++)
                    {
                        uint e = row * nvec + t, m = b * nvec + t;
                        for (int j = 0; j < Vec; j++)
                        {
                            float xhat = (x1[Vec * e + j] - mean) * rstd;
                            float d = dout[Vec * e + j] + rstd * (dmod[Vec * e + j] * (1f + scale[Vec * m + j]) - m1 - xhat * m2);
                            sg[t, j] += d * y[Vec * e + j];
                            dx1.Store(Vec * e + j, Bf(d));
                            dy.Store(Vec * e + j, Bf(gate[Vec * m + j] * d));
                        }
                    }
                }
                uint plane = (uint)(B * chunks * C);
                for (uint t = 0; t < nvec; t++)
                {
                    uint o = (b * (uint)chunks + k) * (uint)C + Vec * t;
                    for (int j = 0; j < Vec; j++)
                    {
                        partial.Store(o + j, sg[t, j]);
                        partial.Store(o + plane + j, ssh[t, j]);
                        partial.Store(o + 2 * plane + j, ssc[t, j]);
                    }
                }
            }
        var sums = new[] { new Out(B * C), new Out(B * C), new Out(B * C) };
        uint n = (uint)(B * C), grid = 7, block = 32;   // a small grid, so the grid-stride loop takes several turns
        for (uint bx = 0; bx < grid; bx++)
            for (uint tx = 0; tx < block; tx++)
                for (uint i = bx * block + tx; i < 3 * n; i += grid * block)
                {
                    uint s = i / n, bb = i % n / (uint)C, c = i % (uint)C;
                    long src = (s * (uint)B + bb) * (uint)chunks * (uint)C + c;
                    float v = 0;
                    for (int kk = 0; kk < chunks; kk++) v += partial.V[src + kk * C];
                    sums[s].Store(bb * C + c, Bf(v));
                }
        return new Grads(dx1, dy, sums[0], sums[1], sums[2], partial);
    }

    static float[] Rand(int n, int seed, float scale = 1f, float offset = 0f)
    {
        var r = new Random(seed);
        return [.. Enumerable.Range(0, n).Select(_ => Bf(offset + scale * (float)(r.NextDouble() * 2 - 1)))];
    }

    void Rule(string what, float[] ours, double[] reference)
    {
        double err = 0, baseline = 0, max = 0;
        for (int i = 0; i < reference.Length; i++)
        {
            err = Math.Max(err, Math.Abs(ours[i] - reference[i]));
            baseline = Math.Max(baseline, Math.Abs(Bf((float)reference[i]) - reference[i]));
            max = Math.Max(max, Math.Abs(reference[i]));
        }
        double allowed = 2 * baseline + max / 1024;
        output.WriteLine($"{what}: error {err:E2}, allowed {allowed:E2}");
        Assert.True(err <= allowed, $"{what}: error {err:E3} over {allowed:E3}");
    }

    [Theory]
    [InlineData(2, 70, 200, 132)]   // 7 of 32 threads idle; 8 rows per block, the last chunk 6 rows
    [InlineData(3, 33, 64, 132)]    // a block of one warp, 8 active threads
    [InlineData(1, 9, 3072, 132)]   // FLUX's width: 384 threads; 8 rows per block, so chunks of 8 and 1
    [InlineData(2, 70, 200, 3)]     // few SMs: 24 rows per block, chunks of 24, 24 and 22
    public void KernelsMatchTheOracle(int B, int L, int C, int sms)
    {
        int rows = CudaBackend.ResidualNormRowsPerBlock(B, L, sms);
        int n = B * L * C, m = B * C;
        const float eps = 1e-6f;
        float[] x = Rand(n, 1, 2f), gate = Rand(m, 2), y = Rand(n, 3, 1.5f), shift = Rand(m, 4), scale = Rand(m, 5, 0.5f);
        float[] dmod = Rand(n, 6), dout = Rand(n, 7);
        output.WriteLine($"B {B}, L {L}, C {C}: {CudaBackend.ResidualNormThreads(C)} threads, {rows} rows per backward block");

        var f = Forward(B, L, C, x, gate, y, shift, scale, eps);
        f.X1.AllWrittenOnce("x1");
        f.Mod.AllWrittenOnce("modulated");
        f.Stats.AllWrittenOnce("stats");
        using var be = CpuBackend.F64();
        Tensor U(float[] v, params int[] shape) => be.Upload(v, shape);
        using var tx = U(x, B, L, C);
        using var tg = U(gate, B, C);
        using var ty = U(y, B, L, C);
        using var tsh = U(shift, B, C);
        using var tsc = U(scale, B, C);
        var (rx1, rm) = be.ResidualLayerNormModulate(tx, tg, ty, tsh, tsc, eps, out var rst);
        using (rst) using (rx1) using (rm)
        {
            double[] x1Ref = be.DownloadDouble(rx1);
            Rule("x1", f.X1.V, x1Ref);
            // the kernel normalises x1 as stored: the reference is the LayerNorm-modulate of the rounded x1
            using var rounded = be.Upload(Array.ConvertAll(x1Ref, v => (double)Bf((float)v)), B, L, C);
            using var mRef = be.LayerNormModulate(rounded, tsh, tsc, eps, out var stRef);
            using (stRef)
            {
                Rule("modulated", f.Mod.V, be.DownloadDouble(mRef));
                Rule("stats", f.Stats.V, be.DownloadDouble(stRef));
            }
        }

        // the backward on the emulated forward's own x1 and stats, against the oracle on the same inputs
        var g = Backward(B, L, C, rows, dmod, dout, f.X1.V, scale, f.Stats.V, gate, y);
        foreach (var (o, what) in new[] { (g.Dx1, "dx1"), (g.Dy, "dy"), (g.DGate, "dgate"), (g.DShift, "dshift"), (g.DScale, "dscale"), (g.Partial, "partial") })
            o.AllWrittenOnce(what);
        using var tdm = U(dmod, B, L, C);
        using var tdo = U(dout, B, L, C);
        using var tx1 = U(f.X1.V, B, L, C);
        using var tst = U(f.Stats.V, B * L, 2);
        var r = be.ResidualLayerNormModulateBackward(tdm, tdo, tx1, tsc, tst, tg, ty);
        Rule("dx1", g.Dx1.V, be.DownloadDouble(r.Dx1));
        Rule("dy", g.Dy.V, be.DownloadDouble(r.Dy));
        Rule("dgate", g.DGate.V, be.DownloadDouble(r.DGate));
        Rule("dshift", g.DShift.V, be.DownloadDouble(r.DShift));
        Rule("dscale", g.DScale.V, be.DownloadDouble(r.DScale));
        foreach (var t in new[] { r.Dx1, r.Dy, r.DGate, r.DShift, r.DScale }) t.Dispose();
    }

    [Fact]
    public void LaunchShapes()
    {
        Assert.Equal(384u, CudaBackend.ResidualNormThreads(3072));   // FLUX.1-dev: one 16-byte vector per thread
        Assert.Equal(32u, CudaBackend.ResidualNormThreads(64));
        Assert.Equal(1024u, CudaBackend.ResidualNormThreads(8192));  // the widest row version 2 takes
        // 1024²: the img stream's 4,096 rows over 2 × 132 blocks → 16 rows per block, 256 blocks (one wave at two per
        // SM); the txt stream's 512 rows → 8 (the floor); a batch of two images doubles the rows per block
        Assert.Equal(16, CudaBackend.ResidualNormRowsPerBlock(1, 4096, 132));
        Assert.Equal(8, CudaBackend.ResidualNormRowsPerBlock(1, 512, 132));
        Assert.Equal(32, CudaBackend.ResidualNormRowsPerBlock(2, 4096, 132));
        Assert.Equal(8, CudaBackend.ResidualNormRowsPerBlock(1, 5, 132));
    }
}
