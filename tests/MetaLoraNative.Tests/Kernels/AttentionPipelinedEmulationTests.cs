using MetaLoraNative.Engine.IO;
using Xunit.Abstractions;
using static MetaLoraNative.Tests.Kernels.MmaEmulation;

namespace MetaLoraNative.Tests.Kernels;

/// <summary>
/// CPU emulation of attention version 3's forward (attention_forward_pipelined in
/// kernels/dev/attention/03_pipelined_forward.cu), lane by lane: the same block and warp tiling, the two shared stages
/// the K/V tiles alternate between (tile j+1 is copied into the other stage before tile j is multiplied, as the
/// cp.async pipeline does, so a stage mix-up corrupts the result here too), zero fill past L, the ldmatrix row
/// addresses, the base-2 online softmax and the lse conversion. Checked against an fp64 forward, with every output
/// element written exactly once. It cannot check timing, races or the PTX layouts (assumed, see <see cref="MmaEmulation"/>):
/// `metalora check cuda --dev` does on a GPU. Keep it in step with the kernel.
/// </summary>
public class AttentionPipelinedEmulationTests(ITestOutputHelper output)
{
    const int MaxD = 128, SROW = MaxD + 8, Warps = 8, Br = 16 * Warps, Bc = 32;
    const float Log2E = 1.4426950408889634f;

    sealed record Problem(int B, int H, int L, int D, ushort[] Q, ushort[] K, ushort[] V)
    {
        public long Bhd(int b, int h, int l, int d) => (((long)b * H + h) * L + l) * D + d;
        public long Blhd(int b, int h, int l, int d) => (((long)b * L + l) * H + h) * D + d;
    }

    static Problem Make(int B, int H, int L, int D, int seed)
    {
        var rng = new Random(seed);
        ushort[] R(float scale) => [.. Enumerable.Range(0, B * H * L * D).Select(_ => HalfPrecision.FloatToBFloat16((float)(rng.NextDouble() * 2 - 1) * scale))];
        return new Problem(B, H, L, D, R(2f), R(2f), R(1f));
    }

    /// <summary>The fp64 forward: out (B, L, H·D) and lse (B, H, L) from the bf16 inputs.</summary>
    static (double[] Out, double[] Lse) Reference(Problem p)
    {
        var o = new double[p.Q.Length];
        var lse = new double[p.B * p.H * p.L];
        double sc = 1.0 / Math.Sqrt(p.D);
        static double F(ushort x) => HalfPrecision.BFloat16ToFloat(x);
        var s = new double[p.L];
        for (int b = 0; b < p.B; b++)
            for (int h = 0; h < p.H; h++)
                for (int i = 0; i < p.L; i++)
                {
                    for (int j = 0; j < p.L; j++)
                    {
                        double dot = 0;
                        for (int d = 0; d < p.D; d++) dot += F(p.Q[p.Bhd(b, h, i, d)]) * F(p.K[p.Bhd(b, h, j, d)]);
                        s[j] = dot * sc;
                    }
                    double m = s.Max(), l = s.Sum(x => Math.Exp(x - m));
                    lse[(b * p.H + h) * p.L + i] = m + Math.Log(l);
                    for (int d = 0; d < p.D; d++)
                    {
                        double acc = 0;
                        for (int j = 0; j < p.L; j++) acc += Math.Exp(s[j] - m) / l * F(p.V[p.Bhd(b, h, j, d)]);
                        o[p.Blhd(b, h, i, d)] = acc;
                    }
                }
        return (o, lse);
    }

    static uint LdPair(ushort[] t, long at, bool ok) => ok ? Pack(t[at], t[at + 1]) : 0u;

    /// <summary>attention_forward_pipelined over the whole grid; <paramref name="writes"/> counts each output element's stores.</summary>
    static (ushort[] Out, float[] Lse) Forward(Problem p, int[] writes)
    {
        int D = p.D, L = p.L, KS = D / 16, NTO = D / 8, tiles = (L + Bc - 1) / Bc;
        var outp = new ushort[p.Q.Length];
        var lseOut = new float[p.B * p.H * L];
        float scale2 = 1f / MathF.Sqrt(D) * Log2E;
        for (int b = 0; b < p.B; b++)
            for (int h = 0; h < p.H; h++)
                for (int bx = 0; bx < (L + Br - 1) / Br; bx++)
                {
                    var ks = new[] { new ushort[Bc * SROW], new ushort[Bc * SROW] };
                    var vs = new[] { new ushort[Bc * SROW], new ushort[Bc * SROW] };
                    void LoadTile(int j0, int stage)
                    {
                        // load_kv_tile: 16-byte chunks, zero-filled past L
                        for (int j = 0; j < Bc; j++)
                            for (int c = 0; c < D; c++)
                            {
                                int key = j0 + j;
                                ks[stage][j * SROW + c] = key < L ? p.K[p.Bhd(b, h, key, c)] : (ushort)0;
                                vs[stage][j * SROW + c] = key < L ? p.V[p.Bhd(b, h, key, c)] : (ushort)0;
                            }
                    }
                    LoadTile(0, 0);

                    // per warp: Q fragments, O accumulators, running max and sum (rows A = g, B = g + 8)
                    var qa = new uint[Warps][][][];
                    var o = new float[Warps][][][];
                    var mA = new float[Warps][]; var mB = new float[Warps][]; var lA = new float[Warps][]; var lB = new float[Warps][];
                    for (int w = 0; w < Warps; w++)
                    {
                        qa[w] = [.. Enumerable.Range(0, KS).Select(_ => Regs(4))];
                        o[w] = [.. Enumerable.Range(0, NTO).Select(_ => Acc())];
                        mA[w] = Enumerable.Repeat(float.NegativeInfinity, 32).ToArray();
                        mB[w] = Enumerable.Repeat(float.NegativeInfinity, 32).ToArray();
                        lA[w] = new float[32];
                        lB[w] = new float[32];
                        for (int lane = 0; lane < 32; lane++)
                        {
                            int g = lane >> 2, t = lane & 3, rowA = bx * Br + w * 16 + g, rowB = rowA + 8;
                            for (int k = 0; k < KS; k++)
                            {
                                int c = k * 16 + 2 * t;
                                qa[w][k][lane][0] = LdPair(p.Q, rowA < L ? p.Bhd(b, h, rowA, c) : 0, rowA < L);
                                qa[w][k][lane][1] = LdPair(p.Q, rowB < L ? p.Bhd(b, h, rowB, c) : 0, rowB < L);
                                qa[w][k][lane][2] = LdPair(p.Q, rowA < L ? p.Bhd(b, h, rowA, c + 8) : 0, rowA < L);
                                qa[w][k][lane][3] = LdPair(p.Q, rowB < L ? p.Bhd(b, h, rowB, c + 8) : 0, rowB < L);
                            }
                        }
                    }

                    for (int tile = 0; tile < tiles; tile++)
                    {
                        int st = tile & 1, j0 = tile * Bc;
                        if (tile + 1 < tiles) LoadTile(j0 + Bc, st ^ 1);
                        var kt = ks[st];
                        var vt = vs[st];
                        for (int w = 0; w < Warps; w++)
                        {
                            var s = Enumerable.Range(0, Bc / 8).Select(_ => Acc()).ToArray();
                            for (int np = 0; np < Bc / 8; np += 2)
                                for (int k = 0; k < KS; k++)
                                {
                                    var kb = Ldmatrix(kt, lane => (np * 8 + (lane >> 3 >> 1) * 8 + (lane & 7)) * SROW + k * 16 + ((lane >> 3) & 1) * 8, trans: false);
                                    Mma(s[np], qa[w][k], kb, 0);
                                    Mma(s[np + 1], qa[w][k], kb, 2);
                                }
                            var mxA = new float[32]; var mxB = new float[32];
                            for (int lane = 0; lane < 32; lane++)
                            {
                                int t = lane & 3;
                                mxA[lane] = mxB[lane] = float.NegativeInfinity;
                                for (int n = 0; n < Bc / 8; n++)
                                    for (int e = 0; e < 2; e++)
                                    {
                                        bool ok = j0 + n * 8 + 2 * t + e < L;
                                        s[n][lane][e] = ok ? s[n][lane][e] * scale2 : float.NegativeInfinity;
                                        s[n][lane][2 + e] = ok ? s[n][lane][2 + e] * scale2 : float.NegativeInfinity;
                                        mxA[lane] = MathF.Max(mxA[lane], s[n][lane][e]);
                                        mxB[lane] = MathF.Max(mxB[lane], s[n][lane][2 + e]);
                                    }
                            }
                            Shuffle(mxA, MathF.Max);
                            Shuffle(mxB, MathF.Max);
                            for (int lane = 0; lane < 32; lane++)
                            {
                                float mnA = MathF.Max(mA[w][lane], mxA[lane]), mnB = MathF.Max(mB[w][lane], mxB[lane]);
                                float alA = float.Exp2(mA[w][lane] - mnA), alB = float.Exp2(mB[w][lane] - mnB);
                                lA[w][lane] *= alA;
                                lB[w][lane] *= alB;
                                for (int n = 0; n < NTO; n++)
                                {
                                    o[w][n][lane][0] *= alA; o[w][n][lane][1] *= alA;
                                    o[w][n][lane][2] *= alB; o[w][n][lane][3] *= alB;
                                }
                                for (int n = 0; n < Bc / 8; n++)
                                    for (int e = 0; e < 2; e++)
                                    {
                                        s[n][lane][e] = float.Exp2(s[n][lane][e] - mnA);
                                        s[n][lane][2 + e] = float.Exp2(s[n][lane][2 + e] - mnB);
                                        lA[w][lane] += s[n][lane][e];
                                        lB[w][lane] += s[n][lane][2 + e];
                                    }
                                mA[w][lane] = mnA;
                                mB[w][lane] = mnB;
                            }
                            for (int kk = 0; kk < Bc / 16; kk++)
                            {
                                var a = Regs(4);
                                for (int lane = 0; lane < 32; lane++)
                                {
                                    a[lane][0] = PackF(s[2 * kk][lane][0], s[2 * kk][lane][1]);
                                    a[lane][1] = PackF(s[2 * kk][lane][2], s[2 * kk][lane][3]);
                                    a[lane][2] = PackF(s[2 * kk + 1][lane][0], s[2 * kk + 1][lane][1]);
                                    a[lane][3] = PackF(s[2 * kk + 1][lane][2], s[2 * kk + 1][lane][3]);
                                }
                                for (int dp = 0; dp < NTO; dp += 2)
                                {
                                    var vb = Ldmatrix(vt, lane => (kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * SROW + dp * 8 + (lane >> 3 >> 1) * 8, trans: true);
                                    Mma(o[w][dp], a, vb, 0);
                                    Mma(o[w][dp + 1], a, vb, 2);
                                }
                            }
                        }
                    }

                    for (int w = 0; w < Warps; w++)
                    {
                        Shuffle(lA[w], (x, y) => x + y);
                        Shuffle(lB[w], (x, y) => x + y);
                        for (int lane = 0; lane < 32; lane++)
                        {
                            int g = lane >> 2, t = lane & 3, rowA = bx * Br + w * 16 + g, rowB = rowA + 8;
                            float invA = 1f / lA[w][lane], invB = 1f / lB[w][lane];
                            for (int n = 0; n < NTO; n++)
                            {
                                int d = n * 8 + 2 * t;
                                foreach (var (row, r0, inv) in new[] { (rowA, 0, invA), (rowB, 2, invB) })
                                {
                                    if (row >= L) continue;
                                    for (int e = 0; e < 2; e++)
                                    {
                                        long at = p.Blhd(b, h, row, d + e);
                                        outp[at] = HalfPrecision.FloatToBFloat16(o[w][n][lane][r0 + e] * inv);
                                        writes[at]++;
                                    }
                                }
                            }
                            if (t == 0)
                            {
                                if (rowA < L) lseOut[(b * p.H + h) * L + rowA] = mA[w][lane] * 0.6931471805599453f + MathF.Log(lA[w][lane]);
                                if (rowB < L) lseOut[(b * p.H + h) * L + rowB] = mB[w][lane] * 0.6931471805599453f + MathF.Log(lB[w][lane]);
                            }
                        }
                    }
                }
        return (outp, lseOut);
    }

    /// <summary>The two __shfl_xor_sync steps (1, 2) that combine the four lanes of a row group.</summary>
    static void Shuffle(float[] x, Func<float, float, float> op)
    {
        foreach (int mask in (int[])[1, 2])
        {
            var before = (float[])x.Clone();
            for (int lane = 0; lane < 32; lane++) x[lane] = op(before[lane], before[lane ^ mask]);
        }
    }

    [Theory]
    [InlineData(1, 1, 1, 128)]
    [InlineData(1, 1, 33, 128)]
    [InlineData(2, 1, 77, 64)]
    [InlineData(1, 2, 130, 128)]
    [InlineData(1, 1, 5, 32)]
    [InlineData(1, 1, 300, 128)]
    public void EmulatedForwardMatchesFp64(int B, int H, int L, int D)
    {
        var p = Make(B, H, L, D, seed: 11 + L + D);
        var writes = new int[p.Q.Length];
        var (got, lse) = Forward(p, writes);
        var (want, wantLse) = Reference(p);
        Assert.All(writes, n => Assert.Equal(1, n));   // every output element written exactly once

        // Error budget: the output's own bf16 rounding (2^-9 relative) plus P rounded to bf16 for the P·V product
        // (2^-9 relative per term, so at most 2^-9 · max|v| = 2^-9 here), plus fp32 noise. A wrong index, stage or
        // mask errs by O(max |v|).
        double maxOut = want.Max(Math.Abs), err = 0;
        for (int i = 0; i < got.Length; i++) err = Math.Max(err, Math.Abs(HalfPrecision.BFloat16ToFloat(got[i]) - want[i]));
        double allowed = Math.Pow(2, -9) * (maxOut + 1) + 1e-5;
        double lseErr = 0;
        for (int i = 0; i < lse.Length; i++) lseErr = Math.Max(lseErr, Math.Abs(lse[i] - wantLse[i]) / Math.Max(1, Math.Abs(wantLse[i])));
        output.WriteLine($"B {B} H {H} L {L} D {D}: out max error {err:G3} (allowed {allowed:G3}, max |ref| {maxOut:G3}); lse max relative error {lseErr:G3}");
        Assert.True(err <= allowed, $"out: max error {err:G3} against allowed {allowed:G3}");
        Assert.True(lseErr <= 1e-5, $"lse: max relative error {lseErr:G3}");
    }

    /// <summary>
    /// The ldmatrix row addresses against the PTX fragment definitions they replace (version 2's direct loads): for K,
    /// B fragment of n-tile n at k-step k is {K[8n + g][16k + 2t..], K[8n + g][16k + 8 + 2t..]}; for V, d-tile n at
    /// k-step kk is {V[16kk + 2t, +1][8n + g], V[16kk + 8 + 2t, +1][8n + g]}. Every pair of n-tiles, every k-step.
    /// </summary>
    [Fact]
    public void LdmatrixAddressesGiveThePtxFragments()
    {
        var rng = new Random(3);
        var tileMem = Enumerable.Range(0, Bc * SROW).Select(_ => (ushort)rng.Next(1, 65535)).ToArray();
        for (int np = 0; np < Bc / 8; np += 2)
            for (int k = 0; k < MaxD / 16; k++)
            {
                var kb = Ldmatrix(tileMem, lane => (np * 8 + (lane >> 3 >> 1) * 8 + (lane & 7)) * SROW + k * 16 + ((lane >> 3) & 1) * 8, trans: false);
                for (int lane = 0; lane < 32; lane++)
                {
                    int g = lane >> 2, t = lane & 3;
                    for (int half = 0; half < 2; half++)
                    {
                        int key = (np + half) * 8 + g, c = k * 16 + 2 * t;
                        Assert.Equal(Pack(tileMem[key * SROW + c], tileMem[key * SROW + c + 1]), kb[lane][2 * half]);
                        Assert.Equal(Pack(tileMem[key * SROW + c + 8], tileMem[key * SROW + c + 9]), kb[lane][2 * half + 1]);
                    }
                }
            }
        for (int kk = 0; kk < Bc / 16; kk++)
            for (int dp = 0; dp < MaxD / 8; dp += 2)
            {
                var vb = Ldmatrix(tileMem, lane => (kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * SROW + dp * 8 + (lane >> 3 >> 1) * 8, trans: true);
                for (int lane = 0; lane < 32; lane++)
                {
                    int g = lane >> 2, t = lane & 3;
                    for (int half = 0; half < 2; half++)
                    {
                        int d = (dp + half) * 8 + g, key = kk * 16 + 2 * t;
                        Assert.Equal(Pack(tileMem[key * SROW + d], tileMem[(key + 1) * SROW + d]), vb[lane][2 * half]);
                        Assert.Equal(Pack(tileMem[(key + 8) * SROW + d], tileMem[(key + 9) * SROW + d]), vb[lane][2 * half + 1]);
                    }
                }
            }
    }
}
