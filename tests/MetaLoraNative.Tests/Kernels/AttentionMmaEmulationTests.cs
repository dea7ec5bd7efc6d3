using MetaLoraNative.Engine.IO;
using Xunit.Abstractions;
using static MetaLoraNative.Tests.Kernels.MmaEmulation;

namespace MetaLoraNative.Tests.Kernels;

/// <summary>
/// CPU emulation of attention version 2's backward (attention_backward_dkdv_mma and attention_backward_dq_mma in
/// kernels/dev/attention/02_mma_backward.cu, the kernel playground), lane by lane: the same index expressions,
/// shared rows of SROW, bf16 packing and masks, with mma.sync m16n8k16 played by <see cref="Mma"/> from the fragment
/// layouts of the PTX ISA. It checks the kernels' tiling, masking, fragment bookkeeping and scale against an fp64
/// backward, and that every (query, key) pair is visited exactly once and every output element written once, without
/// a GPU. It cannot check the PTX layouts themselves (they are assumed, as in the kernel) nor timing or races:
/// `metalora check cuda --dev` does that on a GPU. Keep it in step with the kernels: a change to their loops belongs
/// here too.
/// </summary>
public class AttentionMmaEmulationTests(ITestOutputHelper output)
{
    const int D = 128, SROW = D + 8, Warps = 4, Rows = 16 * Warps, Br = 16, Bc = 32;

    static uint W(ushort[] s, int i) => Pack(s[i], s[i + 1]);

    // ------------------------------------------------------------------ inputs and the fp64 reference

    internal sealed class Problem
    {
        public int B, H, L;
        public ushort[] Q = [], K = [], V = [], Dout = [];   // q, k, v (B, H, L, D); dout (B, L, H*D)
        public float[] Lse = [], Drow = [];                  // (B, H, L)
        public double[] Dq = [], Dk = [], Dv = [];           // fp64 reference, (B, H, L, D)
        public float Scale => 1f / MathF.Sqrt(D);
        public long Bhd(int b, int h, int l, int d) => (((long)b * H + h) * L + l) * D + d;
        public long Blhd(int b, int h, int l, int d) => (((long)b * L + l) * H + h) * D + d;
    }

    internal static Problem Make(int B, int H, int L, int seed)
    {
        var rng = new Random(seed);
        ushort[] R(float scale) => [.. Enumerable.Range(0, B * H * L * D).Select(_ => HalfPrecision.FloatToBFloat16((float)(rng.NextDouble() * 2 - 1) * scale))];
        var p = new Problem { B = B, H = H, L = L, Q = R(2f), K = R(2f), V = R(1f), Dout = R(1f) };
        p.Lse = new float[B * H * L];
        p.Drow = new float[B * H * L];
        p.Dq = new double[B * H * L * D];
        p.Dk = new double[B * H * L * D];
        p.Dv = new double[B * H * L * D];
        double sc = 1.0 / Math.Sqrt(D);
        double F(ushort x) => HalfPrecision.BFloat16ToFloat(x);
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++)
            {
                var P = new double[L, L];
                for (int i = 0; i < L; i++)
                {
                    double m = double.NegativeInfinity;
                    for (int j = 0; j < L; j++)
                    {
                        double s = 0;
                        for (int d = 0; d < D; d++) s += F(p.Q[p.Bhd(b, h, i, d)]) * F(p.K[p.Bhd(b, h, j, d)]);
                        P[i, j] = s * sc;
                        m = Math.Max(m, P[i, j]);
                    }
                    double l = 0;
                    for (int j = 0; j < L; j++) l += Math.Exp(P[i, j] - m);
                    double lse = m + Math.Log(l);
                    p.Lse[(b * H + h) * L + i] = (float)lse;
                    for (int j = 0; j < L; j++) P[i, j] = Math.Exp(P[i, j] - lse);
                    double drow = 0;   // rowsum(dout * o) with o rounded to bf16, as the forward stores it
                    for (int d = 0; d < D; d++)
                    {
                        double o = 0;
                        for (int j = 0; j < L; j++) o += P[i, j] * F(p.V[p.Bhd(b, h, j, d)]);
                        drow += F(p.Dout[p.Blhd(b, h, i, d)]) * HalfPrecision.RoundToBFloat16((float)o);
                    }
                    p.Drow[(b * H + h) * L + i] = (float)drow;
                }
                for (int i = 0; i < L; i++)
                    for (int j = 0; j < L; j++)
                    {
                        double dp = 0;
                        for (int d = 0; d < D; d++) dp += F(p.Dout[p.Blhd(b, h, i, d)]) * F(p.V[p.Bhd(b, h, j, d)]);
                        double ds = P[i, j] * (dp - p.Drow[(b * H + h) * L + i]);
                        for (int d = 0; d < D; d++)
                        {
                            p.Dq[p.Bhd(b, h, i, d)] += sc * ds * F(p.K[p.Bhd(b, h, j, d)]);
                            p.Dk[p.Bhd(b, h, j, d)] += sc * ds * F(p.Q[p.Bhd(b, h, i, d)]);
                            p.Dv[p.Bhd(b, h, j, d)] += P[i, j] * F(p.Dout[p.Blhd(b, h, i, d)]);
                        }
                    }
            }
        return p;
    }

    // stage_rows: rows [row0, row0 + rows) into shared rows of SROW, zero past L.
    static void Stage(ushort[] dst, ushort[] src, Problem p, int b, int h, bool bhd, int row0, int rows)
    {
        for (int j = 0; j < rows; j++)
            for (int c = 0; c < D; c++)
            {
                int row = row0 + j;
                dst[j * SROW + c] = row < p.L ? src[bhd ? p.Bhd(b, h, row, c) : p.Blhd(b, h, row, c)] : (ushort)0;
            }
    }

    // ------------------------------------------------------------------ attention_backward_dkdv_mma

    static (ushort[] Dk, ushort[] Dv) DkDv(Problem p, int[]? writes = null)
    {
        var dkOut = new ushort[p.Q.Length];
        var dvOut = new ushort[p.Q.Length];
        for (int b = 0; b < p.B; b++)
            for (int h = 0; h < p.H; h++)
                for (int bx = 0; bx < (p.L + Rows - 1) / Rows; bx++)
                {
                    int bh = b * p.H + h, key0 = bx * Rows;
                    var ks = new ushort[Rows * SROW];
                    var vs = new ushort[Rows * SROW];
                    var qs = new ushort[Br * SROW];
                    var dos = new ushort[Br * SROW];
                    var lseT = new float[Br];
                    var drT = new float[Br];
                    Stage(ks, p.K, p, b, h, true, key0, Rows);
                    Stage(vs, p.V, p, b, h, true, key0, Rows);
                    var dk = new float[Warps][][][];
                    var dv = new float[Warps][][][];
                    for (int w = 0; w < Warps; w++)
                    {
                        dk[w] = [.. Enumerable.Range(0, D / 8).Select(_ => Acc())];
                        dv[w] = [.. Enumerable.Range(0, D / 8).Select(_ => Acc())];
                    }
                    for (int i0 = 0; i0 < p.L; i0 += Br)
                    {
                        Stage(qs, p.Q, p, b, h, true, i0, Br);
                        Stage(dos, p.Dout, p, b, h, false, i0, Br);
                        for (int x = 0; x < Br; x++)
                        {
                            int qi = i0 + x;
                            lseT[x] = qi < p.L ? p.Lse[bh * p.L + qi] : float.PositiveInfinity;
                            drT[x] = qi < p.L ? p.Drow[bh * p.L + qi] : 0f;
                        }
                        for (int warp = 0; warp < Warps; warp++)
                        {
                            int kw = warp * 16 * SROW;
                            float[][][] s = [Acc(), Acc()], dp = [Acc(), Acc()];
                            for (int k = 0; k < D / 16; k++)
                            {
                                uint[][] ka = Regs(4), va = Regs(4);
                                for (int lane = 0; lane < 32; lane++)
                                {
                                    int g = lane >> 2, t = lane & 3, o = kw + g * SROW + k * 16 + 2 * t;
                                    ka[lane] = [W(ks, o), W(ks, o + 8 * SROW), W(ks, o + 8), W(ks, o + 8 * SROW + 8)];
                                    va[lane] = [W(vs, o), W(vs, o + 8 * SROW), W(vs, o + 8), W(vs, o + 8 * SROW + 8)];
                                }
                                for (int n = 0; n < 2; n++)
                                {
                                    uint[][] qb = Regs(2), db = Regs(2);
                                    for (int lane = 0; lane < 32; lane++)
                                    {
                                        int g = lane >> 2, t = lane & 3, o = (n * 8 + g) * SROW + k * 16 + 2 * t;
                                        qb[lane] = [W(qs, o), W(qs, o + 8)];
                                        db[lane] = [W(dos, o), W(dos, o + 8)];
                                    }
                                    Mma(s[n], ka, qb);
                                    Mma(dp[n], va, db);
                                }
                            }
                            uint[][] pa = Regs(4), da = Regs(4), xb = Regs(2), yb = Regs(2), pl = Regs(4), dl = Regs(4);
                            for (int lane = 0; lane < 32; lane++)
                            {
                                int t = lane & 3;
                                for (int n = 0; n < 2; n++)
                                    for (int e = 0; e < 2; e++)
                                    {
                                        int c = n * 8 + 2 * t + e;
                                        float lse = lseT[c], dr = drT[c];
                                        float pA = MathF.Exp(s[n][lane][e] * p.Scale - lse), pB = MathF.Exp(s[n][lane][2 + e] * p.Scale - lse);
                                        s[n][lane][e] = pA;
                                        s[n][lane][2 + e] = pB;
                                        dp[n][lane][e] = pA * (dp[n][lane][e] - dr);
                                        dp[n][lane][2 + e] = pB * (dp[n][lane][2 + e] - dr);
                                    }
                                var (s0, s1, d0, d1) = (s[0][lane], s[1][lane], dp[0][lane], dp[1][lane]);
                                pa[lane] = [PackF(s0[0], s0[1]), PackF(s0[2], s0[3]), PackF(s1[0], s1[1]), PackF(s1[2], s1[3])];
                                da[lane] = [PackF(d0[0], d0[1]), PackF(d0[2], d0[3]), PackF(d1[0], d1[1]), PackF(d1[2], d1[3])];
                                pl[lane] = [PackR(s0[0], s0[1]), PackR(s0[2], s0[3]), PackR(s1[0], s1[1]), PackR(s1[2], s1[3])];
                                dl[lane] = [PackR(d0[0], d0[1]), PackR(d0[2], d0[3]), PackR(d1[0], d1[1]), PackR(d1[2], d1[3])];
                            }
                            for (int n = 0; n < D / 8; n++)
                            {
                                for (int lane = 0; lane < 32; lane++)
                                {
                                    int g = lane >> 2, t = lane & 3, x = 2 * t * SROW + g + n * 8;
                                    xb[lane] = [Pack(dos[x], dos[x + SROW]), Pack(dos[x + 8 * SROW], dos[x + 9 * SROW])];
                                    yb[lane] = [Pack(qs[x], qs[x + SROW]), Pack(qs[x + 8 * SROW], qs[x + 9 * SROW])];
                                }
                                Mma(dv[warp][n], pa, xb);
                                Mma(dk[warp][n], da, yb);
                                Mma(dv[warp][n], pl, xb);
                                Mma(dk[warp][n], dl, yb);
                            }
                        }
                    }
                    for (int warp = 0; warp < Warps; warp++)
                        for (int lane = 0; lane < 32; lane++)
                        {
                            int g = lane >> 2, t = lane & 3, rowA = key0 + warp * 16 + g, rowB = rowA + 8;
                            for (int n = 0; n < D / 8; n++)
                                for (int e = 0; e < 2; e++)
                                {
                                    int d = n * 8 + 2 * t + e;
                                    if (rowA < p.L) Put(rowA, d, dk[warp][n][lane][e], dv[warp][n][lane][e]);
                                    if (rowB < p.L) Put(rowB, d, dk[warp][n][lane][2 + e], dv[warp][n][lane][2 + e]);
                                }
                            void Put(int row, int d, float k, float v)
                            {
                                long i = p.Bhd(b, h, row, d);
                                dkOut[i] = HalfPrecision.FloatToBFloat16(k * p.Scale);
                                dvOut[i] = HalfPrecision.FloatToBFloat16(v);
                                if (writes != null) writes[i]++;
                            }
                        }
                }
        return (dkOut, dvOut);
    }

    // ------------------------------------------------------------------ attention_backward_dq_mma

    static ushort[] Dq(Problem p, int[]? writes = null)
    {
        var dqOut = new ushort[p.Q.Length];
        for (int b = 0; b < p.B; b++)
            for (int h = 0; h < p.H; h++)
                for (int bx = 0; bx < (p.L + Rows - 1) / Rows; bx++)
                {
                    int bh = b * p.H + h;
                    var ks = new ushort[Bc * SROW];
                    var vs = new ushort[Bc * SROW];
                    for (int warp = 0; warp < Warps; warp++)
                    {
                        uint[][][] qa = [.. Enumerable.Range(0, D / 16).Select(_ => Regs(4))];
                        uint[][][] oa = [.. Enumerable.Range(0, D / 16).Select(_ => Regs(4))];
                        var lseA = new float[32];
                        var lseB = new float[32];
                        var drA = new float[32];
                        var drB = new float[32];
                        for (int lane = 0; lane < 32; lane++)
                        {
                            int g = lane >> 2, t = lane & 3, rowA = bx * Rows + warp * 16 + g, rowB = rowA + 8;
                            uint Ld(ushort[] src, bool bhd, int row, int c) =>
                                row < p.L ? Pack(src[bhd ? p.Bhd(b, h, row, c) : p.Blhd(b, h, row, c)], src[(bhd ? p.Bhd(b, h, row, c) : p.Blhd(b, h, row, c)) + 1]) : 0u;
                            for (int k = 0; k < D / 16; k++)
                            {
                                int c = k * 16 + 2 * t;
                                qa[k][lane] = [Ld(p.Q, true, rowA, c), Ld(p.Q, true, rowB, c), Ld(p.Q, true, rowA, c + 8), Ld(p.Q, true, rowB, c + 8)];
                                oa[k][lane] = [Ld(p.Dout, false, rowA, c), Ld(p.Dout, false, rowB, c), Ld(p.Dout, false, rowA, c + 8), Ld(p.Dout, false, rowB, c + 8)];
                            }
                            lseA[lane] = rowA < p.L ? p.Lse[bh * p.L + rowA] : 0f;
                            lseB[lane] = rowB < p.L ? p.Lse[bh * p.L + rowB] : 0f;
                            drA[lane] = rowA < p.L ? p.Drow[bh * p.L + rowA] : 0f;
                            drB[lane] = rowB < p.L ? p.Drow[bh * p.L + rowB] : 0f;
                        }
                        float[][][] dq = [.. Enumerable.Range(0, D / 8).Select(_ => Acc())];
                        for (int j0 = 0; j0 < p.L; j0 += Bc)
                        {
                            Stage(ks, p.K, p, b, h, true, j0, Bc);
                            Stage(vs, p.V, p, b, h, true, j0, Bc);
                            float[][][] s = [.. Enumerable.Range(0, Bc / 8).Select(_ => Acc())];
                            float[][][] dp = [.. Enumerable.Range(0, Bc / 8).Select(_ => Acc())];
                            for (int n = 0; n < Bc / 8; n++)
                                for (int k = 0; k < D / 16; k++)
                                {
                                    uint[][] kb = Regs(2), vb = Regs(2);
                                    for (int lane = 0; lane < 32; lane++)
                                    {
                                        int g = lane >> 2, t = lane & 3, o = (n * 8 + g) * SROW + k * 16 + 2 * t;
                                        kb[lane] = [W(ks, o), W(ks, o + 8)];
                                        vb[lane] = [W(vs, o), W(vs, o + 8)];
                                    }
                                    Mma(s[n], qa[k], kb);
                                    Mma(dp[n], oa[k], vb);
                                }
                            for (int lane = 0; lane < 32; lane++)
                            {
                                int t = lane & 3;
                                for (int n = 0; n < Bc / 8; n++)
                                    for (int e = 0; e < 2; e++)
                                    {
                                        bool ok = j0 + n * 8 + 2 * t + e < p.L;
                                        s[n][lane][e] = ok ? MathF.Exp(s[n][lane][e] * p.Scale - lseA[lane]) * (dp[n][lane][e] - drA[lane]) : 0f;
                                        s[n][lane][2 + e] = ok ? MathF.Exp(s[n][lane][2 + e] * p.Scale - lseB[lane]) * (dp[n][lane][2 + e] - drB[lane]) : 0f;
                                    }
                            }
                            for (int kk = 0; kk < Bc / 16; kk++)
                            {
                                uint[][] a = Regs(4), al = Regs(4);
                                for (int lane = 0; lane < 32; lane++)
                                {
                                    var (s0, s1) = (s[2 * kk][lane], s[2 * kk + 1][lane]);
                                    a[lane] = [PackF(s0[0], s0[1]), PackF(s0[2], s0[3]), PackF(s1[0], s1[1]), PackF(s1[2], s1[3])];
                                    al[lane] = [PackR(s0[0], s0[1]), PackR(s0[2], s0[3]), PackR(s1[0], s1[1]), PackR(s1[2], s1[3])];
                                }
                                for (int n = 0; n < D / 8; n++)
                                {
                                    uint[][] xb = Regs(2);
                                    for (int lane = 0; lane < 32; lane++)
                                    {
                                        int g = lane >> 2, t = lane & 3, x = (kk * 16 + 2 * t) * SROW + g + n * 8;
                                        xb[lane] = [Pack(ks[x], ks[x + SROW]), Pack(ks[x + 8 * SROW], ks[x + 9 * SROW])];
                                    }
                                    Mma(dq[n], a, xb);
                                    Mma(dq[n], al, xb);
                                }
                            }
                        }
                        for (int lane = 0; lane < 32; lane++)
                        {
                            int g = lane >> 2, t = lane & 3, rowA = bx * Rows + warp * 16 + g, rowB = rowA + 8;
                            for (int n = 0; n < D / 8; n++)
                                for (int e = 0; e < 2; e++)
                                {
                                    int d = n * 8 + 2 * t + e;
                                    if (rowA < p.L) Put(rowA, d, dq[n][lane][e]);
                                    if (rowB < p.L) Put(rowB, d, dq[n][lane][2 + e]);
                                }
                        }
                        void Put(int row, int d, float v)
                        {
                            long i = p.Bhd(b, h, row, d);
                            dqOut[i] = HalfPrecision.FloatToBFloat16(v * p.Scale);
                            if (writes != null) writes[i]++;
                        }
                    }
                }
        return dqOut;
    }

    // ------------------------------------------------------------------ tests

    [Theory]
    [InlineData(1, 1, 1)]
    [InlineData(1, 1, 15)]
    [InlineData(1, 2, 64)]
    [InlineData(2, 1, 65)]
    [InlineData(1, 2, 130)]
    public void EmulatedBackwardMatchesFp64(int B, int H, int L)
    {
        var p = Make(B, H, L, seed: 7 + L);
        var dkWrites = new int[p.Q.Length];
        var dqWrites = new int[p.Q.Length];
        var (dk, dv) = DkDv(p, dkWrites);
        var dq = Dq(p, dqWrites);
        Assert.All(dkWrites, n => Assert.Equal(1, n));   // every element of dk and dv written exactly once
        Assert.All(dqWrites, n => Assert.Equal(1, n));
        // With the hi + lo split of P and dS the error is about the output's own bf16 rounding (~max / 400 here); one
        // bf16 rounding of P and dS gave up to ~max / 210. A wrong index, mask or scale errs by O(max).
        Check("dq", dq, p.Dq);
        Check("dk", dk, p.Dk);
        Check("dv", dv, p.Dv);
    }

    void Check(string name, ushort[] got, double[] want)
    {
        double max = want.Max(Math.Abs), err = 0;
        for (int i = 0; i < got.Length; i++) err = Math.Max(err, Math.Abs(HalfPrecision.BFloat16ToFloat(got[i]) - want[i]));
        output.WriteLine($"{name}: max error {err:G3}, max |ref| {max:G3} (ratio {err / Math.Max(max, 1e-30):G3})");
        // L = 1: P = 1 and o = v, so dS and with it dq and dk are 0 up to fp32 rounding (hence the absolute floor).
        Assert.True(err <= max / 256 + 1e-4, $"{name}: max error {err:G3} against max |ref| {max:G3}");
    }

    /// <summary>
    /// The index logic alone (block, warp, lane, tile, n, e) of both kernels at lengths up to FLUX's 5,120 tokens: every
    /// (query, key) pair inside L contributes exactly once to dq and once to dk/dv, and nothing outside L does.
    /// </summary>
    [Theory]
    [InlineData(1)]
    [InlineData(15)]
    [InlineData(16)]
    [InlineData(64)]
    [InlineData(65)]
    [InlineData(130)]
    [InlineData(5120)]
    public void EveryPairIsVisitedOnce(int L)
    {
        var seen = new byte[(long)L * L];
        // dkdv: a pair counts when its key row is written (< L) and its query is not masked by lse = +inf (< L).
        for (int bx = 0; bx < (L + Rows - 1) / Rows; bx++)
            for (int warp = 0; warp < Warps; warp++)
                for (int lane = 0; lane < 32; lane++)
                {
                    int g = lane >> 2, t = lane & 3, rowA = bx * Rows + warp * 16 + g;
                    foreach (int key in (int[])[rowA, rowA + 8])
                        for (int i0 = 0; i0 < L; i0 += Br)
                            for (int n = 0; n < 2; n++)
                                for (int e = 0; e < 2; e++)
                                {
                                    int query = i0 + n * 8 + 2 * t + e;
                                    if (key < L && query < L) seen[(long)query * L + key]++;
                                }
                }
        RequireOnce(seen, L, "dk/dv");
        Array.Clear(seen);
        // dq: a pair counts when its query row is written and its key passes the `ok` mask.
        for (int bx = 0; bx < (L + Rows - 1) / Rows; bx++)
            for (int warp = 0; warp < Warps; warp++)
                for (int lane = 0; lane < 32; lane++)
                {
                    int g = lane >> 2, t = lane & 3, rowA = bx * Rows + warp * 16 + g;
                    foreach (int query in (int[])[rowA, rowA + 8])
                        for (int j0 = 0; j0 < L; j0 += Bc)
                            for (int n = 0; n < Bc / 8; n++)
                                for (int e = 0; e < 2; e++)
                                {
                                    int key = j0 + n * 8 + 2 * t + e;
                                    if (query < L && key < L) seen[(long)query * L + key]++;
                                }
                }
        RequireOnce(seen, L, "dq");
    }

    static void RequireOnce(byte[] seen, int L, string kernel)
    {
        long bad = Array.FindIndex(seen, c => c != 1);
        Assert.True(bad < 0, $"{kernel}: pair (query {bad / L}, key {bad % L}) visited {(bad < 0 ? 1 : seen[bad])} times");
    }
}
