using MetaLoraNative.Engine.IO;
using System.Runtime.CompilerServices;
using System.Text.RegularExpressions;
using MetaLoraNative.Kernels;
using MetaLoraNative.Kernels.Native;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Kernels;

/// <summary>
/// CPU emulation of kernels/gemm.cu, thread by thread: gemm_dot (warp per row, 16-byte chunks, xor-butterfly warp
/// sum, lane j writes column j), gemm_cols (thread per row, p split over the thread rows and over blockIdx.z, shared
/// sum in y order, split-K partials and gemm_finish), gemm_rankk (column per thread, 16-row tiles of A in shared
/// memory). Each port keeps the .cu file's index expressions and summation order, and runs on the launch
/// GemmRouting.Plan makes for the GPU (kernel name, grid, block, parameter struct), so a wrong stride, tile, bound,
/// vector flag or route shows up here without a GPU. Memory is emulated: every index is bounds-checked, every
/// 16-byte load checks its address, every element counts its reads and writes (C written once, read only when
/// beta ≠ 0; A, B and the bias never written). The result is compared with an fp64 GEMM of the same inputs (fp32
/// operands of a mixed product rounded to bf16, as the contract says) within the fp32-accumulation bound plus bf16's
/// half ulp for a bf16 C. What it cannot see: races, the PTX, timing — `metalora check cuda` covers those on a GPU.
/// Keep it in step with gemm.cu: a change to a kernel's loops belongs here too.
/// </summary>
public class SkinnyGemmEmulationTests(ITestOutputHelper output)
{
    const int TargetBlocks = 4 * 132;   // CudaBackend passes 4 × the SM count (an H200 has 132)
    const long WorkspaceBytes = 64 << 10;   // split-K scratch: small, so that its every element can be checked
    const int WARP = 32;

    // ------------------------------------------------------------------ emulated device memory

    sealed class Buffer(string name, int size, ulong address, float[] values)
    {
        public string Name { get; } = name;
        public int Size { get; } = size;
        public ulong Address { get; } = address;
        public float[] Values { get; } = values;
        public int[] Reads { get; } = new int[values.Length];
        public int[] Writes { get; } = new int[values.Length];

        long Check(long i) =>
            i >= 0 && i < Values.Length ? i : throw new InvalidOperationException($"{Name}[{i}] is outside its {Values.Length} elements");

        public float Load(long i)
        {
            Reads[Check(i)]++;
            return Values[i];
        }

        public void Store(long i, float v)
        {
            Writes[Check(i)]++;
            Values[i] = Size == 2 ? HalfPrecision.RoundToBFloat16(v) : v;
        }

        public bool Aligned16(long i) => (Address + (ulong)(i * Size)) % 16 == 0;
    }

    sealed class Memory
    {
        readonly List<Buffer> buffers = [];
        ulong next = 0x7f00_0000_0000;

        /// <summary>A buffer in its own 4 KiB-aligned region, starting offsetElements elements into it.</summary>
        public Buffer Add(string name, int size, float[] values, int offsetElements)
        {
            var b = new Buffer(name, size, next + (ulong)(offsetElements * size), values);
            next += ((ulong)((values.Length + offsetElements) * size) + 8191) & ~4095UL;
            buffers.Add(b);
            return b;
        }

        public Buffer At(ulong ptr, string what) =>
            buffers.FirstOrDefault(b => b.Address == ptr) ?? throw new InvalidOperationException($"{what} pointer 0x{ptr:x} is no buffer's start");
    }

    // ld / ld8 of gemm.cu: an fp32 operand is rounded to bf16 when the product is not all fp32.
    static float Ld(Buffer b, long i, bool rnd)
    {
        float v = b.Load(i);
        return rnd && b.Size == 4 ? HalfPrecision.RoundToBFloat16(v) : v;
    }

    static void Ld8(Buffer b, long i, bool rnd, float[] v)
    {
        if (!b.Aligned16(i)) throw new InvalidOperationException($"16-byte load of {b.Name}[{i}] from a misaligned address");
        for (int e = 0; e < 8; e++) v[e] = Ld(b, i + e, rnd);
    }

    static float Fma(float a, float b, float c) => MathF.FusedMultiplyAdd(a, b, c);

    /// <summary>warp_sum (common.cuh): xor butterfly, every lane ends with the total.</summary>
    static void WarpSum(float[] v)
    {
        var t = new float[WARP];
        for (int o = WARP / 2; o > 0; o >>= 1)
        {
            for (int lane = 0; lane < WARP; lane++) t[lane] = v[lane] + v[lane ^ o];
            Array.Copy(t, v, WARP);
        }
    }

    sealed record Operands(Buffer L, Buffer S, Buffer C, Buffer? Bias, Buffer? Partial, bool Rnd);

    static void Epilogue(in GemmParams p, Operands o, long r, long s, float acc)
    {
        long ci = r * p.CR + s * p.CS;
        float v = p.Alpha * acc;
        if (p.Beta != 0f) v += p.Beta * o.C.Load(ci);
        if (o.Bias != null) v += o.Bias.Load(r * p.BiasR + s * p.BiasS);
        o.C.Store(ci, v);
    }

    // ------------------------------------------------------------------ the kernels

    /// <summary>gemm_dot&lt;NS&gt;: one warp per r.</summary>
    static void Dot(GemmLaunch launch, int NS, Operands o)
    {
        var p = launch.Params;
        for (long bx = 0; bx < launch.Grid.X; bx++)
            for (long by = 0; by < launch.Grid.Y; by++)
                for (int warp = 0; warp < launch.Block.X / WARP; warp++)
                {
                    long r = bx * GemmRouting.DotWarps + warp;
                    long s0 = by * NS;
                    if (r >= p.R) continue;
                    int ns = (int)Math.Min(NS, p.Sn - s0);
                    var acc = new float[NS][];
                    for (int j = 0; j < NS; j++) acc[j] = new float[WARP];
                    float[] lv = new float[8], sv = new float[8];
                    for (int lane = 0; lane < WARP; lane++)
                    {
                        long tail = 0;
                        if (p.VecL != 0)
                        {
                            long chunks = p.K / 8;
                            for (long q = lane; q < chunks; q += WARP)
                            {
                                Ld8(o.L, r * p.LR + q * 8, o.Rnd, lv);
                                for (int j = 0; j < NS; j++)
                                {
                                    if (j >= ns) break;
                                    if (p.VecS != 0) Ld8(o.S, s0 * p.SS + j * p.SS + q * 8, o.Rnd, sv);
                                    else for (int e = 0; e < 8; e++) sv[e] = Ld(o.S, s0 * p.SS + j * p.SS + (q * 8 + e) * p.SP, o.Rnd);
                                    for (int e = 0; e < 8; e++) acc[j][lane] = Fma(lv[e], sv[e], acc[j][lane]);
                                }
                            }
                            tail = chunks * 8;
                        }
                        for (long q = tail + lane; q < p.K; q += WARP)
                        {
                            float l = Ld(o.L, r * p.LR + q * p.LP, o.Rnd);
                            for (int j = 0; j < NS; j++)
                            {
                                if (j >= ns) break;
                                acc[j][lane] = Fma(l, Ld(o.S, s0 * p.SS + j * p.SS + q * p.SP, o.Rnd), acc[j][lane]);
                            }
                        }
                    }
                    for (int j = 0; j < NS; j++) WarpSum(acc[j]);
                    for (int lane = 0; lane < WARP; lane++)
                        for (int j = 0; j < NS; j++)
                            if (j < ns && lane == j) Epilogue(p, o, r, s0 + j, acc[j][lane]);
                }
    }

    /// <summary>gemm_cols&lt;NS&gt;: thread x per r, thread rows y and blockIdx.z over p; the shared sum after the barrier.</summary>
    static void Cols(GemmLaunch launch, int NS, Operands o)
    {
        var p = launch.Params;
        int bxDim = (int)launch.Block.X, byDim = (int)launch.Block.Y;
        for (long bx = 0; bx < launch.Grid.X; bx++)
            for (long by = 0; by < launch.Grid.Y; by++)
                for (long bz = 0; bz < launch.Grid.Z; bz++)
                {
                    var red = new float[GemmRouting.ColsY, NS, GemmRouting.ColsX];
                    long s0 = by * NS;
                    int ns = (int)Math.Min(NS, p.Sn - s0);
                    long qBegin = bz * p.KChunk, qEnd = Math.Min(p.K, qBegin + p.KChunk);
                    for (int ty = 0; ty < byDim; ty++)   // before __syncthreads
                        for (int tx = 0; tx < bxDim; tx++)
                        {
                            long r = bx * GemmRouting.ColsX + tx;
                            var acc = new float[NS];
                            if (r < p.R)
                                for (long q = qBegin + ty; q < qEnd; q += GemmRouting.ColsY)
                                {
                                    float l = Ld(o.L, r * p.LR + q * p.LP, o.Rnd);
                                    for (int j = 0; j < NS; j++)
                                    {
                                        if (j >= ns) break;
                                        acc[j] = Fma(l, Ld(o.S, s0 * p.SS + j * p.SS + q * p.SP, o.Rnd), acc[j]);
                                    }
                                }
                            for (int j = 0; j < NS; j++) red[ty, j, tx] = acc[j];
                        }
                    for (int ty = 0; ty < byDim; ty++)   // after it
                        for (int tx = 0; tx < bxDim; tx++)
                        {
                            long r = bx * GemmRouting.ColsX + tx;
                            if (r >= p.R) continue;
                            for (int j = ty; j < ns; j += GemmRouting.ColsY)
                            {
                                float v = 0f;
                                for (int y = 0; y < GemmRouting.ColsY; y++) v += red[y, j, tx];
                                if (launch.Grid.Z == 1) Epilogue(p, o, r, s0 + j, v);
                                else o.Partial!.Store((bz * p.R + r) * p.Sn + s0 + j, v);
                            }
                        }
                }
    }

    /// <summary>gemm_finish: grid-stride over R·S, partial sums in chunk order.</summary>
    static void Finish(GemmLaunch launch, Operands o)
    {
        var p = launch.Params;
        long ksplit = (p.K + p.KChunk - 1) / p.KChunk;
        long threads = (long)launch.FinishGrid.X * 256;
        for (long bx = 0; bx < launch.FinishGrid.X; bx++)
            for (int t = 0; t < 256; t++)
                for (long i = bx * 256 + t; i < p.R * p.Sn; i += threads)
                {
                    long r = i / p.Sn, s = i % p.Sn;
                    float v = 0f;
                    for (long z = 0; z < ksplit; z++) v += o.Partial!.Load((z * p.R + r) * p.Sn + s);
                    Epilogue(p, o, r, s, v);
                }
    }

    /// <summary>gemm_rankk: thread x per column j, op(B)(0..K-1, j) in registers, 16-row tiles of op(A) in shared memory.</summary>
    static void RankK(GemmLaunch launch, Operands o)
    {
        var p = launch.Params;
        int threads = (int)launch.Block.X;
        for (long bx = 0; bx < launch.Grid.X; bx++)
            for (long by = 0; by < launch.Grid.Y; by++)
            {
                var bj = new float[threads][];
                for (int t = 0; t < threads; t++)
                {
                    long j = bx * GemmRouting.RkThreads + t;
                    bj[t] = new float[GemmRouting.RkK];
                    for (int q = 0; q < GemmRouting.RkK; q++) bj[t][q] = j < p.Sn && q < p.K ? Ld(o.S, j * p.SS + q * p.SP, o.Rnd) : 0f;
                }
                long tiles = (p.R + GemmRouting.RkRows - 1) / GemmRouting.RkRows;
                for (long tt = by; tt < tiles; tt += launch.Grid.Y)
                {
                    long i0 = tt * GemmRouting.RkRows;
                    var tile = new float[GemmRouting.RkRows, GemmRouting.RkK];
                    for (int t = 0; t < threads; t++)
                    {
                        int tr = t / GemmRouting.RkK, tq = t % GemmRouting.RkK;
                        tile[tr, tq] = i0 + tr < p.R && tq < p.K ? Ld(o.L, (i0 + tr) * p.LR + tq * p.LP, o.Rnd) : 0f;
                    }
                    for (int t = 0; t < threads; t++)
                    {
                        long j = bx * GemmRouting.RkThreads + t;
                        if (j >= p.Sn) continue;
                        for (int rr = 0; rr < GemmRouting.RkRows; rr++)
                        {
                            if (i0 + rr >= p.R) break;
                            float acc = 0f;
                            for (int q = 0; q < GemmRouting.RkK; q++)
                            {
                                if (q >= p.K) break;
                                acc = Fma(tile[rr, q], bj[t][q], acc);
                            }
                            Epilogue(p, o, i0 + rr, j, acc);
                        }
                    }
                }
            }
    }

    static readonly Regex KernelName = new(@"^(gemv_dot|skinny_dot|gemv_cols|skinny_cols|rankk)_(bf16|f32)_(bf16|f32)_(bf16|f32)$");

    static int SizeOf(string type) => type == "f32" ? 4 : 2;

    /// <summary>Runs a launch on emulated memory, as the GPU would run it.</summary>
    static void Emulate(GemmLaunch launch, Memory mem)
    {
        var m = KernelName.Match(launch.Kernel);
        Assert.True(m.Success, $"{launch.Kernel} is no kernel of gemm.cu");
        var p = launch.Params;
        var o = new Operands(mem.At(p.L, "l"), mem.At(p.S, "s"), mem.At(p.C, "c"), p.Bias == 0 ? null : mem.At(p.Bias, "bias"),
                             p.Partial == 0 ? null : mem.At(p.Partial, "partial"),
                             !(m.Groups[2].Value == "f32" && m.Groups[3].Value == "f32" && m.Groups[4].Value == "f32"));
        Assert.True(o.L.Size == SizeOf(m.Groups[2].Value) && o.S.Size == SizeOf(m.Groups[3].Value) && o.C.Size == SizeOf(m.Groups[4].Value),
                    $"{launch.Kernel} launched on {o.L.Name}, {o.S.Name}, {o.C.Name} of other types");
        if (o.Bias != null) Assert.Equal(o.C.Size, o.Bias.Size);
        switch (m.Groups[1].Value)
        {
            case "gemv_dot": Dot(launch, 1, o); break;
            case "skinny_dot": Dot(launch, GemmRouting.NsSkinny, o); break;
            case "gemv_cols": Cols(launch, 1, o); break;
            case "skinny_cols": Cols(launch, GemmRouting.NsSkinny, o); break;
            default: RankK(launch, o); break;
        }
        if (launch.Finish != null)
        {
            Assert.Equal($"gemm_finish_{m.Groups[4].Value}", launch.Finish);
            Finish(launch, o);
        }
    }

    // ------------------------------------------------------------------ a case: inputs, launch, fp64 reference, checks

    sealed record Case(long M, long N, long K, bool TransA, bool TransB, int SizeA, int SizeB, int SizeC, float Alpha, float Beta, bool Bias, int Offset)
    {
        public override string ToString() =>
            $"{M}×{N}×{K} ta={TransA} tb={TransB} {SizeA}/{SizeB}/{SizeC} B alpha {Alpha} beta {Beta}{(Bias ? " bias" : "")}{(Offset != 0 ? $" offset {Offset}" : "")}";
    }

    static float[] Values(int n, int size, Random rng)
    {
        var v = new float[n];
        for (int i = 0; i < n; i++)
        {
            float x = (float)(rng.NextDouble() * 2 - 1);
            v[i] = size == 2 ? HalfPrecision.RoundToBFloat16(x) : x;   // fp32 values are not bf16-exact: the rounding rule is seen
        }
        return v;
    }

    /// <summary>The launch of a case, or null when it routes to cuBLASLt; throws on any check that fails.</summary>
    static GemmLaunch? Run(Case x, int seed, Func<GemmLaunch, GemmLaunch>? adjust = null)
    {
        var rng = new Random(seed);
        int m = (int)x.M, n = (int)x.N, k = (int)x.K;
        long lda = x.TransA ? m : k, ldb = x.TransB ? k : n;
        var mem = new Memory();
        float[] av = Values(m * k, x.SizeA, rng), bv = Values(k * n, x.SizeB, rng);
        float[] c0 = x.Beta == 0f ? Enumerable.Repeat(float.NaN, m * n).ToArray() : Values(m * n, x.SizeC, rng);
        var a = mem.Add("a", x.SizeA, (float[])av.Clone(), x.Offset);
        var b = mem.Add("b", x.SizeB, (float[])bv.Clone(), x.Offset);
        var c = mem.Add("c", x.SizeC, (float[])c0.Clone(), x.Offset);
        var bias = x.Bias ? mem.Add("bias", x.SizeC, Values(n, x.SizeC, rng), x.Offset) : null;
        var ws = mem.Add("workspace", 4, new float[WorkspaceBytes / 4], 0);
        var problem = new GemmProblem(m, n, k, x.TransA, x.TransB, lda, ldb, n, x.SizeA, x.SizeB, x.SizeC,
                                      GemmRouting.Alignment(a.Address), GemmRouting.Alignment(b.Address), GemmRouting.Alignment(c.Address));
        var route = GemmRouting.Route(problem).Route;
        if (route == GemmRoute.CublasLt) return null;
        var launch = GemmRouting.Plan(problem, route, a.Address, b.Address, c.Address, bias?.Address ?? 0, x.Alpha, x.Beta,
                                      ws.Address, WorkspaceBytes, TargetBlocks);
        if (adjust != null) launch = adjust(launch);
        Emulate(launch, mem);

        bool rnd = !(x.SizeA == 4 && x.SizeB == 4 && x.SizeC == 4);
        double In(float v, int size) => rnd && size == 4 ? HalfPrecision.RoundToBFloat16(v) : v;
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double sum = 0, abs = 0;
                for (int q = 0; q < k; q++)
                {
                    double t = In(av[x.TransA ? q * m + i : i * k + q], x.SizeA) * In(bv[x.TransB ? j * k + q : q * n + j], x.SizeB);
                    sum += t;
                    abs += Math.Abs(t);
                }
                double betaC = x.Beta != 0f ? (double)x.Beta * c0[i * n + j] : 0, bj = bias != null ? bias.Values[j] : 0;
                double reference = x.Alpha * sum + betaC + bj;
                // fp32 accumulation over k terms (any order) and the epilogue's few fp32 roundings; then bf16's half ulp
                double bound = (k + 8) * Math.Pow(2, -23) * Math.Abs(x.Alpha) * abs
                               + Math.Pow(2, -21) * (Math.Abs(x.Alpha * sum) + Math.Abs(betaC) + Math.Abs(bj));
                if (x.SizeC == 2) bound += Math.Pow(2, -8) * (Math.Abs(reference) + bound);
                float got = c.Values[i * n + j];
                // (if, not Assert.True: the messages would be formatted for every element)
                if (!(Math.Abs(got - reference) <= bound + 1e-30))
                    Assert.Fail($"{x}: c[{i}, {j}] = {got}, fp64 {reference:G9}, bound {bound:E2} ({launch.Kernel}, grid {launch.Grid}, vec {launch.Params.VecL}{launch.Params.VecS})");
                if (c.Writes[i * n + j] != 1) Assert.Fail($"{x}: c[{i}, {j}] written {c.Writes[i * n + j]} times ({launch.Kernel})");
                if (c.Reads[i * n + j] != (x.Beta != 0f ? 1 : 0)) Assert.Fail($"{x}: c[{i}, {j}] read {c.Reads[i * n + j]} times with beta {x.Beta} ({launch.Kernel})");
            }
        foreach (var input in new[] { a, b }.Concat(bias != null ? [bias] : []))
            Assert.True(input.Writes.All(w => w == 0), $"{x}: {input.Name} was written");
        long partials = launch.KSplit > 1 ? launch.KSplit * launch.Params.R * launch.Params.Sn : 0;
        for (long i = 0; i < ws.Values.Length; i++)
            if (ws.Writes[i] != (i < partials ? 1 : 0)) Assert.Fail($"{x}: partial [{i}] written {ws.Writes[i]} times (ksplit {launch.KSplit})");
        return launch;
    }

    // ------------------------------------------------------------------ the matrix

    /// <summary>Small odd shapes for each route (and an aligned one with 16-byte loads): (M, N, K).</summary>
    public static TheoryData<int, int, int> Shapes() => new()
    {
        // GEMV: M or N = 1 (dot and cols layouts, K short and long, split K)
        { 1, 33, 130 }, { 130, 1, 33 }, { 1, 1, 257 }, { 17, 1, 3 }, { 1, 3, 1 }, { 1, 17, 600 }, { 130, 1, 64 },
        // rank-k: K ≤ 16
        { 33, 130, 1 }, { 17, 3, 16 }, { 130, 33, 5 }, { 3, 17, 16 },
        // skinny: min(M, N) ≤ 16, long K (S tile of 16 partly used, split K)
        { 130, 3, 33 }, { 3, 130, 257 }, { 17, 16, 130 }, { 16, 40, 300 }, { 130, 8, 64 },
        // off the 16-byte rule with every dimension > 16: several S tiles
        { 33, 35, 37 },
    };

    static readonly (float Alpha, float Beta, bool Bias)[] Epilogues = [(1f, 0f, false), (0.5f, 1f, false), (-1.25f, -0.5f, false), (1f, 0f, true), (0.75f, 0.5f, true)];

    [Theory]
    [MemberData(nameof(Shapes))]
    public void EveryTransposeTypeAndEpilogueMatchesFp64(int m, int n, int k)
    {
        int runs = 0, seed = m * 1_000_003 + n * 1009 + k;
        var kernels = new SortedSet<string>();
        foreach (bool ta in new[] { false, true })
            foreach (bool tb in new[] { false, true })
                for (int e = 0; e < Epilogues.Length; e++)
                    for (int types = 0; types < 8; types++)
                    {
                        var (alpha, beta, bias) = Epilogues[e];
                        int offset = (e + types + (ta ? 1 : 0)) % 2;   // every type and epilogue meets both alignments
                        var x = new Case(m, n, k, ta, tb, (types & 4) != 0 ? 4 : 2, (types & 2) != 0 ? 4 : 2, (types & 1) != 0 ? 4 : 2,
                                         alpha, beta, bias, offset);
                        var launch = Run(x, seed++);
                        if (launch == null) continue;
                        runs++;
                        kernels.Add($"{Regex.Replace(launch.Kernel, "_(bf16|f32)", "")}{(launch.KSplit > 1 ? " split" : "")}" +
                                    $"{(launch.Kernel.Contains("_dot_") ? $" vec {launch.Params.VecL}{launch.Params.VecS}" : "")}");
                    }
        output.WriteLine($"{m}×{n}×{k}: {runs} emulated launches: {string.Join(", ", kernels)}");
        Assert.True(runs > 0, "every case went to cuBLASLt");
    }

    /// <summary>Every kernel and every branch of the plan is reached by the shapes above.</summary>
    [Fact]
    public void TheShapesReachEveryKernelAndBranch()
    {
        var seen = new HashSet<string>();
        foreach (var row in Shapes())
        {
            int m = (int)row[0], n = (int)row[1], k = (int)row[2];
            foreach (bool ta in new[] { false, true })
                foreach (bool tb in new[] { false, true })
                    foreach (int offset in new[] { 0, 1 })
                    {
                        var p = new GemmProblem(m, n, k, ta, tb, ta ? m : k, tb ? k : n, n, 2, 2, 2, offset == 0 ? 256 : 2, 256, 256);
                        var route = GemmRouting.Route(p).Route;
                        if (route == GemmRoute.CublasLt) continue;
                        var l = GemmRouting.Plan(p, route, 256, 512, 768, 0, 1, 0, 1024, WorkspaceBytes, TargetBlocks);
                        string kind = KernelName.Match(l.Kernel).Groups[1].Value;
                        seen.Add(kind);
                        if (kind.EndsWith("_dot", StringComparison.Ordinal)) seen.Add($"dot vec {l.Params.VecL}{l.Params.VecS}");
                        if (kind.EndsWith("_cols", StringComparison.Ordinal)) seen.Add($"cols split {l.KSplit > 1}");
                        if (route == GemmRoute.Skinny && l.Grid.Y > 1) seen.Add("several S tiles");
                    }
        }
        output.WriteLine(string.Join(", ", seen.Order()));
        foreach (string want in new[] { "gemv_dot", "gemv_cols", "skinny_dot", "skinny_cols", "rankk", "dot vec 11", "dot vec 10", "dot vec 00",
                                        "cols split True", "cols split False", "several S tiles" })
            Assert.Contains(want, seen);
    }

    /// <summary>The grid-stride loops (rankk over row tiles, gemm_finish over outputs) hold with fewer blocks than work.</summary>
    [Fact]
    public void GridStrideLoopsCoverEverythingWithASmallGrid()
    {
        var rankk = Run(new Case(130, 33, 5, false, true, 2, 4, 2, 0.5f, 1f, false, 0), 7, l => l with { Grid = (l.Grid.X, 2, 1) });
        Assert.StartsWith("rankk_", rankk!.Kernel);
        var split = Run(new Case(1, 17, 600, false, false, 2, 2, 4, 1f, 1f, false, 0), 8, l => l with { FinishGrid = (1, 1, 1) });
        Assert.True(split!.KSplit > 1);
        var manyOutputs = Run(new Case(16, 300, 700, true, false, 2, 2, 4, 1f, 0f, false, 0), 9, l => l with { FinishGrid = (1, 1, 1) });
        Assert.True(manyOutputs!.KSplit > 1 && manyOutputs.Params.R * manyOutputs.Params.Sn > 256, $"{manyOutputs}");
    }

    /// <summary>A kernel that ignored beta = 0 would read the NaN-filled C; one that wrote a tile twice would be seen too: the checks bite.</summary>
    [Fact]
    public void TheChecksCatchABrokenLaunch()
    {
        var x = new Case(130, 3, 33, false, true, 2, 2, 2, 1f, 0f, false, 0);
        Assert.NotNull(Run(x, 1));
        Assert.ThrowsAny<Exception>(() => Run(x, 1, l => l with { Params = l.Params with { Beta = 1f } }));   // reads C
        Assert.ThrowsAny<Exception>(() => Run(x, 1, l => l with { Grid = (l.Grid.X - 1, l.Grid.Y, 1) }));     // misses rows
        Assert.ThrowsAny<Exception>(() => Run(x, 1, l => l with { Params = l.Params with { LR = l.Params.LR + 1 } }));   // wrong stride
        var misaligned = new Case(130, 3, 40, false, true, 2, 2, 2, 1f, 0f, false, 1);
        Assert.ThrowsAny<Exception>(() => Run(misaligned, 1, l => l with { Params = l.Params with { VecL = 1, VecS = 1 } }));   // 16-byte loads off 16
    }

    // ------------------------------------------------------------------ the emulation and the .cu agree on their constants

    [Fact]
    public void ConstantsAndParamsMatchGemmCu()
    {
        string src = KernelCompiler.ReadSource("gemm.cu");
        int Define(string name) => int.Parse(Regex.Match(src, $@"#define {name} (\d+)").Groups[1].Value);
        Assert.Equal(GemmRouting.NsSkinny, Define("NS_SKINNY"));
        Assert.Equal(GemmRouting.DotWarps, Define("DOT_WARPS"));
        Assert.Equal(GemmRouting.ColsX, Define("COLS_X"));
        Assert.Equal(GemmRouting.ColsY, Define("COLS_Y"));
        Assert.Equal(GemmRouting.RkRows, Define("RK_ROWS"));
        Assert.Equal(GemmRouting.RkK, Define("RK_K"));
        Assert.Equal(GemmRouting.RkThreads, Define("RK_THREADS"));
        Assert.Equal(GemmRouting.SmallDim, GemmRouting.RkK);   // rank-k takes every K the rule sends it
        Assert.Equal(int.Parse(Regex.Match(src, @"sizeof\(GemmParams\) == (\d+)").Groups[1].Value), Unsafe.SizeOf<GemmParams>());
    }

    /// <summary>Every kernel name a plan can produce is an entry point of gemm.cu's PTX (NVRTC, no GPU; skips without it).</summary>
    [SkippableFact]
    public void EveryPlannedKernelIsAnEntryOfGemmCu()
    {
        bool ok = NativeLibraries.TryLoad(NativeLibraries.Nvrtc, out string report) != IntPtr.Zero;
        if (!ok) output.WriteLine($"NVRTC not loadable ({report})");
        Skip.IfNot(ok, "NVRTC is not loadable");
        var r = new KernelCompiler(cacheDirectory: "").Compile("gemm.cu", "compute_80");
        Assert.True(r.Success, r.Log);
        string ptx = System.Text.Encoding.ASCII.GetString(r.Image!);
        var names = new SortedSet<string> { "bias_add_bf16", "bias_add_f32" };
        foreach (var row in Shapes())
            for (int types = 0; types < 8; types++)
                foreach (bool ta in new[] { false, true })
                {
                    int m = (int)row[0], n = (int)row[1], k = (int)row[2];
                    var p = new GemmProblem(m, n, k, ta, false, ta ? m : k, n, n, (types & 4) != 0 ? 4 : 2, (types & 2) != 0 ? 4 : 2,
                                            (types & 1) != 0 ? 4 : 2, 2, 256, 256);
                    var l = GemmRouting.Plan(p, GemmRouting.Route(p).Route, 256, 512, 768, 0, 1, 0, 1024, WorkspaceBytes, TargetBlocks);
                    names.Add(l.Kernel);
                    if (l.Finish != null) names.Add(l.Finish);
                }
        output.WriteLine($"{names.Count} kernels: {string.Join(", ", names)}");
        Assert.Equal(5 * 8 + 2 + 2, names.Count);
        foreach (string name in names) Assert.Contains($".entry {name}(", ptx);
    }
}
