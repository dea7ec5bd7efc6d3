using System.Runtime.CompilerServices;
using System.Text.RegularExpressions;
using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Kernels;
using MetaLoraNative.Tests.Testing;

namespace MetaLoraNative.Tests.Kernels;

/// <summary>
/// A lane-by-lane C# port of kernels/dev/qkv_norm_rope/02_fused.cu (no GPU needed): the same grid, warps and lanes,
/// qnr_index's arithmetic, the 16-byte chunks (or element pairs), the half-warp shuffle butterflies and bf16 stores,
/// run on flat arrays standing for device memory. It proves the index logic: every element of the stream's rows of
/// q, k, v (and of d qkv's first 3C columns) written exactly once, by the lane the contract names, nothing else
/// written; each 16-byte access 16-byte aligned and each RoPE pair inside one lane's chunk; and the values equal the
/// fp64 CPU op's to bf16 rounding, so a wrong row, head, pair, token offset or row stride fails.
/// </summary>
public class QkvNormRopeEmulationTests
{
    const int Warps = 8, Lanes = 32;

    /// <summary>The parameter block, as the launcher fills it (element offsets stand for pointers).</summary>
    sealed record P(int B, int H, int L, int D, int LJ, int Start, int PeBatch, int Ld, int LdD, bool Vec, float Eps);

    /// <summary>Device memory: bf16 values held as floats, plus a write count per element.</summary>
    sealed class Buffer(int n)
    {
        public readonly float[] V = new float[n];
        public readonly int[] Writes = new int[n];
        public void Store(int i, float x) { V[i] = HalfPrecision.RoundToBFloat16(x); Writes[i]++; }
        public void StoreF32(int i, float x) { V[i] = x; Writes[i]++; }
    }

    sealed class Memory(P p)
    {
        public readonly Buffer Qkv = new(p.B * p.L * p.Ld), DQkv = new(p.B * p.L * p.LdD);
        public readonly Buffer Q = new(p.B * p.H * p.LJ * p.D), K = new(p.B * p.H * p.LJ * p.D), V = new(p.B * p.H * p.LJ * p.D);
        public readonly Buffer Wq = new(p.D), Wk = new(p.D), Pe = new(p.PeBatch * p.LJ * p.D);
        public readonly Buffer QRstd = new(p.B * p.H * p.L), KRstd = new(p.B * p.H * p.L);
        /// <summary>Which (block, warp, lane) wrote each element of q (forward) or of d qkv (backward): the ownership check.</summary>
        public readonly Dictionary<(Buffer, int), (int Pair, int Lane)> Writer = [];
    }

    /// <summary>qnr_index, line for line (32-bit arithmetic, checked: an overflow would be a bug at the shape).</summary>
    static (int t, int b, int l, int h, int src, int joint, int pe, int stat) Index(P p, int pair, int ld) => checked((
        pair / p.H, pair / p.H / p.L, pair / p.H % p.L, pair % p.H,
        pair / p.H * ld + pair % p.H * p.D,
        ((pair / p.H / p.L * p.H + pair % p.H) * p.LJ + p.Start + pair / p.H % p.L) * p.D,
        ((p.PeBatch == 1 ? 0 : pair / p.H / p.L) * p.LJ + p.Start + pair / p.H % p.L) * p.D,
        (pair / p.H / p.L * p.H + pair % p.H) * p.L + pair / p.H % p.L));

    /// <summary>half_warp_sum: the xor butterfly over offsets 8, 4, 2, 1 on all 32 lanes at once.</summary>
    static void HalfWarpSum(float[] v)
    {
        for (int o = 8; o > 0; o >>= 1)
        {
            var w = (float[])v.Clone();
            for (int lane = 0; lane < Lanes; lane++) v[lane] = w[lane] + w[lane ^ o];
        }
    }

    static void Chunk16(int element, int elementBytes = 2) => Assert.True(element * elementBytes % 16 == 0, $"16-byte access at element {element}");

    static void Write(Memory m, Buffer b, int i, float x, int pair, int lane)
    {
        b.Store(i, x);
        m.Writer[(b, i)] = (pair, lane);
    }

    static void Forward(P p, Memory m)
    {
        int pairs = p.B * p.L * p.H, blocks = (pairs + Warps - 1) / Warps, C = p.H * p.D, chunks = p.D / 8;
        for (int block = 0; block < blocks; block++)
            for (int warp = 0; warp < Warps; warp++)
            {
                int pair = block * Warps + warp;
                if (pair >= pairs) continue;
                var ix = Index(p, pair, p.Ld);
                var ss = new float[Lanes];
                var xs = new float[Lanes][];
                for (int lane = 0; lane < Lanes; lane++)
                {
                    int half = lane >> 4, hl = lane & 15, x = ix.src + half * C;
                    xs[lane] = new float[2 * 8];
                    if (p.Vec)
                        for (int i = 0; i < 2; i++)
                        {
                            int c = hl + 16 * i;
                            if (c >= chunks) continue;
                            Chunk16(x + 8 * c);
                            for (int e = 0; e < 8; e++) { float v = m.Qkv.V[x + 8 * c + e]; xs[lane][8 * i + e] = v; ss[lane] += v * v; }
                        }
                    else
                        for (int j = hl; j < p.D / 2; j += 16)
                        {
                            float x0 = m.Qkv.V[x + 2 * j], x1 = m.Qkv.V[x + 2 * j + 1];
                            ss[lane] += x0 * x0 + x1 * x1;
                        }
                }
                HalfWarpSum(ss);
                for (int lane = 0; lane < Lanes; lane++)
                {
                    int half = lane >> 4, hl = lane & 15, x = ix.src + half * C;
                    var w = half == 1 ? m.Wk : m.Wq;
                    var y = half == 1 ? m.K : m.Q;
                    float r = 1f / MathF.Sqrt(ss[lane] / p.D + p.Eps);
                    void Pair(int d, float x0, float x1)   // d even: one RoPE pair, inside this lane's chunk
                    {
                        float c = m.Pe.V[ix.pe + d], s = m.Pe.V[ix.pe + d + 1];
                        x0 *= r * w.V[d];
                        x1 *= r * w.V[d + 1];
                        Write(m, y, ix.joint + d, c * x0 - s * x1, pair, lane);
                        Write(m, y, ix.joint + d + 1, s * x0 + c * x1, pair, lane);
                    }
                    if (p.Vec)
                    {
                        for (int i = 0; i < 2; i++)
                        {
                            int c = hl + 16 * i;
                            if (c >= chunks) continue;
                            Chunk16(ix.joint + 8 * c);
                            Chunk16(ix.pe + 8 * c, 4);
                            for (int j = 0; j < 4; j++) Pair(8 * c + 2 * j, xs[lane][8 * i + 2 * j], xs[lane][8 * i + 2 * j + 1]);
                        }
                        for (int c = lane; c < chunks; c += Lanes)
                            for (int e = 0; e < 8; e++) Write(m, m.V, ix.joint + 8 * c + e, m.Qkv.V[ix.src + 2 * C + 8 * c + e], pair, lane);
                    }
                    else
                    {
                        for (int j = hl; j < p.D / 2; j += 16) Pair(2 * j, m.Qkv.V[x + 2 * j], m.Qkv.V[x + 2 * j + 1]);
                        for (int d = lane; d < p.D; d += Lanes) Write(m, m.V, ix.joint + d, m.Qkv.V[ix.src + 2 * C + d], pair, lane);
                    }
                    if (hl == 0) (half == 1 ? m.KRstd : m.QRstd).StoreF32(ix.stat, r);
                }
            }
    }

    static void Backward(P p, Memory m)
    {
        int pairs = p.B * p.L * p.H, blocks = (pairs + Warps - 1) / Warps, C = p.H * p.D;
        for (int block = 0; block < blocks; block++)
            for (int warp = 0; warp < Warps; warp++)
            {
                int pair = block * Warps + warp;
                if (pair >= pairs) continue;
                var ix = Index(p, pair, p.Ld);
                int dst = checked(ix.t * p.LdD + ix.h * p.D);
                var ms = new float[Lanes];
                var us = new float[Lanes][];
                for (int lane = 0; lane < Lanes; lane++)
                {
                    int half = lane >> 4, hl = lane & 15, x = ix.src + half * C;
                    var w = half == 1 ? m.Wk : m.Wq;
                    var g = half == 1 ? m.K : m.Q;
                    us[lane] = new float[p.D];
                    // the vec path's chunk c covers pairs 4c..4c+3, the pair path's lane covers pairs hl, hl+16, ...
                    foreach (int j in OwnedPairs(p, hl))
                    {
                        if (p.Vec) { Chunk16(ix.joint + j / 4 * 8); Chunk16(x + j / 4 * 8); Chunk16(ix.pe + j / 4 * 8, 4); }
                        float c = m.Pe.V[ix.pe + 2 * j], s = m.Pe.V[ix.pe + 2 * j + 1], g0 = g.V[ix.joint + 2 * j], g1 = g.V[ix.joint + 2 * j + 1];
                        us[lane][2 * j] = c * g0 + s * g1;
                        us[lane][2 * j + 1] = -s * g0 + c * g1;
                        ms[lane] += us[lane][2 * j] * w.V[2 * j] * m.Qkv.V[x + 2 * j] + us[lane][2 * j + 1] * w.V[2 * j + 1] * m.Qkv.V[x + 2 * j + 1];
                    }
                }
                HalfWarpSum(ms);
                for (int lane = 0; lane < Lanes; lane++)
                {
                    int half = lane >> 4, hl = lane & 15, x = ix.src + half * C;
                    var w = half == 1 ? m.Wk : m.Wq;
                    float r = (half == 1 ? m.KRstd : m.QRstd).V[ix.stat], mean = ms[lane] / p.D;
                    foreach (int j in OwnedPairs(p, hl))
                        for (int e = 2 * j; e < 2 * j + 2; e++)
                        {
                            if (p.Vec && e % 8 == 0) Chunk16(dst + half * C + e);
                            Write(m, m.DQkv, dst + half * C + e, r * (w.V[e] * us[lane][e] - m.Qkv.V[x + e] * r * r * mean), pair, lane);
                        }
                    if (p.Vec)
                        for (int c = lane; c < p.D / 8; c += Lanes)
                            for (int e = 0; e < 8; e++) Write(m, m.DQkv, dst + 2 * C + 8 * c + e, m.V.V[ix.joint + 8 * c + e], pair, lane);
                    else
                        for (int d = lane; d < p.D; d += Lanes) Write(m, m.DQkv, dst + 2 * C + d, m.V.V[ix.joint + d], pair, lane);
                }
            }
    }

    /// <summary>The RoPE pairs lane hl of a half owns: the 4 of each chunk hl + 16i (vec), or hl + 16i (pairs).</summary>
    static IEnumerable<int> OwnedPairs(P p, int hl)
    {
        if (!p.Vec)
        {
            for (int j = hl; j < p.D / 2; j += 16) yield return j;
            yield break;
        }
        for (int i = 0; i < 2; i++)
        {
            int c = hl + 16 * i;
            if (c < p.D / 8)
                for (int j = 0; j < 4; j++) yield return 4 * c + j;
        }
    }

    public static TheoryData<int, int, int, int, int, int, int, int, bool> Cases() => new()
    {
        // B, H, D, LJ, start, L, extra columns per qkv row, pe batch, vec
        { 2, 3, 64, 50, 7, 37, 0, 2, true },
        { 2, 2, 128, 41, 0, 41, 40, 1, true },      // rows wider than 3C (linear1's), 16-byte path
        { 1, 3, 256, 9, 8, 1, 8, 1, true },         // two chunks per lane, a single token
        { 2, 2, 64, 30, 11, 13, 3, 1, false },      // an odd row stride: the element-pair path
        { 2, 2, 6, 12, 5, 7, 0, 2, false },         // D 6: fewer pairs than lanes
        { 1, 2, 40, 12, 0, 12, 0, 1, true },        // D 40: 5 chunks, lanes 5..15 of each half idle
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void EveryLaneReadsAndWritesWhatTheContractSays(int b, int h, int d, int lj, int start, int l, int extra, int peBatch, bool vec)
    {
        int C = h * d;
        var p = new P(b, h, l, d, lj, start, peBatch, 3 * C + extra, 3 * C + extra, vec, 1e-6f);
        var m = new Memory(p);
        var rand = new TestData(31);
        Fill(m.Qkv, rand.Normal(m.Qkv.V.Length, 2));
        Fill(m.Wq, rand.Uniform(d, 0.5, 1.5));
        Fill(m.Wk, rand.Uniform(d, 0.5, 1.5));
        var angles = rand.Uniform(m.Pe.V.Length / 2, -3, 3);
        for (int i = 0; i < angles.Length; i++) { m.Pe.V[2 * i] = (float)Math.Cos(angles[i]); m.Pe.V[2 * i + 1] = (float)Math.Sin(angles[i]); }
        Forward(p, m);

        // ownership: each stream row element written once, by warp pair = t·H + h, lane in the half of q (k) that owns its pair
        for (int bb = 0; bb < b; bb++)
            for (int hh = 0; hh < h; hh++)
                for (int t = 0; t < lj; t++)
                    for (int e = 0; e < d; e++)
                    {
                        int i = ((bb * h + hh) * lj + t) * d + e;
                        bool mine = t >= start && t < start + l;
                        foreach (var buf in new[] { m.Q, m.K, m.V }) Assert.Equal(mine ? 1 : 0, buf.Writes[i]);
                        if (!mine) continue;
                        var (pair, lane) = m.Writer[(m.Q, i)];
                        Assert.Equal((bb * l + t - start) * h + hh, pair);
                        int owner = vec ? e / 8 % 16 : e / 2 % 16;
                        Assert.Equal(owner, lane);
                        Assert.Equal(16 + owner, m.Writer[(m.K, i)].Lane);
                    }
        Assert.All(m.QRstd.Writes, w => Assert.Equal(1, w));
        Assert.All(m.KRstd.Writes, w => Assert.Equal(1, w));

        // values: the fp64 CPU op on the same inputs, to bf16 rounding of q, k, v (fp32 math in the kernel)
        using var be = CpuBackend.F64();
        using var x = be.Upload(Array.ConvertAll(m.Qkv.V, v => (double)v), b, l, p.Ld);
        using var wq = be.Upload(Array.ConvertAll(m.Wq.V, v => (double)v), d);
        using var wk = be.Upload(Array.ConvertAll(m.Wk.V, v => (double)v), d);
        using var pe = be.Upload(Array.ConvertAll(m.Pe.V, v => (double)v), peBatch, lj, d / 2, 2);
        using var joint = new QkvJoint(be.Zeros(b, h, lj, d), be.Zeros(b, h, lj, d), be.Zeros(b, h, lj, d));
        var norm = new QkNorm(wq, wk, 1e-6f);
        var slice = MatrixSlice.ColumnsOf(x, 0, 3 * C);
        var (qr, kr) = be.QkvNormRope(slice, norm, pe, joint, start);
        using var _qr = qr;
        using var _kr = kr;
        Near(be.DownloadDouble(joint.Q), m.Q.V, "q");
        Near(be.DownloadDouble(joint.K), m.K.V, "k");
        Near(be.DownloadDouble(joint.V), m.V.V, "v");
        Near(be.DownloadDouble(qr), m.QRstd.V, "q rstd", 1e-5);

        // backward: joint gradients in q, k, v's places, d qkv into rows as wide as qkv's
        Fill(m.Q, rand.Normal(m.Q.V.Length));
        Fill(m.K, rand.Normal(m.K.V.Length));
        Fill(m.V, rand.Normal(m.V.V.Length));
        Backward(p, m);
        for (int t = 0; t < b * l; t++)
            for (int c = 0; c < p.LdD; c++)
                Assert.Equal(c < 3 * C ? 1 : 0, m.DQkv.Writes[t * p.LdD + c]);   // the columns past 3C are the MLP half's
        using var gq = be.Upload(Array.ConvertAll(m.Q.V, v => (double)v), b, h, lj, d);
        using var gk = be.Upload(Array.ConvertAll(m.K.V, v => (double)v), b, h, lj, d);
        using var gv = be.Upload(Array.ConvertAll(m.V.V, v => (double)v), b, h, lj, d);
        using var dx = be.Zeros(b, l, p.LdD);
        be.QkvNormRopeBackward(new QkvJoint(gq, gk, gv), start, slice, norm, pe, qr, kr, MatrixSlice.ColumnsOf(dx, 0, 3 * C));
        Near(be.DownloadDouble(dx), m.DQkv.V, "d qkv");
    }

    static void Fill(Buffer b, double[] v)
    {
        for (int i = 0; i < v.Length; i++) b.V[i] = HalfPrecision.RoundToBFloat16((float)v[i]);
    }

    /// <summary>Each value within 2 bf16 half-ulps (2^-8 relative) of the reference, plus the fp32 floor.</summary>
    static void Near(double[] reference, float[] ours, string what, double rel = 1.0 / 128)
    {
        double max = reference.Max(Math.Abs);
        for (int i = 0; i < reference.Length; i++)
            Assert.True(Math.Abs(reference[i] - ours[i]) <= rel * Math.Abs(reference[i]) + 1e-5 * max,
                        $"{what}[{i}]: reference {reference[i]:G9}, emulated kernel {ours[i]:G9}");
    }

    /// <summary>At FLUX.1-dev's largest stream (1024²: 4,096 image tokens of 4,608, in linear1-wide rows) every index fits in 32 bits.</summary>
    [Fact]
    public void FluxDevIndicesFitIn32Bits()
    {
        const int H = 24, D = 128, C = H * D;
        var p = new P(1, H, 4096, D, 4608, 512, 1, 3 * C + 4 * C, 3 * C + 4 * C, true, 1e-6f);
        var last = Index(p, p.B * p.L * p.H - 1, p.Ld);   // checked arithmetic: throws on overflow
        Assert.True((long)last.src + 2 * C + D <= (long)p.B * p.L * p.Ld);
        Assert.True((long)last.joint + D <= (long)p.B * p.H * p.LJ * p.D);
        Assert.Equal(p.B * p.H * p.L - 1, last.stat);
    }

    /// <summary>The C# mirror of the parameter struct has the kernel's size, and the launcher's warps per block are the kernel's.</summary>
    [Fact]
    public void TheLauncherMirrorsTheKernelsLayout()
    {
        string src = KernelCompiler.ReadSource("dev/qkv_norm_rope/02_fused.cu");
        Assert.Equal(int.Parse(Regex.Match(src, @"sizeof\(QkvNormRopeParams\) == (\d+)").Groups[1].Value), Unsafe.SizeOf<CudaBackend.QkvNormRopeParams>());
        Assert.Equal(CudaBackend.QkvNormRopeWarps, int.Parse(Regex.Match(src, @"#define QNR_WARPS (\d+)").Groups[1].Value));
    }
}
