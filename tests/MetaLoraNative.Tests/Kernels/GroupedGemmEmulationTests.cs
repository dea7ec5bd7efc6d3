using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Kernels;
using MetaLoraNative.Kernels.Verification;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Kernels;

/// <summary>
/// kernels/dev/gemm/02_grouped.cu on the CPU, block by block and thread by thread: the host's table
/// (<see cref="GroupedGemmPlan"/>, the same code the launcher runs) decoded as the kernel does it (binary search of
/// tile_start, local tile, dot or general mode, the flags), with every load and store going through a float arena
/// whose addresses are the table's pointers. Checked: every cell of every entry's c block has exactly one writer and
/// nothing outside the blocks is written; every 16-byte access is 16-byte aligned and stays inside its operand's
/// block; the values equal an fp64 product within fp32 rounding; the table's modes, flags and tile counts.
/// </summary>
public class GroupedGemmEmulationTests(ITestOutputHelper output)
{
    const ulong Base = 0x7f00_0000_0000;   // a pool block: 256-byte aligned

    /// <summary>A float arena: address Base + 4·i is element i.</summary>
    sealed class Arena(int n)
    {
        public readonly float[] Data = new float[n];
        public readonly int[] Writes = new int[n];
        public int Index(ulong address, bool vector)
        {
            Assert.True(address >= Base && (address - Base) % 4 == 0, $"address {address:x} off the arena's floats");
            if (vector) Assert.True(address % 16 == 0, $"a 16-byte access at {address:x}");
            return (int)((address - Base) / 4);
        }
    }

    /// <summary>One entry's operands as element offsets into the arena.</summary>
    record Case(int M, int N, int K, bool TransA, bool TransB, float Alpha, float Beta, int AOffset, int Lda, int BOffset, int Ldb, int COffset, int Ldc);

    static GroupedProduct Product(Case c) =>
        new(Base + 4UL * (ulong)c.AOffset, Base + 4UL * (ulong)c.BOffset, Base + 4UL * (ulong)c.COffset, c.M, c.N, c.K, c.Lda, c.Ldb, c.Ldc,
            c.TransA, c.TransB, c.Alpha, c.Beta);

    /// <summary>The kernel: every block of the grid, every thread (general) or warp (dot) of it.</summary>
    static void Emulate(Arena mem, GroupedEntry[] table, int tiles, HashSet<(int Lo, int Hi)>[] readable)
    {
        float Ld(int entry, ulong address, bool vector = false)
        {
            int i = mem.Index(address, vector);
            Assert.Contains(readable[entry], r => i >= r.Lo && i + (vector ? 4 : 1) <= r.Hi);
            return mem.Data[i];
        }
        void St(ulong address, float v)
        {
            int i = mem.Index(address, false);
            mem.Data[i] = v;
            mem.Writes[i]++;
        }
        float Out(in GroupedEntry e, int entry, ulong ci, float acc) => e.Beta != 0 ? e.Alpha * acc + e.Beta * Ld(entry, ci) : e.Alpha * acc;

        for (int block = 0; block < tiles; block++)
        {
            int entry = GroupedGemmPlan.Find(table, block);
            var e = table[entry];
            int t = block - e.TileStart;
            Assert.InRange(t, 0, int.MaxValue);
            if ((e.Flags & GroupedGemmPlan.Dot) != 0)
            {
                for (int warp = 0; warp < GroupedGemmPlan.Warps; warp++)
                {
                    int o = t * GroupedGemmPlan.Warps + warp;
                    if (o >= e.M * e.N) continue;
                    int i = o / e.N, j = o - i * e.N;
                    ulong ar = e.A + 4UL * (ulong)(i * e.Lda), br = e.B + 4UL * (ulong)(j * e.Ldb);
                    var lanes = new float[32];
                    bool vec = (e.Flags & GroupedGemmPlan.VecIn) != 0;
                    for (int lane = 0; lane < 32; lane++)
                    {
                        float acc = 0;
                        if (vec)
                            for (int q = lane; q < e.K >> 2; q += 32)
                                for (int u = 0; u < 4; u++)
                                {
                                    if (u == 0) { Ld(entry, ar + 16UL * (ulong)q, true); Ld(entry, br + 16UL * (ulong)q, true); }
                                    acc += Ld(entry, ar + 4UL * (ulong)(4 * q + u)) * Ld(entry, br + 4UL * (ulong)(4 * q + u));
                                }
                        else
                            for (int q = lane; q < e.K; q += 32) acc += Ld(entry, ar + 4UL * (ulong)q) * Ld(entry, br + 4UL * (ulong)q);
                        lanes[lane] = acc;
                    }
                    for (int d = 16; d > 0; d >>= 1)   // the xor butterfly: every lane ends with the same sum
                    {
                        var next = new float[32];
                        for (int lane = 0; lane < 32; lane++) next[lane] = lanes[lane] + lanes[lane ^ d];
                        lanes = next;
                    }
                    ulong ci = e.C + 4UL * (ulong)(i * e.Ldc + j);
                    St(ci, Out(e, entry, ci, lanes[0]));
                }
            }
            else
            {
                int groups = (e.N + GroupedGemmPlan.Cols - 1) / GroupedGemmPlan.Cols;
                for (int x = 0; x < GroupedGemmPlan.Threads; x++)
                {
                    int q = t * GroupedGemmPlan.Threads + x;
                    if (q >= e.M * groups) continue;
                    int i = q / groups, j0 = (q - i * groups) * GroupedGemmPlan.Cols, cols = Math.Min(GroupedGemmPlan.Cols, e.N - j0);
                    bool ta = (e.Flags & GroupedGemmPlan.TransA) != 0, tb = (e.Flags & GroupedGemmPlan.TransB) != 0;
                    bool vec = (e.Flags & GroupedGemmPlan.VecIn) != 0 && cols == GroupedGemmPlan.Cols;
                    var acc = new float[GroupedGemmPlan.Cols];
                    for (int p = 0; p < e.K; p++)
                    {
                        float av = Ld(entry, e.A + 4UL * (ulong)(ta ? p * e.Lda + i : i * e.Lda + p));
                        if (vec) Ld(entry, e.B + 4UL * (ulong)(p * e.Ldb + j0), true);
                        for (int c = 0; c < cols; c++)
                            acc[c] += av * Ld(entry, e.B + 4UL * (ulong)(tb ? (j0 + c) * e.Ldb + p : p * e.Ldb + j0 + c));
                    }
                    int ci = i * e.Ldc + j0;
                    if ((e.Flags & GroupedGemmPlan.VecC) != 0 && cols == GroupedGemmPlan.Cols) mem.Index(e.C + 4UL * (ulong)ci, true);
                    for (int c = 0; c < cols; c++)
                    {
                        ulong a = e.C + 4UL * (ulong)(ci + c);
                        St(a, Out(e, entry, a, acc[c]));
                    }
                }
            }
        }
    }

    /// <summary>Lays the cases out in one arena (each operand a block of a wider row, as GemmSlice passes them), runs the plan and the emulation, checks.</summary>
    (GroupedEntry[] Table, int Tiles) Check(IReadOnlyList<Case> cases, int seed)
    {
        int size = 0;
        foreach (var c in cases)
            size = Math.Max(size, Math.Max(c.AOffset + (c.TransA ? c.K : c.M) * c.Lda, Math.Max(c.BOffset + (c.TransB ? c.N : c.K) * c.Ldb, c.COffset + c.M * c.Ldc)));
        var mem = new Arena(size + 8);
        var rng = new Random(seed);
        for (int i = 0; i < mem.Data.Length; i++) mem.Data[i] = (float)(rng.NextDouble() * 2 - 1);
        var before = (float[])mem.Data.Clone();
        var (table, tiles) = GroupedGemmPlan.Build([.. cases.Select(Product)]);
        // each entry may read only its operands' rows (ranges of the arena)
        var readable = cases.Select(c =>
        {
            var r = new HashSet<(int, int)>();
            for (int row = 0; row < (c.TransA ? c.K : c.M); row++) r.Add((c.AOffset + row * c.Lda, c.AOffset + row * c.Lda + (c.TransA ? c.M : c.K)));
            for (int row = 0; row < (c.TransB ? c.N : c.K); row++) r.Add((c.BOffset + row * c.Ldb, c.BOffset + row * c.Ldb + (c.TransB ? c.K : c.N)));
            for (int row = 0; row < c.M; row++) r.Add((c.COffset + row * c.Ldc, c.COffset + row * c.Ldc + c.N));
            return r;
        }).ToArray();
        Emulate(mem, table, tiles, readable);

        var expectedWrites = new int[mem.Data.Length];
        double worst = 0;
        foreach (var c in cases)
            for (int i = 0; i < c.M; i++)
                for (int j = 0; j < c.N; j++)
                {
                    double dot = 0;
                    for (int p = 0; p < c.K; p++)
                        dot += (double)before[c.AOffset + (c.TransA ? p * c.Lda + i : i * c.Lda + p)] *
                               before[c.BOffset + (c.TransB ? j * c.Ldb + p : p * c.Ldb + j)];
                    int ci = c.COffset + i * c.Ldc + j;
                    double want = c.Alpha * dot + (c.Beta != 0 ? c.Beta * (double)before[ci] : 0);
                    double err = Math.Abs(mem.Data[ci] - want) / (1 + Math.Abs(want));
                    worst = Math.Max(worst, err);
                    Assert.True(err < 1e-5 * Math.Max(1, Math.Sqrt(c.K)), $"entry {c}: c[{i}, {j}] = {mem.Data[ci]}, want {want}");
                    expectedWrites[ci]++;
                }
        for (int i = 0; i < mem.Data.Length; i++)
        {
            Assert.True(expectedWrites[i] == mem.Writes[i], $"element {i}: {mem.Writes[i]} writes, want {expectedWrites[i]}");
            if (expectedWrites[i] == 0) Assert.Equal(before[i], mem.Data[i]);
        }
        output.WriteLine($"{cases.Count} entries, {tiles} blocks; worst relative error {worst:E2}");
        return (table, tiles);
    }

    [Fact]
    public void MixedEntriesCoverEveryCellOnceWithAlignedVectorAccesses()
    {
        // disjoint regions of one arena; offsets multiples of 4 (aligned) unless stated
        var cases = new List<Case>
        {
            new(1, 64, 16, false, false, 1f, 0f, 0, 16, 64, 64, 2048, 64),             // A = M·D: general, float4 in and out
            new(1, 16, 96, false, true, 1f, 1f, 4096, 96, 4200, 96, 6000, 16),         // dM += G·Dᵀ: dot, float4
            new(5, 37, 16, false, false, 1f, 0f, 7000, 16, 7100, 40, 7800, 40),        // N off 4: a short last group
            new(3, 17, 301, false, true, 0.5f, 1f, 8100, 301, 9100, 301, 14300, 20),    // K off 4: scalar dot
            new(7, 9, 13, true, false, 1f, 1f, 14500, 8, 14700, 12, 14900, 9),         // op(A) transposed, odd lds
            new(4, 6, 5, true, true, -2f, 0f, 15000, 4, 15100, 5, 15200, 6),           // both transposed
            new(9, 3, 40, false, true, 1f, 0f, 15301, 41, 15800, 41, 16001, 4),        // odd offsets: no float4
            new(2, 11, 7, false, false, 1f, 1f, 16101, 7, 16201, 12, 16301, 12),       // misaligned b and c
            new(1, 1, 1, false, false, 1f, 1f, 16400, 1, 16404, 1, 16408, 1),
            new(3, 5, 0, false, false, 1f, 1f, 16412, 1, 16416, 5, 16440, 5),          // K = 0: c = beta·c
            new(17, 8, 33, false, true, 1f, 0f, 16500, 36, 17200, 36, 17600, 8),       // M N = 136, not a multiple of 8
        };
        var (table, tiles) = Check(cases, 3);
        int Flags(int i) => table[i].Flags;
        Assert.Equal(GroupedGemmPlan.VecIn | GroupedGemmPlan.VecC, Flags(0));
        Assert.Equal(GroupedGemmPlan.Dot | GroupedGemmPlan.TransB | GroupedGemmPlan.VecIn | GroupedGemmPlan.VecC, Flags(1));
        Assert.Equal(0, Flags(3) & GroupedGemmPlan.VecIn);
        Assert.Equal(0, Flags(6) & (GroupedGemmPlan.VecIn | GroupedGemmPlan.VecC));
        Assert.Equal(0, Flags(7) & (GroupedGemmPlan.VecIn | GroupedGemmPlan.VecC));
        Assert.Equal(GroupedGemmPlan.TransA | GroupedGemmPlan.TransB, Flags(5) & ~GroupedGemmPlan.VecC);   // general mode
        // tile counts: general ceil(M ceil(N/4) / 256), dot ceil(M N / 8); tile_start their prefix sums
        Assert.Equal([1, 2, 1, 7, 1, 1, 4, 1, 1, 1, 17], cases.Select(c => (int)GroupedGemmPlan.TilesOf(Product(c))));
        Assert.Equal(table.Select(e => e.TileStart), cases.Select((c, i) => cases.Take(i).Sum(x => (int)GroupedGemmPlan.TilesOf(Product(x)))));
        Assert.Equal(cases.Sum(c => (int)GroupedGemmPlan.TilesOf(Product(c))), tiles);
    }

    [Fact]
    public void TableDecodeFindsTheEntryOfEveryTile()
    {
        // entries of 1, 3, 1 and 5 tiles: every tile maps to its entry, the first tile of each to its start
        var starts = new[] { 0, 1, 4, 5 };
        var table = starts.Select(s => new GroupedEntry { TileStart = s }).ToArray();
        int[] expected = [0, 1, 1, 1, 2, 3, 3, 3, 3, 3];
        for (int tile = 0; tile < expected.Length; tile++) Assert.Equal(expected[tile], GroupedGemmPlan.Find(table, tile));
        Assert.Equal(0, GroupedGemmPlan.Find([new GroupedEntry()], 123));
    }

    /// <summary>The flux-dev Stage-2 uses at a reduced width: A formation and dM for a slice of the real target list's shapes.</summary>
    [Fact]
    public void FluxDevShapesAtAReducedWidth()
    {
        // the real d_in of the first targets, divided by 48 (3072 → 64, 12288 → 256): the modes and tails stay the same
        var dIns = FluxNames.LoraTargets(FluxConfig.FluxDev).Select(t => t.InFeatures / 48).Distinct().ToArray();
        var cases = new List<Case>();
        int at = 0;
        foreach (int d in dIns)
        {
            cases.Add(new(1, d, 16, false, false, 1f, 0f, at, 16, at + 16, d, at + 16 + 16 * d, d));                          // A = M·D
            at += 16 + 17 * d;
            cases.Add(new(1, 16, d, false, true, 1f, 1f, at, d, at + d, d, at + 17 * d, 16));                                  // dM += G·Dᵀ
            at += 17 * d + 16;
        }
        Check(cases, 5);
    }

    [Fact]
    public void EntriesBeyond32BitIndicesAreRefused()
    {
        var big = new GroupedProduct(Base, Base, Base, 70_000, 70_000, 16, 16, 70_000, 70_000, false, false, 1f, 0f);
        Assert.False(GroupedGemmPlan.Fits(big));
        Assert.Throws<ArgumentException>(() => GroupedGemmPlan.Build([big]));
        Assert.True(GroupedGemmPlan.Fits(big with { M = 1 }));
    }

    [Fact]
    public void TheParityChecksCoverBothModesAndFluxDev()
    {
        Assert.Contains(CudaParity.Dev, c => c.Name == "gemm group g2 mixed" && c.Group == "Gemm");
        Assert.Contains(CudaParity.Dev, c => c.Name == "gemm group g2 flux-dev" && c.Group == "Gemm" && c.Slow);
        var products = CudaParity.GroupedGemmCases.Select(c => new GroupedProduct(Base, Base, Base, c.M, c.N, c.K, 1, 1, 1, c.TransA, c.TransB, c.Alpha, c.Beta));
        Assert.Contains(products, p => GroupedGemmPlan.IsDot(p));
        Assert.Contains(products, p => !GroupedGemmPlan.IsDot(p));
        Assert.Contains(CudaParity.GroupedGemmCases, c => c.Misaligned);
        Assert.Contains(CudaParity.GroupedGemmCases, c => c.K == 0);
    }
}
