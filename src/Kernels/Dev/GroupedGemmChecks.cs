using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Flux;

namespace MetaLoraNative.Kernels.Verification;

// The parity checks of GEMM group version 2 (kernels/dev/gemm/02_grouped.cu, tag g2), in CudaParity.Dev:
// `metalora check cuda --dev`. Each runs GemmGroup with CudaBackend.GroupedGemm on against the fp64 oracle's GemmGroup
// (the entries one by one) and compares whole tensors, so cells outside the entries' blocks must be untouched too.
public static partial class CudaParity
{
    /// <summary>(M, N, K, transA, transB, alpha, beta, misaligned) of the mixed check: both modes, every transpose, the edges.</summary>
    public static readonly (int M, int N, int K, bool TransA, bool TransB, float Alpha, float Beta, bool Misaligned)[] GroupedGemmCases =
    [
        (1, 3072, 16, false, false, 1f, 0f, false),    // A = M·D (general mode, float4 loads and stores)
        (1, 16, 3072, false, true, 1f, 1f, false),     // dM += G·Dᵀ (dot mode, float4 loads)
        (5, 37, 16, false, false, 1f, 0f, false),      // N off the 4 columns of a thread
        (3, 17, 301, false, true, 0.5f, 1f, false),    // K off the float4 rule: scalar dot
        (7, 9, 13, true, false, 1f, 1f, false),        // op(A) transposed
        (4, 6, 5, true, true, -2f, 0f, false),         // both transposed
        (9, 3, 40, false, true, 1f, 0f, true),         // blocks at odd offsets: no 16-byte access
        (2, 11, 7, false, false, 1f, 1f, true),
        (1, 1, 1, false, false, 1f, 1f, false),
        (3, 5, 0, false, false, 1f, 1f, false),        // an empty reduction scales c by beta
    ];

    static IEnumerable<ParityCheck> GroupedGemmChecks() =>
    [
        new("gemm group g2 mixed", "GemmGroup version 2 (kernels/dev/gemm/02_grouped.cu) against the oracle's entry-by-entry products: " +
            "both modes, every transpose, beta 0 and 1, N and K off the vector widths, blocks of wider tensors at odd offsets; " +
            "twice, so the second call reuses the cached table", GroupedGemmMixed),
        new("gemm group g2 flux-dev", "GemmGroup version 2 at FLUX.1-dev's Stage-2 shapes: A = M·D for all 494 targets (r2 1, r1 16, " +
            "d_in 3072 to 15360) into per-module stacked A, then every dM += Gⱼ·Dᵀ, each as one launch",
            GroupedGemmFluxDev) { Slow = true },
    ];

    /// <summary>Operands of one case on one backend: a, b and c as blocks of wider fp32 tensors (one column in when misaligned).</summary>
    static (Tensor A, Tensor B, Tensor C, GemmEntry Entry) GroupedCase(IBackend be, int index)
    {
        var (m, n, k, ta, tb, alpha, beta, odd) = GroupedGemmCases[index];
        int pad = odd ? 1 : 0;
        int aRows = ta ? k : m, aCols = ta ? m : k, bRows = tb ? n : k, bCols = tb ? k : n;
        Tensor Make(int rows, int cols, int seed) =>
            be.Upload(Rand(Math.Max(rows, 1) * (cols + pad + 2), seed), [Math.Max(rows, 1), cols + pad + 2], Precision.Master);
        var a = Make(aRows, aCols, 10 * index + 1);
        var b = Make(bRows, bCols, 10 * index + 2);
        var c = Make(m, n, 10 * index + 3);
        var entry = new GemmEntry(new MatrixSlice(a, 0, aRows, pad, aCols), ta, new MatrixSlice(b, 0, bRows, pad, bCols), tb,
                                  new MatrixSlice(c, 0, m, pad, n), alpha, beta);
        return (a, b, c, entry);
    }

    static void GroupedGemmMixed(ParityContext p)
    {
        var gpu = p.Gpu;
        bool previous = gpu.GroupedGemm;
        var g = Enumerable.Range(0, GroupedGemmCases.Length).Select(i => GroupedCase(gpu, i)).ToArray();
        var c = Enumerable.Range(0, GroupedGemmCases.Length).Select(i => GroupedCase(p.Cpu, i)).ToArray();
        try
        {
            gpu.GroupedGemm = true;
            long uploads = gpu.GroupedUploads, launches = gpu.GroupedLaunches;
            for (int call = 1; call <= 2; call++)
            {
                gpu.GemmGroup([.. g.Select(x => x.Entry)]);
                p.Cpu.GemmGroup([.. c.Select(x => x.Entry)]);
                for (int i = 0; i < g.Length; i++)
                {
                    var (m, n, k, ta, tb, _, beta, odd) = GroupedGemmCases[i];
                    p.F32($"call {call}: c of {m}×{n}×{k} ta={ta} tb={tb} beta={beta}{(odd ? " odd offsets" : "")}", g[i].C, c[i].C, 1e-5);
                }
            }
            ParityContext.Require(gpu.GroupedLaunches - launches == 2, $"{gpu.GroupedLaunches - launches} grouped launches for two calls");
            ParityContext.Require(gpu.GroupedUploads - uploads == 1, $"{gpu.GroupedUploads - uploads} table uploads for two calls of one entry list");
        }
        finally
        {
            gpu.GroupedGemm = previous;
            foreach (var x in g.Concat(c)) { x.A.Dispose(); x.B.Dispose(); x.C.Dispose(); }
        }
    }

    static void GroupedGemmFluxDev(ParityContext p)
    {
        var gpu = p.Gpu;
        bool previous = gpu.GroupedGemm;
        var targets = FluxNames.LoraTargets(FluxConfig.FluxDev);
        var modules = targets.Select((t, i) => (t.BflModule, i)).GroupBy(x => x.BflModule, x => x.i).Select(x => x.ToArray()).ToArray();
        const int R1 = 16, R2 = 1;
        var owned = new List<Tensor>();
        Tensor Up(IBackend be, int[] shape, int seed) { var t = be.Upload(Rand(shape[0] * shape[1], seed), shape, Precision.Master); owned.Add(t); return t; }
        (List<GemmEntry> Form, List<GemmEntry> Dm, Tensor[] A, Tensor[] DM) Build(IBackend be)
        {
            var form = new List<GemmEntry>();
            var dm = new List<GemmEntry>();
            var stacked = new Tensor[modules.Length];
            var dM = new Tensor[targets.Count];
            for (int mi = 0; mi < modules.Length; mi++)
            {
                int dIn = targets[modules[mi][0]].InFeatures, rows = R2 * modules[mi].Length;
                stacked[mi] = Up(be, [rows, dIn], 100_000 + mi);   // stale contents: beta 0 must ignore them
                var gm = Up(be, [rows, dIn], 200_000 + mi);        // G of the module
                for (int j = 0; j < modules[mi].Length; j++)
                {
                    int t = modules[mi][j];
                    var mid = Up(be, [R2, R1], 300_000 + t);
                    var down = Up(be, [R1, dIn], 400_000 + t);
                    dM[t] = Up(be, [R2, R1], 500_000 + t);
                    form.Add(new GemmEntry(mid, false, down, false, new MatrixSlice(stacked[mi], j * R2, R2, 0, dIn)));
                    dm.Add(new GemmEntry(new MatrixSlice(gm, j * R2, R2, 0, dIn), false, down, true, dM[t], 1f, 1f));
                }
            }
            return (form, dm, stacked, dM);
        }
        try
        {
            var g = Build(gpu);
            var c = Build(p.Cpu);
            ParityContext.Require(g.Form.Count == 494 && g.Dm.Count == 494, $"{g.Form.Count} formations, {g.Dm.Count} dM products for 494 targets");
            gpu.GroupedGemm = true;
            long launches = gpu.GroupedLaunches;
            gpu.GemmGroup(g.Form);
            gpu.GemmGroup(g.Dm);
            p.Cpu.GemmGroup(c.Form);
            p.Cpu.GemmGroup(c.Dm);
            ParityContext.Require(gpu.GroupedLaunches - launches == 2, $"{gpu.GroupedLaunches - launches} grouped launches for the two groups");
            p.F32("stacked A of all 304 modules", [.. g.A.SelectMany(gpu.DownloadDouble)], [.. c.A.SelectMany(p.Cpu.DownloadDouble)], 1e-5);
            p.F32("dM of all 494 targets", [.. g.DM.SelectMany(gpu.DownloadDouble)], [.. c.DM.SelectMany(p.Cpu.DownloadDouble)], 1e-5);
        }
        finally
        {
            gpu.GroupedGemm = previous;
            foreach (var t in owned) t.Dispose();
        }
    }
}

// The benches of GEMM group version 2, in KernelBenches.Dev, beside version 1 (one routed GEMM per entry, the engine's
// GemmGroup today): a Stage-2 step's two groups at FLUX.1-dev's shapes.
public static partial class KernelBenches
{
    /// <summary>One call of the op under test, repeated: <see cref="CudaBackend.TimeMs"/> on a GPU (the call once, then timed repetitions).</summary>
    public delegate float BenchTimer(Action call, int repetitions);

    /// <summary>
    /// A step's grouped products: r2 × r1 mid factors, and per module (d_in, targets) the targets stacked into one A
    /// of (targets · r2, d_in) rows, as the fused Stage-2 LoRA forms them.
    /// </summary>
    public sealed record GroupedBenchShape(int R1, int R2, IReadOnlyList<(int DIn, int Targets)> Modules)
    {
        public int Targets => Modules.Sum(m => m.Targets);
    }

    /// <summary>FLUX.1-dev's 494 targets in their 304 modules (d_in 3,072 to 15,360), r2 1, r1 16.</summary>
    public static GroupedBenchShape GroupedFluxDev { get; } = new(16, 1,
        [.. FluxNames.LoraTargets(FluxConfig.FluxDev).GroupBy(t => t.BflModule).Select(g => (g.First().InFeatures, g.Count()))]);

    static IEnumerable<KernelBench> GroupedGemmBenches() =>
    [
        new("gemm group v1", $"GemmGroup version 1 (one routed GEMM per entry) on a Stage-2 step's {GroupedFluxDev.Targets} A = M·D formations and {GroupedFluxDev.Targets} dM += G·Dᵀ, r2 1, r1 16",
            gpu => GroupedGemm(gpu, GroupedFluxDev, 1, gpu.TimeMs)),
        new("gemm group g2", $"GemmGroup version 2 (kernels/dev/gemm/02_grouped.cu, one launch per group) on the same {GroupedFluxDev.Targets} formations and dM products",
            gpu => GroupedGemm(gpu, GroupedFluxDev, 2, gpu.TimeMs)),
    ];

    /// <summary>
    /// mid = 2⁻³, down = 2⁻⁴, so every A = M·D is r1 · 2⁻⁷ (beta 0 over stale 9s); G = 2⁻⁶ and dM starts at 1, so each
    /// call of dM += G·Dᵀ adds d_in · 2⁻¹⁰ and after n calls every dM of a module of d_in is 1 + n · d_in · 2⁻¹⁰. All
    /// of these are dyadic with few bits: fp32 forms them exactly in any summation order, so the checks are exact.
    /// Bytes per group: each product's fp32 operands and output once (formation: D and A; dM: G, D, and dM read and
    /// written). Version 2 must also make exactly one launch per call and at most one table upload per group (its first call).
    /// </summary>
    internal static BenchResult GroupedGemm(IBackend be, GroupedBenchShape shape, int version, BenchTimer time)
    {
        var gpu = be as CudaBackend;
        bool previous = gpu?.GroupedGemm ?? false;
        if (gpu != null) gpu.GroupedGemm = version == 2;
        var owned = new List<Tensor>();
        Tensor Filled(int rows, int cols, float value)
        {
            var t = be.Zeros([rows, cols], Precision.Master);
            be.Fill(t, value);
            owned.Add(t);
            return t;
        }
        try
        {
            var (r1, r2) = (shape.R1, shape.R2);
            var form = new List<GemmEntry>();
            var dm = new List<GemmEntry>();
            var stacked = new List<Tensor>();
            var dM = new List<(Tensor T, int DIn)>();
            double bytesForm = 0, bytesDm = 0, flop = 0;
            foreach (var (dIn, targets) in shape.Modules)
            {
                var a = Filled(targets * r2, dIn, 9f);   // stale contents: beta 0 must ignore them
                var g = Filled(targets * r2, dIn, 1f / 64);
                stacked.Add(a);
                for (int j = 0; j < targets; j++)
                {
                    var mid = Filled(r2, r1, 1f / 8);
                    var down = Filled(r1, dIn, 1f / 16);
                    var d = Filled(r2, r1, 1f);
                    dM.Add((d, dIn));
                    form.Add(new GemmEntry(mid, false, down, false, new MatrixSlice(a, j * r2, r2, 0, dIn)));
                    dm.Add(new GemmEntry(new MatrixSlice(g, j * r2, r2, 0, dIn), false, down, true, d, 1f, 1f));
                    bytesForm += 4.0 * (r2 * r1 + r1 * dIn + r2 * dIn);
                    bytesDm += 4.0 * (r2 * dIn + r1 * dIn + 2 * r2 * r1);
                    flop += 2.0 * r2 * r1 * dIn;
                }
            }
            long launches = gpu?.GroupedLaunches ?? 0, uploads = gpu?.GroupedUploads ?? 0;
            int formCalls = 0, dmCalls = 0;
            float formMs = time(() => { formCalls++; be.GemmGroup(form); }, 10);
            float dmMs = time(() => { dmCalls++; be.GemmGroup(dm); }, 10);
            var checks = new List<(bool Ok, string Text)>
            {
                Uniform("A", [.. stacked.SelectMany(be.Download)], r1 / 128f, 0f),
            };
            foreach (int dIn in dM.Select(d => d.DIn).Distinct().Order())
                checks.Add(Uniform($"dM (d_in {dIn}, {dmCalls} calls)", [.. dM.Where(d => d.DIn == dIn).SelectMany(d => be.Download(d.T))],
                                   (float)(1 + dmCalls * (double)dIn / 1024), 0f));
            if (gpu != null && version == 2)
            {
                long l = gpu.GroupedLaunches - launches, u = gpu.GroupedUploads - uploads;
                bool ok = l == formCalls + dmCalls && u <= 2;
                checks.Add((ok, $"{l} grouped launches for {formCalls + dmCalls} calls, {u} table uploads ({(ok ? "ok" : "FAIL, expected one launch a call and at most one upload a group")})"));
            }
            return new BenchResult($"gemm group {(version == 2 ? "g2" : "v1")}",
                [new($"{shape.Targets} formations ({bytesForm / (formMs * 1e-3) / 1e9:F0} GB/s)", formMs, flop / (formMs * 1e-3) / 1e12),
                 new($"{shape.Targets} dM ({bytesDm / (dmMs * 1e-3) / 1e9:F0} GB/s)", dmMs, flop / (dmMs * 1e-3) / 1e12)],
                checks.All(c => c.Ok), string.Join("; ", checks.Select(c => c.Text)));
        }
        finally
        {
            if (gpu != null) gpu.GroupedGemm = previous;
            foreach (var t in owned) t.Dispose();
        }
    }
}
