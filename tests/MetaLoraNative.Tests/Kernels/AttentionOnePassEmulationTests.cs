using MetaLoraNative.Engine.IO;
using MetaLoraNative.Kernels;
using Xunit.Abstractions;
using static MetaLoraNative.Tests.Kernels.MmaEmulation;
using Problem = MetaLoraNative.Tests.Kernels.AttentionMmaEmulationTests.Problem;

namespace MetaLoraNative.Tests.Kernels;

/// <summary>
/// CPU emulation of attention version 4's backward (attention_backward_onepass and attention_backward_onepass_convert
/// in kernels/dev/attention/04_onepass_backward.cu), lane by lane: the same block of 64 keys, K's shared rows, V's A
/// fragments taken from the query stages before the loop, the two query stages (tile i+1 is copied into the other stage
/// before tile i is used, as the cp.async pipeline does, so a stage mix-up corrupts the result here too), zero fill
/// and lse = +inf past L, every ldmatrix row address (plain and .trans), the dS^T rows in shared memory, the two-term
/// split of P and dS, and the fp32 dq accumulator filled by "atomics" in a block order the test chooses. Checked
/// against an fp64 backward (<see cref="AttentionMmaEmulationTests.Make"/>), with dk and dv written exactly once and
/// dq's accumulator independent of the block order up to fp32 rounding. It cannot check timing, races or the PTX
/// layouts (assumed, see <see cref="MmaEmulation"/>): `metalora check cuda --dev` does on a GPU. Keep it in step with
/// the kernel.
/// </summary>
public class AttentionOnePassEmulationTests(ITestOutputHelper output)
{
    const int D = 128, SROW = D + 8, Warps = 4, Keys = 16 * Warps, Br = 16, DSROW = Br + 8;

    sealed class Result
    {
        public ushort[] Dq = [], Dk = [], Dv = [];
        public float[] Acc = [];       // dq_acc (B, H, L, 128) before the conversion
        public double[] AccAbs = [];   // Σ |block contribution| per element: the scale of the order-dependent rounding
        public int[] KvWrites = [];    // how often each dk/dv element was written
        public int[] AccAdds = [];     // how many block contributions each dq_acc element received
    }

    // load_head_rows: rows [row0, row0 + rows) of a (B, H, L, 128) head into shared rows of SROW at `at`, zero past L.
    static void LoadHeadRows(ushort[] dst, int at, ushort[] src, long bhBase, int row0, int rows, int L)
    {
        for (int j = 0; j < rows; j++)
            for (int c = 0; c < D; c++)
                dst[at + j * SROW + c] = row0 + j < L ? src[bhBase + (long)(row0 + j) * D + c] : (ushort)0;
    }

    // load_query_tile: q and dout rows [i0, i0 + 16) into stage st of qd ([stage][q, dout][16 x SROW]), lse (+inf past
    // L) and drow (0 past L) into their stage.
    static void LoadQueryTile(Problem p, int b, int h, int i0, ushort[] qd, float[] lse, float[] dr, int st)
    {
        int bh = b * p.H + h;
        for (int j = 0; j < Br; j++)
        {
            int row = i0 + j;
            for (int c = 0; c < D; c++)
            {
                qd[(st * 2 + 0) * Br * SROW + j * SROW + c] = row < p.L ? p.Q[p.Bhd(b, h, row, c)] : (ushort)0;
                qd[(st * 2 + 1) * Br * SROW + j * SROW + c] = row < p.L ? p.Dout[p.Blhd(b, h, row, c)] : (ushort)0;
            }
            lse[st * Br + j] = row < p.L ? p.Lse[bh * p.L + row] : float.PositiveInfinity;
            dr[st * Br + j] = row < p.L ? p.Drow[bh * p.L + row] : 0f;
        }
    }

    /// <summary>The whole backward with the blocks (bx, bh) run in <paramref name="order"/>; then the conversion.</summary>
    static Result Run(Problem p, IEnumerable<(int Bx, int Bh)> order)
    {
        int n = p.Q.Length;
        var r = new Result { Dq = new ushort[n], Dk = new ushort[n], Dv = new ushort[n], Acc = new float[n], AccAbs = new double[n], KvWrites = new int[n], AccAdds = new int[n] };
        foreach (var (bx, bh) in order) Block(p, bx, bh, r);
        for (int i = 0; i < n; i++) r.Dq[i] = HalfPrecision.FloatToBFloat16(r.Acc[i] * p.Scale);   // attention_backward_onepass_convert
        return r;
    }

    static IEnumerable<(int Bx, int Bh)> Blocks(Problem p) =>
        from bh in Enumerable.Range(0, p.B * p.H) from bx in Enumerable.Range(0, (p.L + Keys - 1) / Keys) select (bx, bh);

    static void Block(Problem p, int bx, int bh, Result res)
    {
        int b = bh / p.H, h = bh % p.H, L = p.L, key0 = bx * Keys;
        long bhBase = (long)bh * L * D;
        var ks = new ushort[Keys * SROW];
        var qd = new ushort[2 * 2 * Br * SROW];      // [stage][q, dout]; V's 64 rows before the loop
        var dst = new ushort[2 * Keys * DSROW];      // [hi, lo][key][query]
        var lseT = new float[2 * Br];
        var drT = new float[2 * Br];
        static int Mi(int lane) => lane >> 3;
        static int Mr(int lane) => lane & 7;

        LoadHeadRows(ks, 0, p.K, bhBase, key0, Keys, L);
        LoadHeadRows(qd, 0, p.V, bhBase, key0, Keys, L);
        var va = new uint[Warps][][][];
        for (int warp = 0; warp < Warps; warp++)
            va[warp] = [.. Enumerable.Range(0, D / 16).Select(k =>
                Ldmatrix(qd, l => (warp * 16 + (Mi(l) & 1) * 8 + Mr(l)) * SROW + k * 16 + (Mi(l) >> 1) * 8, trans: false))];

        var dk = new float[Warps][][][];
        var dv = new float[Warps][][][];
        for (int w = 0; w < Warps; w++)
        {
            dk[w] = [.. Enumerable.Range(0, D / 8).Select(_ => Acc())];
            dv[w] = [.. Enumerable.Range(0, D / 8).Select(_ => Acc())];
        }

        int tiles = (L + Br - 1) / Br;
        LoadQueryTile(p, b, h, 0, qd, lseT, drT, 0);
        for (int tile = 0; tile < tiles; tile++)
        {
            int st = tile & 1, i0 = tile * Br;
            if (tile + 1 < tiles) LoadQueryTile(p, b, h, i0 + Br, qd, lseT, drT, st ^ 1);
            int qs = (st * 2 + 0) * Br * SROW, dos = (st * 2 + 1) * Br * SROW;

            for (int warp = 0; warp < Warps; warp++)
            {
                float[][][] s = [Acc(), Acc()], dp = [Acc(), Acc()];
                for (int k = 0; k < D / 16; k++)
                {
                    var ka = Ldmatrix(ks, l => (warp * 16 + (Mi(l) & 1) * 8 + Mr(l)) * SROW + k * 16 + (Mi(l) >> 1) * 8, trans: false);
                    var qb = Ldmatrix(qd, l => qs + ((Mi(l) >> 1) * 8 + Mr(l)) * SROW + k * 16 + (Mi(l) & 1) * 8, trans: false);
                    var ob = Ldmatrix(qd, l => dos + ((Mi(l) >> 1) * 8 + Mr(l)) * SROW + k * 16 + (Mi(l) & 1) * 8, trans: false);
                    Mma(s[0], ka, qb, 0);
                    Mma(s[1], ka, qb, 2);
                    Mma(dp[0], va[warp][k], ob, 0);
                    Mma(dp[1], va[warp][k], ob, 2);
                }
                uint[][] pa = Regs(4), pl = Regs(4), da = Regs(4), dl = Regs(4);
                for (int lane = 0; lane < 32; lane++)
                {
                    int g = lane >> 2, t = lane & 3;
                    for (int nt = 0; nt < 2; nt++)
                        for (int e = 0; e < 2; e++)
                        {
                            int c = nt * 8 + 2 * t + e;
                            float lse = lseT[st * Br + c], dr = drT[st * Br + c];
                            float pA = MathF.Exp(s[nt][lane][e] * p.Scale - lse), pB = MathF.Exp(s[nt][lane][2 + e] * p.Scale - lse);
                            s[nt][lane][e] = pA;
                            s[nt][lane][2 + e] = pB;
                            dp[nt][lane][e] = pA * (dp[nt][lane][e] - dr);
                            dp[nt][lane][2 + e] = pB * (dp[nt][lane][2 + e] - dr);
                        }
                    // dS^T hi and lo into shared rows (key of the block, query)
                    int rowA = (warp * 16 + g) * DSROW + 2 * t, rowB = rowA + 8 * DSROW;
                    for (int nt = 0; nt < 2; nt++)
                    {
                        var x = dp[nt][lane];
                        (dst[rowA + nt * 8], dst[rowA + nt * 8 + 1]) = Split(PackF(x[0], x[1]));
                        (dst[rowB + nt * 8], dst[rowB + nt * 8 + 1]) = Split(PackF(x[2], x[3]));
                        (dst[Keys * DSROW + rowA + nt * 8], dst[Keys * DSROW + rowA + nt * 8 + 1]) = Split(PackR(x[0], x[1]));
                        (dst[Keys * DSROW + rowB + nt * 8], dst[Keys * DSROW + rowB + nt * 8 + 1]) = Split(PackR(x[2], x[3]));
                    }
                    var (s0, s1, d0, d1) = (s[0][lane], s[1][lane], dp[0][lane], dp[1][lane]);
                    pa[lane] = [PackF(s0[0], s0[1]), PackF(s0[2], s0[3]), PackF(s1[0], s1[1]), PackF(s1[2], s1[3])];
                    pl[lane] = [PackR(s0[0], s0[1]), PackR(s0[2], s0[3]), PackR(s1[0], s1[1]), PackR(s1[2], s1[3])];
                    da[lane] = [PackF(d0[0], d0[1]), PackF(d0[2], d0[3]), PackF(d1[0], d1[1]), PackF(d1[2], d1[3])];
                    dl[lane] = [PackR(d0[0], d0[1]), PackR(d0[2], d0[3]), PackR(d1[0], d1[1]), PackR(d1[2], d1[3])];
                }
                for (int nt = 0; nt < D / 8; nt += 2)
                {
                    var ob = Ldmatrix(qd, l => dos + ((Mi(l) & 1) * 8 + Mr(l)) * SROW + nt * 8 + (Mi(l) >> 1) * 8, trans: true);
                    Mma(dv[warp][nt], pa, ob, 0);
                    Mma(dv[warp][nt], pl, ob, 0);
                    Mma(dv[warp][nt + 1], pa, ob, 2);
                    Mma(dv[warp][nt + 1], pl, ob, 2);
                }
                for (int nt = 0; nt < D / 8; nt += 2)
                {
                    var qb = Ldmatrix(qd, l => qs + ((Mi(l) & 1) * 8 + Mr(l)) * SROW + nt * 8 + (Mi(l) >> 1) * 8, trans: true);
                    Mma(dk[warp][nt], da, qb, 0);
                    Mma(dk[warp][nt], dl, qb, 0);
                    Mma(dk[warp][nt + 1], da, qb, 2);
                    Mma(dk[warp][nt + 1], dl, qb, 2);
                }
            }

            // __syncthreads(); then each warp's 32 dims of the tile's dq over the block's 64 keys, into the accumulator.
            for (int warp = 0; warp < Warps; warp++)
            {
                float[][][] dq = [Acc(), Acc(), Acc(), Acc()];
                for (int kk = 0; kk < Keys / 16; kk++)
                {
                    var ah = Ldmatrix(dst, l => (kk * 16 + (Mi(l) >> 1) * 8 + Mr(l)) * DSROW + (Mi(l) & 1) * 8, trans: true);
                    var al = Ldmatrix(dst, l => Keys * DSROW + (kk * 16 + (Mi(l) >> 1) * 8 + Mr(l)) * DSROW + (Mi(l) & 1) * 8, trans: true);
                    for (int j = 0; j < 4; j += 2)
                    {
                        var kb = Ldmatrix(ks, l => (kk * 16 + (Mi(l) & 1) * 8 + Mr(l)) * SROW + (warp * 4 + j) * 8 + (Mi(l) >> 1) * 8, trans: true);
                        Mma(dq[j], ah, kb, 0);
                        Mma(dq[j], al, kb, 0);
                        Mma(dq[j + 1], ah, kb, 2);
                        Mma(dq[j + 1], al, kb, 2);
                    }
                }
                for (int lane = 0; lane < 32; lane++)
                {
                    int g = lane >> 2, t = lane & 3, rowA = i0 + g, rowB = rowA + 8;
                    for (int j = 0; j < 4; j++)
                    {
                        int d = (warp * 4 + j) * 8 + 2 * t;
                        for (int e = 0; e < 2; e++)
                        {
                            if (rowA < L) Add(bhBase + (long)rowA * D + d + e, dq[j][lane][e]);
                            if (rowB < L) Add(bhBase + (long)rowB * D + d + e, dq[j][lane][2 + e]);
                        }
                    }
                }
            }
        }

        for (int warp = 0; warp < Warps; warp++)
            for (int lane = 0; lane < 32; lane++)
            {
                int g = lane >> 2, t = lane & 3, rowA = key0 + warp * 16 + g, rowB = rowA + 8;
                for (int nt = 0; nt < D / 8; nt++)
                    for (int e = 0; e < 2; e++)
                    {
                        int d = nt * 8 + 2 * t + e;
                        if (rowA < L) Put(rowA, d, dk[warp][nt][lane][e], dv[warp][nt][lane][e]);
                        if (rowB < L) Put(rowB, d, dk[warp][nt][lane][2 + e], dv[warp][nt][lane][2 + e]);
                    }
            }

        void Add(long i, float x)   // atomicAdd(dq_acc + i, x)
        {
            res.Acc[i] += x;
            res.AccAbs[i] += Math.Abs(x);
            res.AccAdds[i]++;
        }
        void Put(int row, int d, float k, float v)
        {
            long i = bhBase + (long)row * D + d;
            res.Dk[i] = HalfPrecision.FloatToBFloat16(k * p.Scale);
            res.Dv[i] = HalfPrecision.FloatToBFloat16(v);
            res.KvWrites[i]++;
        }
    }

    static (ushort Lo, ushort Hi) Split(uint w) => ((ushort)(w & 0xffff), (ushort)(w >> 16));

    // ------------------------------------------------------------------ tests

    [Theory]
    [InlineData(1, 1, 1)]
    [InlineData(1, 1, 15)]
    [InlineData(1, 2, 16)]
    [InlineData(1, 1, 17)]
    [InlineData(1, 2, 64)]
    [InlineData(2, 1, 65)]
    [InlineData(1, 2, 130)]
    [InlineData(1, 1, 300)]
    public void EmulatedBackwardMatchesFp64(int B, int H, int L)
    {
        var p = AttentionMmaEmulationTests.Make(B, H, L, seed: 11 + L);
        var r = Run(p, Blocks(p));
        Assert.All(r.KvWrites, n => Assert.Equal(1, n));   // every element of dk and dv written exactly once
        int keyBlocks = (L + Keys - 1) / Keys;
        Assert.All(r.AccAdds, n => Assert.Equal(keyBlocks, n));   // and every dq element gets one term per key block
        Check("dq", r.Dq, p.Dq);
        Check("dk", r.Dk, p.Dk);
        Check("dv", r.Dv, p.Dv);
    }

    /// <summary>
    /// The atomics' order: the blocks in reverse and in a shuffled order give accumulators within the fp32 rounding of
    /// summing ceil(L / 64) block terms in any order, |a - b| ≤ 2 (n - 1) 2⁻²⁴ Σ|term| per element (n - 1 additions
    /// into the zeroed accumulator, each rounding by at most 2⁻²⁴ of a partial sum bounded by Σ|term|).
    /// </summary>
    [Theory]
    [InlineData(1, 2, 130)]
    [InlineData(1, 1, 300)]
    public void BlockOrderChangesDqOnlyByFp32Rounding(int B, int H, int L)
    {
        var p = AttentionMmaEmulationTests.Make(B, H, L, seed: 5 + L);
        var blocks = Blocks(p).ToArray();
        var forward = Run(p, blocks);
        var reversed = Run(p, blocks.Reverse());
        var shuffled = Run(p, blocks.OrderBy(_ => Random.Shared.Next()));
        int n = (L + Keys - 1) / Keys;
        double maxDiff = 0;
        foreach (var other in new[] { reversed, shuffled })
        {
            for (int i = 0; i < forward.Acc.Length; i++)
            {
                double diff = Math.Abs((double)forward.Acc[i] - other.Acc[i]), bound = 2.0 * (n - 1) * Math.Pow(2, -24) * forward.AccAbs[i] * 1.0001;
                maxDiff = Math.Max(maxDiff, diff);
                Assert.True(diff <= bound, $"dq_acc[{i}]: {forward.Acc[i]:R} vs {other.Acc[i]:R}, more than fp32 rounding {bound:G3} apart");
            }
            Assert.Equal(forward.Dk, other.Dk);   // dk and dv have one writer: bitwise the same in any order
            Assert.Equal(forward.Dv, other.Dv);
            Check("dq (other order)", other.Dq, p.Dq);
        }
        output.WriteLine($"largest dq_acc difference between block orders: {maxDiff:G3}");
    }

    /// <summary>METALORA_ATTENTION=onepass selects version 4 (version 3's forward with it); the other values keep their meaning.</summary>
    [Fact]
    public void TheSwitchSelectsVersion4()
    {
        Assert.Equal(AttentionKernel.OnePass, AttentionKernels.Parse("onepass"));
        Assert.Equal(AttentionKernel.Pipelined, AttentionKernels.Parse("pipelined"));
        Assert.Equal(AttentionKernel.TensorCore, AttentionKernels.Parse("mma"));
        Assert.Equal(AttentionKernel.Scalar, AttentionKernels.Parse(null));
        Assert.Equal(AttentionKernel.Scalar, AttentionKernels.Parse("OnePass"));   // exact values only, as before
        Assert.Equal("onepass", AttentionKernel.OnePass.Tag());
        Assert.Equal(4, new[] { AttentionKernel.Scalar, AttentionKernel.TensorCore, AttentionKernel.Pipelined, AttentionKernel.OnePass }.Select(k => k.Tag()).Distinct().Count());
    }

    void Check(string name, ushort[] got, double[] want)
    {
        double max = want.Max(Math.Abs), err = 0;
        for (int i = 0; i < got.Length; i++) err = Math.Max(err, Math.Abs(HalfPrecision.BFloat16ToFloat(got[i]) - want[i]));
        output.WriteLine($"{name}: max error {err:G3}, max |ref| {max:G3} (ratio {err / Math.Max(max, 1e-30):G3})");
        // Version 2's rule (AttentionMmaEmulationTests): about the output's own bf16 rounding with the hi + lo split;
        // a wrong index, stage, mask or scale errs by O(max). L = 1: dS = 0 up to fp32 rounding (the absolute floor).
        Assert.True(err <= max / 256 + 1e-4, $"{name}: max error {err:G3} against max |ref| {max:G3}");
    }
}
