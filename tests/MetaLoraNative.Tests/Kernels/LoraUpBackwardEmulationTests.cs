using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Kernels;
using MetaLoraNative.Tests.Testing;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Kernels;

/// <summary>
/// kernels/dev/lora/02_up_backward.cu on the CPU, block by block, warp by warp and thread by thread: the host's plan
/// (<see cref="LoraUpBackwardPlan"/>, the same code the launcher runs: grid, flags, scratch, counters) and a port of
/// the kernel, fp32 arithmetic in its order (warp_sum's xor butterfly, the 4 warps summed in warp order, the partials
/// in tile and chunk order), with its "last block finishes" counters. A schedule interleaves the blocks' two halves:
/// W(b), block b's partial stores, and A(b), its fence (its stores become visible), its counts (atomicAdd, one at a
/// time) and, when it read the last count of its tile or chunk, that finish. Checked: pass 1 reads every element of
/// dy's block exactly once and nothing outside it; every 16-byte load is 16-byte aligned; every part_u and part_m cell
/// has exactly one writer; exactly one block finishes each tile (dmid) and each chunk (dU), and every partial it reads
/// was written and fenced before (the contract comment's ordering argument), each read once; the counters return to
/// 0, so a second call on the same counters works; the results equal the fp64 oracle (CpuBackend.LoraUpBackward)
/// within fp32 rounding, dmid stored as the bf16 rounding of its fp32 sum; every schedule gives the same bits.
/// </summary>
public class LoraUpBackwardEmulationTests(ITestOutputHelper output)
{
    const ulong Base = 0x7f00_0000_0000;   // a pool block: 256-byte aligned

    /// <summary>dy (allRows, ldy) bf16 with the block at (row0, s); a and dmid (allRows, ld) with the block at (row0, o).</summary>
    sealed record Problem(int N, int Rows, int R, int Row0, int S, int Ldy, int O, int Ld, bool WithDu);

    sealed class Result
    {
        public float[] DU = [], Dmid = [], DmidSum = [];
        public int[] DyReads = [];
        public int[] TileFinisher = [], ChunkFinisher = [];   // the block that finished each tile (chunk), -1 none
    }

    /// <summary>
    /// Schedules of the blocks' halves (block index, false: W, true: A), each W(b) before its A(b): in block order, in
    /// reverse, all stores first then the counts in reverse, and random interleavings.
    /// </summary>
    static IEnumerable<(bool Count, int Block)[]> Schedules(int blocks, int randoms)
    {
        yield return Enumerable.Range(0, blocks).SelectMany(b => new[] { (false, b), (true, b) }).ToArray();
        yield return Enumerable.Range(0, blocks).Reverse().SelectMany(b => new[] { (false, b), (true, b) }).ToArray();
        yield return Enumerable.Range(0, blocks).Select(b => (false, b)).Concat(Enumerable.Range(0, blocks).Reverse().Select(b => (true, b))).ToArray();
        for (int seed = 0; seed < randoms; seed++)
        {
            var rng = new Random(17 + seed);
            var pending = Enumerable.Range(0, blocks).Select(b => (false, b)).ToList();
            var s = new List<(bool, int)>();
            while (pending.Count > 0)
            {
                int pick = rng.Next(pending.Count);
                var e = pending[pick];
                pending.RemoveAt(pick);
                s.Add(e);
                if (!e.Item1) pending.Add((true, e.Item2));
            }
            yield return s.ToArray();
        }
    }

    /// <summary>One call: the kernel's blocks in <paramref name="schedule"/>, on the counters <paramref name="count"/>.</summary>
    static Result Emulate(Problem q, float[] dy, float[] u, float[] a, float[] du0, (bool Count, int Block)[] schedule, uint[] count)
    {
        const int T = LoraUpBackwardPlan.Threads, W = LoraUpBackwardPlan.Warps, V = LoraUpBackwardPlan.VecCols, Tile = LoraUpBackwardPlan.Tile;
        int R = q.R, n = q.N, rows = q.Rows;
        var (tiles, chunks) = LoraUpBackwardPlan.Grid(n, rows);
        Assert.True(count.Length >= LoraUpBackwardPlan.Counters(n, rows));
        Assert.All(count, c => Assert.Equal(0u, c));   // zero on entry
        ulong dyPtr = Base + 2UL * (ulong)(q.Row0 * q.Ldy + q.S);
        int flags = LoraUpBackwardPlan.FlagsOf(dyPtr, q.Ldy, q.WithDu);
        var (nPartU, nPartM) = LoraUpBackwardPlan.Scratch(n, rows, R, q.WithDu);
        var partU = new float[nPartU];
        var partM = new float[nPartM];
        var uWriter = Enumerable.Repeat(-1, (int)nPartU).ToArray();   // the block that stored each cell
        var mWriter = Enumerable.Repeat(-1, (int)nPartM).ToArray();
        var fenced = new bool[tiles * chunks];                        // the block's stores are visible device-wide
        var uReads = new int[nPartU];
        var mReads = new int[nPartM];
        var res = new Result
        {
            DyReads = new int[dy.Length], DU = (float[])du0.Clone(), Dmid = new float[n * R], DmidSum = new float[n * R],
            TileFinisher = Enumerable.Repeat(-1, tiles).ToArray(), ChunkFinisher = Enumerable.Repeat(-1, chunks).ToArray(),
        };
        bool duOn = (flags & LoraUpBackwardPlan.WithDu) != 0;

        float LoadDy(int i, int c)   // row i, column c of the block
        {
            int e = (q.Row0 + i) * q.Ldy + q.S + c;
            Assert.True(i >= 0 && i < n && c >= 0 && c < rows, $"dy read ({i}, {c}) outside the block");
            res.DyReads[e]++;
            return dy[e];
        }

        float ReadPartial(float[] part, int[] writer, int[] reads, int idx, int finisher)   // __ldcg after the finisher's fence
        {
            Assert.True(writer[idx] >= 0 && fenced[writer[idx]], $"block {finisher} reads a partial no fenced block wrote ({idx})");
            reads[idx]++;
            return part[idx];
        }

        void Store(int b)   // W(b): the block's pass over dy and its partial stores
        {
            int t = b % tiles, ch = b / tiles;
            int i0 = t * Tile, nrows = Math.Min(Tile, n - i0);
            var aS = new float[Tile, R];
            for (int x = 0; x < T; x++)
                for (int s = x; s < Tile * R; s += T)
                {
                    int i = s / R, k = s - i * R;
                    aS[i, k] = duOn && i < nrows ? a[(q.Row0 + i0 + i) * q.Ld + q.O + k] : 0f;
                }
            var red = new float[W, Tile, R];
            var du = new float[T, V, R];
            var uR = new float[T, V, R];
            for (int x = 0; x < T; x++)
            {
                int c0 = ch * LoraUpBackwardPlan.Chunk + x * V, cols = Math.Max(0, Math.Min(V, rows - c0));
                for (int j = 0; j < V; j++)
                    for (int k = 0; k < R; k++) uR[x, j, k] = j < cols ? u[(c0 + j) * R + k] : 0f;
            }
            // rows in groups of Unroll: a group's 16-byte loads first (rows past nrows load nothing), then each row's arithmetic
            for (int g = 0; g < nrows; g += LoraUpBackwardPlan.Unroll)
            for (int i = g; i < Math.Min(g + LoraUpBackwardPlan.Unroll, nrows); i++)
            {
                var m = new float[T, R];
                for (int x = 0; x < T; x++)
                {
                    int c0 = ch * LoraUpBackwardPlan.Chunk + x * V, cols = Math.Max(0, Math.Min(V, rows - c0));
                    bool vec = (flags & LoraUpBackwardPlan.Vec) != 0 && cols == V;
                    if (vec)
                    {
                        ulong address = dyPtr + 2UL * (ulong)(i0 * q.Ldy + i * q.Ldy + c0);
                        Assert.True(address % 16 == 0, $"a 16-byte load of dy at {address:x}");
                    }
                    var y = new float[V];
                    for (int j = 0; j < V; j++) y[j] = j < cols ? LoadDy(i0 + i, c0 + j) : 0f;
                    for (int k = 0; k < R; k++)
                    {
                        float mk = 0f, ak = aS[i, k];
                        for (int j = 0; j < V; j++)
                        {
                            mk += y[j] * uR[x, j, k];
                            du[x, j, k] += y[j] * ak;
                        }
                        m[x, k] = mk;
                    }
                }
                for (int w = 0; w < W; w++)
                    for (int k = 0; k < R; k++)
                    {
                        // warp_sum: for o = 16, 8, .., 1: v += shfl_xor(v, o), every lane at once
                        var v = new float[32];
                        for (int l = 0; l < 32; l++) v[l] = m[w * 32 + l, k];
                        for (int o = 16; o > 0; o >>= 1)
                        {
                            var next = new float[32];
                            for (int l = 0; l < 32; l++) next[l] = v[l] + v[l ^ o];
                            v = next;
                        }
                        red[w, i, k] = v[0];   // lane 0 writes
                    }
            }
            for (int x = 0; x < T; x++)
                for (int s = x; s < nrows * R; s += T)
                {
                    int i = s / R, k = s - i * R;
                    float sum = 0f;
                    for (int w = 0; w < W; w++) sum += red[w, i, k];
                    int idx = (ch * n + i0 + i) * R + k;
                    Assert.Equal(-1, mWriter[idx]);
                    partM[idx] = sum;
                    mWriter[idx] = b;
                }
            if (duOn)
                for (int x = 0; x < T; x++)
                {
                    int c0 = ch * LoraUpBackwardPlan.Chunk + x * V, cols = Math.Max(0, Math.Min(V, rows - c0));
                    for (int j = 0; j < cols; j++)
                        for (int k = 0; k < R; k++)
                        {
                            int idx = (t * rows + c0) * R + j * R + k;
                            Assert.Equal(-1, uWriter[idx]);
                            partU[idx] = du[x, j, k];
                            uWriter[idx] = b;
                        }
                }
        }

        void CountAndFinish(int b)   // A(b): fence, thread 0's counts, and the finish when it was the last
        {
            int t = b % tiles, ch = b / tiles;
            int i0 = t * Tile, nrows = Math.Min(Tile, n - i0);
            fenced[b] = true;
            int f = 0;
            if (count[t]++ == chunks - 1) f |= 1;                          // atomicAdd returns the old value
            if (duOn && count[tiles + ch]++ == tiles - 1) f |= 2;
            if ((f & 1) != 0)
            {
                Assert.Equal(-1, res.TileFinisher[t]);
                res.TileFinisher[t] = b;
                for (int x = 0; x < T; x++)
                    for (int s = x; s < nrows * R; s += T)
                    {
                        int i = s / R, k = s - i * R;
                        float sum = 0f;
                        for (int c = 0; c < chunks; c++) sum += ReadPartial(partM, mWriter, mReads, (i0 + i) * R + k + c * n * R, b);
                        res.DmidSum[(i0 + i) * R + k] = sum;
                        res.Dmid[(i0 + i) * R + k] = HalfPrecision.RoundToBFloat16(sum);
                    }
                count[t] = 0;
            }
            if ((f & 2) != 0)
            {
                Assert.Equal(-1, res.ChunkFinisher[ch]);
                res.ChunkFinisher[ch] = b;
                for (int x = 0; x < T; x++)
                {
                    int c0 = ch * LoraUpBackwardPlan.Chunk + x * V, cols = Math.Max(0, Math.Min(V, rows - c0));
                    for (int j = 0; j < cols; j++)
                        for (int k = 0; k < R; k++)
                        {
                            float sum = 0f;
                            for (int tt = 0; tt < tiles; tt++) sum += ReadPartial(partU, uWriter, uReads, c0 * R + tt * rows * R + j * R + k, b);
                            res.DU[(c0 + j) * R + k] += sum;
                        }
                }
                count[tiles + ch] = 0;
            }
        }

        Assert.Equal(2 * tiles * chunks, schedule.Length);
        var stored = new bool[tiles * chunks];
        foreach (var (isCount, b) in schedule)
        {
            if (isCount)
            {
                Assert.True(stored[b]);
                CountAndFinish(b);
            }
            else
            {
                Assert.False(stored[b]);
                stored[b] = true;
                Store(b);
            }
        }
        Assert.All(uWriter, w => Assert.True(w >= 0));
        Assert.All(mWriter, w => Assert.True(w >= 0));
        Assert.All(res.TileFinisher, f => Assert.True(f >= 0));                   // exactly one: the Assert.Equal(-1, ..) above
        Assert.All(res.ChunkFinisher, f => Assert.True(f >= 0 || !duOn));
        Assert.All(uReads, r => Assert.Equal(1, r));
        Assert.All(mReads, r => Assert.Equal(1, r));
        Assert.All(count, c => Assert.Equal(0u, c));                              // left zero for the next call
        return res;
    }

    public static TheoryData<int, int, int, int, int, int, int, bool> Cases => new()
    {
        // n, rows, r2, row0, s, ldy, o (a's and dmid's column), withDu
        { 1, 1, 1, 0, 0, 8, 0, true },
        { 70, 200, 1, 0, 0, 200, 0, true },        // aligned: 16-byte loads, a column edge inside the last vector group
        { 65, 1030, 2, 3, 8, 1048, 1, true },      // a second column chunk of 6 columns, the last tile one row
        { 130, 2053, 4, 1, 3, 2064, 2, true },     // a block at an odd column: scalar loads
        { 64, 1024, 3, 0, 1024, 3072, 0, true },   // the middle target of a (.., 3 × 1024) dy: exact tile and chunk
        { 33, 300, 4, 2, 16, 320, 1, false },      // dmid only
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void BothPassesMatchTheOracleReadDyOnceAndWriteEachPartialOnce(int n, int rows, int r2, int row0, int s, int ldy, int o, bool withDu)
    {
        var q = new Problem(n, rows, r2, row0, s, ldy, o, o + r2 + 1, withDu);
        int allRows = row0 + n + 1;
        var rand = new TestData(31 * n + rows);
        float[] Bf(int count) => Array.ConvertAll(rand.Normal(count), v => HalfPrecision.RoundToBFloat16((float)v));
        var dy = Bf(allRows * ldy);
        var a = Bf(allRows * q.Ld);
        var u = Array.ConvertAll(rand.Normal(rows * r2), v => (float)v);
        var du0 = Array.ConvertAll(rand.Normal(rows * r2), v => (float)v);
        var (tiles, chunks) = LoraUpBackwardPlan.Grid(n, rows);
        var count = new uint[LoraUpBackwardPlan.CounterCapacity(LoraUpBackwardPlan.Counters(n, rows))];   // the backend's, zeroed once
        var schedules = Schedules(tiles * chunks, 3).ToList();
        var r = Emulate(q, dy, u, a, du0, schedules[0], count);

        // dy: every element of the block read once, nothing else
        for (int i = 0; i < allRows; i++)
            for (int c = 0; c < ldy; c++)
            {
                bool inside = i >= row0 && i < row0 + n && c >= s && c < s + rows;
                Assert.True(r.DyReads[i * ldy + c] == (inside ? 1 : 0), $"dy ({i}, {c}) read {r.DyReads[i * ldy + c]} times");
            }

        // the oracle, on the same values
        using var be = CpuBackend.F64();
        using var tdy = be.Upload(Array.ConvertAll(dy, v => (double)v), allRows, ldy);
        using var ta = be.Upload(Array.ConvertAll(a, v => (double)v), allRows, q.Ld);
        using var tu = be.Upload(Array.ConvertAll(u, v => (double)v), rows, r2);
        using var tdu = be.Upload(Array.ConvertAll(du0, v => (double)v), rows, r2);
        using var tm = be.Zeros(allRows, q.Ld);
        var dmidS = new MatrixSlice(tm, row0, n, o, r2);
        be.LoraUpBackward(new MatrixSlice(tdy, row0, n, s, rows), tu, withDu ? (MatrixSlice?)new MatrixSlice(ta, row0, n, o, r2) : null, withDu ? (Tensor?)tdu : null, dmidS);
        var refDu = be.DownloadDouble(tdu);
        var refM = be.DownloadDouble(tm);
        double Worst(double[] want, Func<int, double> got, int count)
        {
            double scale = want.Max(Math.Abs), diff = 0;
            for (int i = 0; i < count; i++) diff = Math.Max(diff, Math.Abs(want[i] - got(i)));
            return diff / Math.Max(scale, 1e-30);
        }
        var wantM = new double[n * r2];
        for (int i = 0; i < n; i++)
            for (int k = 0; k < r2; k++) wantM[i * r2 + k] = refM[(row0 + i) * q.Ld + o + k];
        double errM = Worst(wantM, i => r.DmidSum[i], n * r2);
        double errU = Worst(refDu, i => r.DU[i], rows * r2);
        output.WriteLine($"n {n}, rows {rows}, r2 {r2}, flags {LoraUpBackwardPlan.FlagsOf(Base + 2UL * (ulong)(row0 * ldy + s), ldy, withDu)}: " +
                         $"dmid rel err {errM:E2}, dU rel err {errU:E2}");
        Assert.True(errM < 1e-5, $"dmid's fp32 sums vs fp64: {errM:E2}");
        Assert.True(errU < 1e-5, $"dU vs fp64: {errU:E2}");
        if (!withDu) Assert.Equal(du0, r.DU);
        Assert.All(Enumerable.Range(0, n * r2), i => Assert.Equal(HalfPrecision.RoundToBFloat16(r.DmidSum[i]), r.Dmid[i]));

        // the other schedules, each on the counters the previous call left (reused, as the backend does): the same bits,
        // whichever block finished
        var finishers = new HashSet<string>();
        foreach (var schedule in schedules)
        {
            var again = Emulate(q, dy, u, a, du0, schedule, count);
            Assert.Equal(r.DU, again.DU);
            Assert.Equal(r.Dmid, again.Dmid);
            finishers.Add(string.Join(",", again.TileFinisher.Concat(again.ChunkFinisher)));
        }
        output.WriteLine($"{schedules.Count} schedules, {finishers.Count} distinct sets of finishing blocks");
        if (tiles * chunks > 1) Assert.True(finishers.Count > 1, "the schedules should change which blocks finish");
    }

    [Fact]
    public void PlanFlagsGridAndLimits()
    {
        // FLUX.1-dev at 1024²: n 4,608, a linear1 target of 12,288 columns and a 3,072 one
        Assert.Equal((72, 12), LoraUpBackwardPlan.Grid(4608, 12288));
        Assert.Equal((72, 3), LoraUpBackwardPlan.Grid(4608, 3072));
        Assert.Equal((1, 1), LoraUpBackwardPlan.Grid(1, 1));
        Assert.Equal((2, 2), LoraUpBackwardPlan.Grid(65, 1025));
        Assert.Equal(LoraUpBackwardPlan.Vec | LoraUpBackwardPlan.WithDu, LoraUpBackwardPlan.FlagsOf(Base + 2 * 3072, 21504, true));
        Assert.Equal(LoraUpBackwardPlan.WithDu, LoraUpBackwardPlan.FlagsOf(Base + 2, 21504, true));   // one element in
        Assert.Equal(0, LoraUpBackwardPlan.FlagsOf(Base, 21500, false));                              // rows off 16 bytes
        Assert.Equal((72L * 12288 * 1, 12L * 4608), LoraUpBackwardPlan.Scratch(4608, 12288, 1, true));
        Assert.Equal((0L, 3L * 4608 * 4), LoraUpBackwardPlan.Scratch(4608, 3072, 4, false));
        Assert.Equal(72 + 12, LoraUpBackwardPlan.Counters(4608, 12288));
        Assert.Equal(2, LoraUpBackwardPlan.Counters(1, 1));
        Assert.Equal(1024, LoraUpBackwardPlan.CounterCapacity(84));
        Assert.Equal(1024, LoraUpBackwardPlan.CounterCapacity(1024));
        Assert.Equal(2048, LoraUpBackwardPlan.CounterCapacity(1025));
        Assert.True(LoraUpBackwardPlan.Takes(4608, 12288, 4, 21504, 4, 4));
        Assert.False(LoraUpBackwardPlan.Takes(4608, 12288, 5, 21504, 5, 5));                         // r2 past 4: version 1
        Assert.False(LoraUpBackwardPlan.Takes(4608, 3072, 0, 3072, 1, 1));
        Assert.False(LoraUpBackwardPlan.Takes(200_000, 12288, 1, 21504, 1, 1));                      // n·ldy past 2^31
        Assert.False(LoraUpBackwardPlan.Takes(0, 3072, 1, 3072, 1, 1));
        Assert.False(LoraUpBackwardPlan.Takes(1, 65536 * 1024 + 1, 1, 65536 * 1024 + 8, 1, 1));          // 65,537 column chunks
    }
}
