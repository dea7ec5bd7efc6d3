using MetaLoraNative.Engine.Quantization;
using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Training;
using MetaLoraNative.Kernels;
using MetaLoraNative.Kernels.Verification;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Kernels;

/// <summary>
/// GemmRouting's rule on hand-picked problems, and on every GEMM of a real flux-dev Stage-2 step (512² and 1024²,
/// 512 text tokens, 494 targets, r1 16, r2 1): the step runs through the real model, LoRA binding and trainer on a
/// backend that only tracks shapes and records each product as the CUDA backend would describe it, on the stacked
/// and the fused LoRA path. The counts per route are printed (docs/GPU.md, "Skinny GEMMs", quotes them), and the
/// LoRA launches, bytes and FLOPs of both paths (docs/PERF.md, "Fused Stage-2 LoRA").
/// </summary>
public class GemmRoutingTests(ITestOutputHelper output)
{
    static GemmProblem Problem(long m, long n, long k, bool ta = false, bool tb = false, int sa = 2, int sb = 2, int sc = 2,
                               int alignA = 256, int alignB = 256, int alignC = 256) =>
        new(m, n, k, ta, tb, ta ? m : k, tb ? k : n, n, sa, sb, sc, alignA, alignB, alignC);

    static GemmRoute RouteOf(in GemmProblem p) => GemmRouting.Route(p).Route;

    [Fact]
    public void RuleTakesTheFirstMatch()
    {
        Assert.Equal(GemmRoute.Gemv, RouteOf(Problem(4096, 1, 16, tb: true)));        // mid = down·Mᵀ
        Assert.Equal(GemmRoute.Gemv, RouteOf(Problem(1, 18432, 3072, tb: true)));     // a modulation linear
        Assert.Equal(GemmRoute.Gemv, RouteOf(Problem(1, 1, 18432)));                  // dmid of a one-token target
        Assert.Equal(GemmRoute.RankK, RouteOf(Problem(4096, 3072, 1, tb: true)));     // up = mid·Uᵀ
        Assert.Equal(GemmRoute.RankK, RouteOf(Problem(4096, 3072, 16)));              // dx = ddown·D
        Assert.Equal(GemmRoute.Skinny, RouteOf(Problem(4096, 16, 3072, tb: true)));   // down = x·Dᵀ
        Assert.Equal(GemmRoute.Skinny, RouteOf(Problem(16, 3072, 4096, ta: true, sc: 4)));   // dD += ddownᵀ·x
        Assert.Equal(GemmRoute.CublasLt, RouteOf(Problem(4096, 48, 3072, tb: true))); // stacked q/k/v down
        Assert.Equal(GemmRoute.CublasLt, RouteOf(Problem(4096, 24, 3072, tb: true)));   // 48-byte rows of c
        Assert.Equal(GemmRoute.Skinny, RouteOf(Problem(4096, 17, 3072, tb: true)));     // 34-byte rows of c
        Assert.Equal(GemmRoute.CublasLt, RouteOf(Problem(4608, 21504, 3072, tb: true)));
    }

    [Fact]
    public void SixteenByteRuleSendsOddOperandsToOurKernels()
    {
        var clean = Problem(64, 64, 64);
        Assert.Equal(GemmRoute.CublasLt, RouteOf(clean));
        var d = GemmRouting.Route(clean with { Lda = 70 });
        Assert.Equal(GemmRoute.Skinny, d.Route);
        Assert.Contains("lda 70", d.Reason);
        Assert.Contains("ldb", GemmRouting.Route(clean with { Ldb = 65 }).Reason);
        Assert.Contains("ldc", GemmRouting.Route(clean with { Ldc = 100 }).Reason);
        Assert.Contains("a is 2-byte", GemmRouting.Route(clean with { AlignA = 2 }).Reason);
        Assert.Contains("b is 8-byte", GemmRouting.Route(clean with { AlignB = 8 }).Reason);
        Assert.Contains("c is 4-byte", GemmRouting.Route(clean with { AlignC = 4 }).Reason);
        // fp32 rows of 20 elements are 80 bytes, but a mixed product reaches cuBLASLt as bf16: 40 bytes.
        var f32 = Problem(64, 64, 20, sa: 4, sb: 4, sc: 4);
        Assert.Equal(GemmRoute.CublasLt, RouteOf(f32));
        Assert.Equal(GemmRoute.Skinny, RouteOf(f32 with { SizeC = 2 }));
        Assert.Throws<ArgumentException>(() => GemmRouting.Route(clean with { K = 0 }));
    }

    [Fact]
    public void AlignmentIsTheLowestSetBitCappedAt256()
    {
        Assert.Equal(256, GemmRouting.Alignment(0));
        Assert.Equal(256, GemmRouting.Alignment(0x7f0000001000));
        Assert.Equal(128, GemmRouting.Alignment(0x7f0000001080));
        Assert.Equal(16, GemmRouting.Alignment(0x7f0000001010));
        Assert.Equal(2, GemmRouting.Alignment(0x7f0000001002));
        Assert.Equal(1, GemmRouting.Alignment(0x7f0000001003));
    }

    [Fact]
    public void PlanRefusesWhatItCannotLaunch()
    {
        var cublas = Problem(64, 64, 64);
        var e = Assert.Throws<ArgumentException>(() => GemmRouting.Plan(cublas, GemmRoute.CublasLt, 0, 0, 0, 0, 1, 0, 0, 0, 1));
        Assert.Contains("cuBLASLt", e.Message);
        var wide = Problem(2_000_000, 1_100_000, 40, alignA: 2);   // misaligned: skinny over 68,750 tiles of the smaller side
        Assert.Equal(GemmRoute.Skinny, RouteOf(wide));
        e = Assert.Throws<ArgumentException>(() => GemmRouting.Plan(wide, GemmRoute.Skinny, 256, 512, 768, 0, 1, 0, 0, 0, 1));
        Assert.Contains("tiles", e.Message);
    }

    [Fact]
    public void ParityCasesCoverEveryRoute()
    {
        var routes = new HashSet<GemmRoute>();
        foreach (var (dIn, dOut) in SkinnyGemmParity.TargetKinds)
        {
            var products = SkinnyGemmParity.Products(dIn, dOut);
            foreach (var x in products)
            {
                routes.Add(x.Route);
                output.WriteLine($"{dIn}→{dOut} {x.Name}: {x.Route} ({GemmRouting.Route(x.Problem).Reason})");
            }
            // every target kind runs its rank-1 products through our kernels
            Assert.All(products.Where(x => Math.Min(x.M, Math.Min(x.N, x.K)) == 1), x => Assert.NotEqual(GemmRoute.CublasLt, x.Route));
        }
        Assert.Equal(Enum.GetValues<GemmRoute>().ToHashSet(), routes);
        Assert.Equal(SkinnyGemmParity.TargetKinds.Length, SkinnyGemmParity.Checks.Count);
        Assert.Equal(SkinnyGemmParity.Checks.Count, SkinnyGemmParity.Checks.Select(c => c.Name).Distinct().Count());
    }

    // ---------------------------------------------------------------- a flux-dev Stage-2 step's GEMMs

    /// <summary>
    /// Every product of one flux-dev Stage-2 step (batch 1, 512 text tokens, 494 targets, r1 16, r2 1) through the
    /// real model, LoRA binding and trainer on the shape-only backend, with the LoRA on the given path.
    /// </summary>
    /// <param name="grouped">FusedStage2Cache.Grouped (METALORA_LORA_GROUPED=1): A formation and dM as two GemmGroups.</param>
    /// <param name="steps">steps run; the backend counts only the last (2: a steady step, whose A is formed again after AdamW).</param>
    /// <param name="fusions">the model's fused forms (null: none unless METALORA_FUSE says otherwise).</param>
    /// <param name="emptyAsZeros">count every Empty as a Zeros (<see cref="ShapeBackend.EmptyAsZeros"/>).</param>
    internal static (ShapeBackend Backend, int Targets, int Modules) Stage2Step(int resolution, LoraPath path, bool grouped = false, int steps = 1,
                                                                               Fusions? fusions = null, bool emptyAsZeros = false)
    {
        var c = FluxConfig.FluxDev;
        int grid = resolution / 16, textTokens = 512;
        var be = new ShapeBackend { EmptyAsZeros = emptyAsZeros };
        var weights = new FluxWeights(c, be, c.TensorShapes().ToDictionary(t => t.Name, t => be.Frozen(be.Zeros(t.Shape))), "shapes:flux-dev");
        var model = new FluxModel(weights, fusions);
        var targets = FluxNames.LoraTargets(c);
        var down = targets.Select(t => new LoraParameter(LoraAdapter.DownKey(t, LoraMode.Meta), be.Zeros([16, t.InFeatures], Precision.Master))).ToArray();
        var adapter = new LoraAdapter(be, c, targets, LoraMode.Meta, 16, 1, down);
        adapter.AddIdentity("photo", 1);
        adapter.MergedDowns.Grouped = grouped;
        var example = new Example(new float[grid * grid * c.InChannels], grid, grid, new float[textTokens * c.ContextInDim], textTokens, new float[c.VecInDim]);
        for (int step = 0; step < steps; step++)
        {
            if (step == steps - 1) be.Reset();
            var binding = new LoraBinding(adapter, [0], trainDown: false, trainIdentity: true, path);
            Trainer.Step(model, binding, [example], new TrainOptions { BatchSize = 1, Seed = 1, Recompute = RecomputePolicy.Off }, step, recompute: false);
        }
        return (be, targets.Count, targets.Select(t => t.BflModule).Distinct().Count());
    }

    [Theory]
    [InlineData(512, LoraPath.Stacked)]
    [InlineData(1024, LoraPath.Stacked)]
    [InlineData(512, LoraPath.Fused)]
    [InlineData(1024, LoraPath.Fused)]
    public void FluxDevStage2StepRoutesEverySmallProductToOurKernels(int resolution, LoraPath path)
    {
        var (be, targets, _) = Stage2Step(resolution, path);
        var products = be.Products;
        var byRoute = products.GroupBy(p => RouteOf(p.Problem)).ToDictionary(g => g.Key, g => g.Count());
        int rank1 = products.Count(p => Math.Min(p.Problem.M, Math.Min(p.Problem.N, p.Problem.K)) == 1);
        int ld1 = products.Count(p => p.Problem.Lda == 1 || p.Problem.Ldb == 1 || p.Problem.Ldc == 1);
        output.WriteLine($"flux-dev {resolution}², {path} LoRA: {resolution * resolution / 256} image + 512 text tokens, {targets} targets, " +
                         $"{products.Count} GEMMs; {rank1} with M, N or K = 1; {ld1} with an ld of 1 element");
        foreach (var route in Enum.GetValues<GemmRoute>())
            output.WriteLine($"  {route,-9} {byRoute.GetValueOrDefault(route),5}");
        foreach (var g in products.GroupBy(p => (RouteOf(p.Problem), GemmRouting.Route(p.Problem).Reason, p.Op)).OrderBy(g => g.Key.Item1).ThenByDescending(g => g.Count()))
            output.WriteLine($"  {g.Key.Item1,-9} {g.Count(),5}  {g.Key.Op,-15} {g.Key.Reason}");

        Assert.Equal(products.Count, byRoute.Values.Sum());
        // Stacked: every target contributes at least seven rank-1 products: mid and up forward; mid again, dU, dmid, dM,
        // ddown backward. Fused (r2 = 1): five: A = M·D, y += a·Uᵀ forward; dU, dmid, dM backward.
        int perTarget = path == LoraPath.Stacked ? 7 : 5;
        Assert.True(rank1 >= perTarget * targets, $"{rank1} rank-1 products for {targets} targets");
        Assert.All(products, p =>
        {
            var d = GemmRouting.Route(p.Problem);
            if (Math.Min(p.Problem.M, Math.Min(p.Problem.N, p.Problem.K)) <= GemmRouting.SmallDim)
                Assert.True(d.Route != GemmRoute.CublasLt, $"{p.Op} ({p.Problem}) went to cuBLASLt");
            if (d.Route == GemmRoute.CublasLt)
            {
                int s = p.Problem.AllF32 ? 4 : 2;
                Assert.True(p.Problem.Lda * s % 16 == 0 && p.Problem.Ldb * s % 16 == 0 && p.Problem.Ldc * p.Problem.SizeC % 16 == 0,
                            $"{p.Op} ({p.Problem}) reaches cuBLASLt off the 16-byte rule");
            }
            else
            {
                // and our kernels can launch it: a plan with the device's 132 SMs and the 32 MiB workspace
                var launch = GemmRouting.Plan(p.Problem, d.Route, 256, 512, 768, p.Bias ? 1024UL : 0, 1, 0, 1 << 20, 32L << 20, 4 * 132);
                Assert.True(launch.Grid.X >= 1 && launch.Grid.Y is >= 1 and <= 65535 && launch.Grid.Z is >= 1 and <= 65535, launch.ToString());
            }
        });
        // The modulation linears (one row of vec, with bias) take the GEMV route: bias included.
        Assert.Contains(products, p => p.Bias && p.Problem.M == 1 && RouteOf(p.Problem) == GemmRoute.Gemv);
    }

    /// <summary>
    /// The LoRA products of a flux-dev Stage-2 step, stacked vs fused (docs/PERF.md, "Fused Stage-2 LoRA", quotes the
    /// figures): launches, bytes moved (operands read once, c written, and read when accumulating) and FLOPs of the
    /// LoRA GEMMs, with every layout copy and memset of the step (the model's own are the same on both paths), and a
    /// predicted time = launches × 4 µs + bytes / 4.3 TB/s (an H200's copy rate; a prediction, not a measurement).
    /// The frozen products (W0's) must be the same on both paths; the fused path must issue fewer LoRA GEMMs of fewer
    /// FLOPs, fewer launches and bytes in all, and at least one layout copy per target fewer.
    /// </summary>
    [Theory]
    [InlineData(512)]
    [InlineData(1024)]
    public void FluxDevStage2StepLoraGemmsStackedVersusFused(int resolution)
    {
        var (stacked, targets, modules) = Stage2Step(resolution, LoraPath.Stacked);
        var (fused, _, _) = Stage2Step(resolution, LoraPath.Fused);
        static long Bytes(Product p) => p.Problem.M * p.Problem.K * p.Problem.SizeA + p.Problem.K * p.Problem.N * p.Problem.SizeB +
                                        p.Problem.M * p.Problem.N * p.Problem.SizeC * (p.Accumulate ? 2 : 1);
        (int Count, long Bytes, double Flops, int Launches, long AllBytes, double Ms) Lora(ShapeBackend be)
        {
            var l = be.Products.Where(p => !p.Frozen).ToList();
            long bytes = l.Sum(Bytes), all = bytes + be.LayoutBytes + be.FillBytes;
            int launches = l.Count + be.LayoutOps + be.Fills;
            return (l.Count, bytes, l.Sum(p => 2.0 * p.Problem.M * p.Problem.N * p.Problem.K), launches, all, launches * 4e-3 + all / 4.3e9);
        }
        var s = Lora(stacked);
        var f = Lora(fused);
        output.WriteLine($"flux-dev {resolution}², {targets} targets in {modules} modules, per Stage-2 step:");
        output.WriteLine($"  path     LoRA GEMMs (GB, GFLOP)        layout copies (GB)  memsets (GB)   launches, GB in all   predicted");
        foreach (var (name, be, x) in new[] { ("stacked", stacked, s), ("fused", fused, f) })
            output.WriteLine($"  {name,-8} {x.Count,5} ({x.Bytes / 1e9,6:F2}, {x.Flops / 1e9,6:F1})  {be.LayoutOps,6} ({be.LayoutBytes / 1e9,6:F2})  " +
                             $"{be.Fills,5} ({be.FillBytes / 1e9,5:F2})  {x.Launches,6}, {x.AllBytes / 1e9,6:F2}  {x.Ms,6:F1} ms");
        output.WriteLine($"  saving   {s.Count - f.Count} LoRA GEMMs, {s.Launches - f.Launches} launches, {(s.AllBytes - f.AllBytes) / 1e9:F2} GB: " +
                         $"predicted {s.Ms - f.Ms:F1} ms per step (not measured on a GPU)");

        var frozenS = stacked.Products.Where(p => p.Frozen).Select(p => p.Problem).ToList();
        var frozenF = fused.Products.Where(p => p.Frozen).Select(p => p.Problem).ToList();
        Assert.Equal(frozenS, frozenF);
        Assert.True(f.Count < s.Count && f.Flops < s.Flops, $"fused {f.Count} LoRA GEMMs of {f.Flops} FLOP, stacked {s.Count} of {s.Flops}");
        Assert.True(f.Launches < s.Launches && f.AllBytes < s.AllBytes, $"fused {f.Launches} launches, {f.AllBytes} B; stacked {s.Launches}, {s.AllBytes} B");
        // The stacked path narrows dy, adds each target's delta into y and concatenates stacked downs and their
        // gradients: at least one layout copy per target that the fused path does not make.
        Assert.True(stacked.LayoutOps - fused.LayoutOps >= targets, $"layout copies: stacked {stacked.LayoutOps}, fused {fused.LayoutOps}");
    }

    /// <summary>
    /// Grouping (METALORA_LORA_GROUPED=1) on the fused path of a steady flux-dev Stage-2 step (the second, after an
    /// AdamW update moved every M): the same LoRA products (shapes, transposes, accumulation), but the 494 A = M·D
    /// formations and the 494 dM += Gⱼ·Dᵀ are one GemmGroup each, so 986 launches fewer; and the stacked A and G
    /// kept from step to step take 608 allocations out (the ungrouped path allocates both afresh each step, as Empty
    /// tensors: no memset on either path).
    /// docs/PERF.md, "Grouped A formation and dM", quotes the printed figures.
    /// </summary>
    [Theory]
    [InlineData(512)]
    [InlineData(1024)]
    public void FluxDevStage2StepGroupsFormationAndDm(int resolution)
    {
        var (plain, targets, modules) = Stage2Step(resolution, LoraPath.Fused, grouped: false, steps: 2);
        var (grouped, _, _) = Stage2Step(resolution, LoraPath.Fused, grouped: true, steps: 2);
        static int GemmLaunches(ShapeBackend be) => be.Products.Count(p => !p.Grouped) + be.GroupCalls;
        int lp = GemmLaunches(plain), lg = GemmLaunches(grouped);
        int allP = lp + plain.LayoutOps + plain.Fills, allG = lg + grouped.LayoutOps + grouped.Fills;
        output.WriteLine($"flux-dev {resolution}², fused path, a steady Stage-2 step ({targets} targets in {modules} modules):");
        output.WriteLine($"  grouping  GEMMs  GEMM launches  grouped calls (entries)  layout copies  memsets  allocations  their launches in all");
        foreach (var (name, be, l, all) in new[] { ("off", plain, lp, allP), ("on", grouped, lg, allG) })
            output.WriteLine($"  {name,-8}  {be.Products.Count,5}  {l,13}  {be.GroupCalls,5} ({be.Products.Count(p => p.Grouped),4})  {be.LayoutOps,13}  {be.Fills,7}  {be.Allocations,11}  {all,15}");
        output.WriteLine($"  saving    {lp - lg} GEMM launches, {plain.Fills - grouped.Fills} memsets, {plain.Allocations - grouped.Allocations} allocations: " +
                         $"{allP - allG} launches per step");

        // the same products, in any order: only how they are issued changes
        static string Key(Product p) => $"{p.Problem} {p.Frozen} {p.Accumulate}";
        Assert.Equal(plain.Products.Select(Key).Order(), grouped.Products.Select(Key).Order());
        Assert.Equal(2, grouped.GroupCalls);
        Assert.Equal(2 * targets, grouped.Products.Count(p => p.Grouped));
        Assert.Equal(2 * targets - 2, lp - lg);
        Assert.Equal(plain.LayoutOps, grouped.LayoutOps);
        Assert.Equal(2 * modules, plain.Allocations - grouped.Allocations);   // a fresh A and a fresh G per module and step
        Assert.Equal(plain.Fills, grouped.Fills);                             // both Empty: neither path memsets them
        Assert.Equal(0, plain.GroupCalls);
    }

    /// <summary>
    /// The fused split-qkv + QK norm + RoPE (Fusions.QkvNormRope) against the op sequence, over a whole flux-dev
    /// Stage-2 step on the fused LoRA path (docs/PERF.md, "Fused split-qkv + QK RMSNorm + RoPE", quotes the figures):
    /// the q/k/v ops (split, norms, RoPE, merge, or the fused op) with the layout copies and memsets, launches and
    /// bytes, and a predicted time = launches × 4 µs + bytes / 4.3 TB/s (not a measurement). The GEMMs must be the same;
    /// the fused step must issue fewer layout copies, fewer launches and fewer bytes of this traffic.
    /// </summary>
    [Theory]
    [InlineData(512)]
    [InlineData(1024)]
    public void FluxDevStage2StepQkvFusionRemovesLayoutTraffic(int resolution)
    {
        var (plain, _, _) = Stage2Step(resolution, LoraPath.Fused, fusions: Fusions.None);
        var (fused, _, _) = Stage2Step(resolution, LoraPath.Fused, fusions: Fusions.QkvNormRope);
        static (int Launches, long Bytes, double Ms) Traffic(ShapeBackend be)
        {
            int launches = be.LayoutOps + be.QkvOps + be.Fills;
            long bytes = be.LayoutBytes + be.QkvBytes + be.FillBytes;
            return (launches, bytes, launches * 4e-3 + bytes / 4.3e9);
        }
        var p = Traffic(plain);
        var f = Traffic(fused);
        output.WriteLine($"flux-dev {resolution}², Stage 2, fused LoRA, per step:");
        output.WriteLine("  fusions  layout copies (GB)  q/k/v ops (GB)  memsets (GB)   launches, GB of these   predicted");
        foreach (var (name, be, x) in new[] { ("none", plain, p), ("qkv", fused, f) })
            output.WriteLine($"  {name,-8} {be.LayoutOps,6} ({be.LayoutBytes / 1e9,6:F2})  {be.QkvOps,5} ({be.QkvBytes / 1e9,6:F2})  " +
                             $"{be.Fills,5} ({be.FillBytes / 1e9,5:F2})  {x.Launches,6}, {x.Bytes / 1e9,6:F2}  {x.Ms,6:F1} ms");
        output.WriteLine($"  saving   {plain.LayoutOps - fused.LayoutOps} layout copies, {p.Launches - f.Launches} launches, {(p.Bytes - f.Bytes) / 1e9:F2} GB: " +
                         $"predicted {p.Ms - f.Ms:F1} ms per step (not measured on a GPU)");

        Assert.Equal(plain.Products.Select(x => x.Problem), fused.Products.Select(x => x.Problem));
        // per double block 3 Concats forward and 6 Narrows backward go; per single block none were there
        var c = FluxConfig.FluxDev;
        Assert.Equal(9 * c.Depth, plain.LayoutOps - fused.LayoutOps);
        Assert.True(f.Launches < p.Launches && f.Bytes < p.Bytes, $"fused {f.Launches} launches, {f.Bytes} B; unfused {p.Launches}, {p.Bytes} B");
    }

    /// <summary>One product as the CUDA backend would describe it: every tensor starts a pool block (256-byte aligned).</summary>
    /// <param name="Frozen">b is a frozen model weight (a W0 product); otherwise a LoRA product.</param>
    /// <param name="Accumulate">beta ≠ 0: c is read as well as written.</param>
    /// <param name="Grouped">an entry of a GemmGroup: the group is one launch, counted by <see cref="ShapeBackend.GroupCalls"/>.</param>
    internal sealed record Product(string Op, GemmProblem Problem, bool Bias, bool Frozen = false, bool Accumulate = false, bool Grouped = false);

    /// <summary>Tensors with a shape and a precision but no values: enough to run a full-size step and see its GEMMs.</summary>
    internal sealed class ShapeTensor(ShapeBackend backend, int[] shape, Precision precision) : Tensor(shape)
    {
        public Precision Precision { get; } = precision;
        public override IBackend Backend => backend;
        public override Tensor Reshape(params int[] shape) => new ShapeTensor(backend, Shapes.Resolve(shape, Length), Precision);
        public override Tensor Slice(long offset, params int[] shape)
        {
            CheckSlice(offset, shape);
            return new ShapeTensor(backend, (int[])shape.Clone(), Precision) { ByteOffset = ByteOffset + offset * (Precision == Precision.Master ? 4 : 2) };
        }

        /// <summary>Bytes from the start of the pool block (256-byte aligned) to this tensor's first element: 0 but for views.</summary>
        public long ByteOffset { get; init; }
    }

    /// <summary>
    /// Every op returns a tensor of the shape (and, for the saved statistics, the fp32 precision) the CUDA backend
    /// returns; nothing is computed. Gemm, Linear and LinearBackward record their product.
    /// </summary>
    internal sealed class ShapeBackend : IBackend
    {
        public List<Product> Products { get; } = [];
        /// <summary>Narrow, AddNarrow, CopyNarrow and Concat calls: each a copy kernel on the GPU; and the bytes they read and write.</summary>
        public int LayoutOps { get; private set; }
        public long LayoutBytes { get; private set; }
        /// <summary>
        /// The q/k/v ops between the qkv linear and the attention (SplitQkv, RmsNorm, ApplyRope, MergeQkv and their
        /// backwards, or the fused QkvNormRope and its backward): each one launch on the GPU; and the bytes each reads
        /// and writes (tensors once, the RoPE table once per call, rstd in fp32).
        /// </summary>
        public int QkvOps { get; private set; }
        public long QkvBytes { get; private set; }
        void Qkv(long bytes)
        {
            QkvOps++;
            QkvBytes += bytes;
        }
        /// <summary>Zeros and Fill calls: each a memset on the GPU; and the bytes they write.</summary>
        public int Fills { get; private set; }
        public long FillBytes { get; private set; }
        /// <summary>
        /// Zeros and Empty calls: the buffers the model and the LoRA allocate themselves, each a pool allocation on the
        /// GPU (an Empty is no memset); ops' own outputs are not counted here.
        /// </summary>
        public int Allocations { get; private set; }
        /// <summary>Counts every Empty as a Zeros (a memset), as the step was before IBackend had Empty.</summary>
        public bool EmptyAsZeros { get; init; }
        static long BytesOf(Tensor t) => t.Length * Size(t);
        public string Name => "shapes";
        readonly HashSet<Tensor> frozen = new(ReferenceEqualityComparer.Instance);

        /// <summary>Marks a model weight, so its products count as frozen ones.</summary>
        public Tensor Frozen(Tensor weight)
        {
            frozen.Add(weight);
            return weight;
        }

        /// <summary>Forgets every count so far (a test counts only a step's last run).</summary>
        public void Reset()
        {
            Products.Clear();
            LayoutOps = Fills = GroupCalls = Allocations = UpBackwardCalls = SliceCopies = VecSliceCopies = 0;
            UpBackwardDyBytes = SliceCopyBytes = VecSliceCopyBytes = 0;
            LayoutBytes = FillBytes = 0;
        }

        ShapeTensor New(int[] shape, Precision p = Precision.Compute) => new(this, (int[])shape.Clone(), p);
        static int Size(Tensor t) => ((ShapeTensor)t).Precision == Precision.Master ? 4 : 2;
        static int[] WithLast(int[] s, int last) { var r = (int[])s.Clone(); r[^1] = last; return r; }

        void Record(string op, Tensor a, bool ta, Tensor b, bool tb, Tensor c, bool bias, float beta = 0f)
        {
            long m = ta ? a.Cols : a.Rows, k = ta ? a.Rows : a.Cols, n = tb ? b.Rows : b.Cols;
            Shapes.Require((tb ? b.Cols : b.Rows) == k && c.Rows == m && c.Cols == n, $"{op}: {a} · {b} into {c}");
            if (m > 0 && n > 0 && k > 0)
                Products.Add(new(op, new GemmProblem(m, n, k, ta, tb, a.Cols, b.Cols, c.Cols, Size(a), Size(b), Size(c), 256, 256, 256), bias,
                                 frozen.Contains(b), beta != 0));
        }

        public Tensor Zeros(params int[] shape) => Zeros(shape, Precision.Compute);
        public Tensor Zeros(int[] shape, Precision precision)
        {
            var t = New(shape, precision);
            Fills++;
            FillBytes += BytesOf(t);
            Allocations++;
            return t;
        }
        public Tensor Empty(params int[] shape) => Empty(shape, Precision.Compute);
        public Tensor Empty(int[] shape, Precision precision)
        {
            if (EmptyAsZeros) return Zeros(shape, precision);
            Allocations++;
            return New(shape, precision);
        }
        public Tensor Upload(ReadOnlySpan<float> values, params int[] shape) => New(shape);
        public Tensor Upload(ReadOnlySpan<float> values, int[] shape, Precision precision) => New(shape, precision);
        public Tensor Upload(ReadOnlySpan<double> values, params int[] shape) => New(shape);
        public float[] Download(Tensor t) => new float[t.Length];
        public double[] DownloadDouble(Tensor t) => new double[t.Length];
        public void Copy(Tensor src, Tensor dst) { }
        public void Fill(Tensor t, float value)
        {
            Fills++;
            FillBytes += BytesOf(t);
        }

        // the routing counts are taken with bf16 base weights; an fp8 base runs the same GEMMs after a dequantise
        public QuantizedWeight UploadQuantized(ReadOnlySpan<byte> codes, ReadOnlySpan<float> scale, int rows, int cols) => throw Bf16Only();
        public Tensor Dequantize(QuantizedWeight w) => throw Bf16Only();
        public Tensor LinearQuantized(Tensor x, QuantizedWeight w, Tensor? bias) => throw Bf16Only();
        public Tensor LinearQuantizedW8A8(Tensor x, QuantizedWeight w, Tensor? bias) => throw Bf16Only();
        public Tensor LinearQuantizedBackward(Tensor dy, QuantizedWeight w) => throw Bf16Only();
        static NotSupportedException Bf16Only() => new("the shape-only backend models bf16 base weights");

        public void Gemm(Tensor a, bool transA, Tensor b, bool transB, Tensor c, float alpha = 1f, float beta = 0f) => Record("gemm", a, transA, b, transB, c, false, beta);
        public void GemmSlice(MatrixSlice a, bool transA, MatrixSlice b, bool transB, MatrixSlice c, float alpha = 1f, float beta = 0f)
        {
            a.Check("gemm_slice", "a");
            b.Check("gemm_slice", "b");
            c.Check("gemm_slice", "c");
            long m = transA ? a.Columns : a.Rows, k = transA ? a.Rows : a.Columns, n = transB ? b.Rows : b.Columns;
            Shapes.Require((transB ? b.Columns : b.Rows) == k && c.Rows == m && c.Columns == n, $"gemm_slice: {a} · {b} into {c}");
            // a block starts at its offset from a pool block's 256-byte aligned start
            int Align(MatrixSlice s) => GemmRouting.Alignment(0x7f0000000000UL + (ulong)(s.Offset * Size(s.Tensor)));
            if (m > 0 && n > 0 && k > 0)
                Products.Add(new("gemm_slice", new GemmProblem(m, n, k, transA, transB, a.Tensor.Cols, b.Tensor.Cols, c.Tensor.Cols,
                                                               Size(a.Tensor), Size(b.Tensor), Size(c.Tensor), Align(a), Align(b), Align(c)), false,
                                 frozen.Contains(b.Tensor), beta != 0));
        }
        /// <summary>GemmGroup calls: each one launch on the GPU (the grouped kernel); their entries are recorded as products.</summary>
        public int GroupCalls { get; private set; }
        public void GemmGroup(IReadOnlyList<GemmEntry> entries)
        {
            int before = Products.Count;
            foreach (var e in entries) GemmSlice(e.A, e.TransA, e.B, e.TransB, e.C, e.Alpha, e.Beta);
            for (int i = before; i < Products.Count; i++) Products[i] = Products[i] with { Op = "gemm_group", Grouped = true };
            if (entries.Count > 0) GroupCalls++;
        }
        /// <summary>
        /// LoraUpBackward calls, recorded as the two products CUDA runs by default (op "lora_up_backward"); with the
        /// one-pass kernel each call is one read of dy instead of two: <see cref="UpBackwardDyBytes"/> is what one read costs.
        /// </summary>
        public int UpBackwardCalls { get; private set; }
        public long UpBackwardDyBytes { get; private set; }
        public void LoraUpBackward(MatrixSlice dy, Tensor u, MatrixSlice? a, Tensor? dU, MatrixSlice dmid)
        {
            int before = Products.Count;
            if (a is { } aa && dU != null) GemmSlice(dy, true, aa, false, dU, 1f, 1f);
            GemmSlice(dy, false, u, false, dmid);
            for (int i = before; i < Products.Count; i++) Products[i] = Products[i] with { Op = "lora_up_backward" };
            UpBackwardCalls++;
            UpBackwardDyBytes += dy.Rows * dy.Columns * Size(dy.Tensor);
        }
        public Tensor Linear(Tensor x, Tensor w, Tensor? bias)
        {
            var y = New(WithLast(x.Shape, w.Dim(0)));
            Record("linear", x, false, w, true, y, bias != null);
            return y;
        }
        public Tensor LinearBackward(Tensor dy, Tensor w)
        {
            var dx = New(WithLast(dy.Shape, w.Dim(1)));
            Record("linear_backward", dy, false, w, false, dx, false);
            return dx;
        }

        /// <summary>The GELU-fused products record their GEMM as "linear_gelu" / "linear_backward_gelu" (beta = 1 with a c0).</summary>
        public (Tensor Pre, Tensor Act) LinearGelu(Tensor x, Tensor w, Tensor? bias, Tensor? c0)
        {
            var pre = New(WithLast(x.Shape, w.Dim(0)));
            Record("linear_gelu", x, false, w, true, pre, bias != null, c0 != null ? 1f : 0f);
            return (pre, New(pre.Shape));
        }
        public Tensor LinearBackwardGelu(Tensor dy, Tensor w, Tensor pre, Tensor? c0)
        {
            var dPre = New(WithLast(dy.Shape, w.Dim(1)));
            Record("linear_backward_gelu", dy, false, w, false, dPre, false, c0 != null ? 1f : 0f);
            return dPre;
        }

        /// <summary>Strided GELU forward and backward calls: each one kernel on the GPU.</summary>
        public int GeluSlices { get; private set; }
        public void GeluTanhSlice(MatrixSlice x, MatrixSlice y) => GeluSlices++;
        public void GeluTanhBackwardSlice(MatrixSlice x, MatrixSlice dy, MatrixSlice dx) => GeluSlices++;

        public void AddInPlace(Tensor acc, Tensor x, float alpha = 1f) { }
        public void ScaleInPlace(Tensor t, float alpha) { }
        public Tensor Silu(Tensor x) => New(x.Shape);
        public Tensor SiluBackward(Tensor x, Tensor dy) => New(x.Shape);
        public Tensor GeluTanh(Tensor x) => New(x.Shape);
        public Tensor GeluTanhBackward(Tensor x, Tensor dy) => New(x.Shape);

        public Tensor Narrow(Tensor x, int axis, int start, int length)
        {
            var s = (int[])x.Shape.Clone();
            s[axis < 0 ? s.Length + axis : axis] = length;
            var y = New(s, ((ShapeTensor)x).Precision);
            LayoutOps++;
            LayoutBytes += 2 * BytesOf(y);   // read the slice, write the copy
            SliceCopy(y, 0, x, start, axis, length, 2 * BytesOf(y));
            return y;
        }
        public void AddNarrow(Tensor dst, Tensor src, int axis, int start)
        {
            LayoutOps++;
            LayoutBytes += BytesOf(src) + 2 * src.Length * Size(dst);   // read src, read and write dst's slice
            SliceCopy(dst, start, src, 0, axis, src.Shape[Shapes.Axis(axis, src.Shape.Length, "slice")], BytesOf(src) + 2 * src.Length * Size(dst));
        }
        public void CopyNarrow(Tensor dst, Tensor src, int axis, int start)
        {
            LayoutOps++;
            LayoutBytes += BytesOf(src) + src.Length * Size(dst);   // read src, write dst's slice
            SliceCopy(dst, start, src, 0, axis, src.Shape[Shapes.Axis(axis, src.Shape.Length, "slice")], BytesOf(src) + src.Length * Size(dst));
        }
        public Tensor Concat(int axis, params Tensor[] parts)
        {
            var s = (int[])parts[0].Shape.Clone();
            int ax = axis < 0 ? s.Length + axis : axis;
            s[ax] = parts.Sum(p => p.Shape[ax]);
            var y = New(s, ((ShapeTensor)parts[0]).Precision);
            LayoutOps++;
            LayoutBytes += parts.Sum(BytesOf) + BytesOf(y);
            int at = 0;
            foreach (var p in parts)
            {
                SliceCopy(y, at, p, 0, axis, p.Shape[ax], BytesOf(p) + p.Length * Size(y));
                at += p.Shape[ax];
            }
            return y;
        }

        /// <summary>
        /// The slice copies behind Narrow, AddNarrow, CopyNarrow and Concat (one per part), as the CUDA backend issues
        /// them (`slice_copy` over (outer, dim, inner) views), and of those the ones version 2 of the layout kernels
        /// (METALORA_ELEMENTWISE=vec16) takes by its host rule (<see cref="ElementwiseVec.Slice"/>: every tensor starts
        /// a 256-byte aligned pool block, views at their byte offset), with the bytes each moves.
        /// </summary>
        public int SliceCopies { get; private set; }
        public int VecSliceCopies { get; private set; }
        public long SliceCopyBytes { get; private set; }
        public long VecSliceCopyBytes { get; private set; }

        void SliceCopy(Tensor dst, int dstStart, Tensor src, int srcStart, int axis, int len, long bytes)
        {
            var (outer, dim, inner) = Shapes.AroundAxis(dst.Shape, Shapes.Axis(axis, dst.Shape.Length, "slice"));
            SliceCopies++;
            SliceCopyBytes += bytes;
            var plan = ElementwiseVec.Slice(outer, inner, dim, dstStart, src.Shape[Shapes.Axis(axis, src.Shape.Length, "slice")], srcStart, len,
                                            (ulong)((ShapeTensor)dst).ByteOffset, (ulong)((ShapeTensor)src).ByteOffset);
            if (plan == null) return;
            VecSliceCopies++;
            VecSliceCopyBytes += bytes;
        }
        public (Tensor Q, Tensor K, Tensor V) SplitQkv(Tensor qkv, int heads)
        {
            int B = qkv.Shape[0], L = qkv.Shape[1], D = qkv.Shape[2] / 3 / heads;
            Qkv(2 * BytesOf(qkv));
            return (New([B, heads, L, D]), New([B, heads, L, D]), New([B, heads, L, D]));
        }
        public Tensor MergeQkv(Tensor dq, Tensor dk, Tensor dv)
        {
            Qkv(2 * (BytesOf(dq) + BytesOf(dk) + BytesOf(dv)));
            return New([dq.Shape[0], dq.Shape[2], 3 * dq.Shape[1] * dq.Shape[3]]);
        }

        public Tensor LayerNormModulate(Tensor x, Tensor shift, Tensor scale, float eps, out Tensor stats)
        {
            stats = New([(int)x.Rows, 2], Precision.Master);
            return New(x.Shape);
        }
        public (Tensor Dx, Tensor DShift, Tensor DScale) LayerNormModulateBackward(Tensor dy, Tensor x, Tensor scale, Tensor stats) =>
            (New(x.Shape), New(scale.Shape), New(scale.Shape));
        public (Tensor X1, Tensor Modulated) ResidualLayerNormModulate(Tensor x, Tensor gate, Tensor y, Tensor shift, Tensor scale,
                                                                       float eps, out Tensor stats)
        {
            stats = New([(int)x.Rows, 2], Precision.Master);
            return (New(x.Shape), New(x.Shape));
        }
        public (Tensor Dx1, Tensor Dy, Tensor DGate, Tensor DShift, Tensor DScale) ResidualLayerNormModulateBackward(
            Tensor dModulated, Tensor dOut, Tensor x1, Tensor scale, Tensor stats, Tensor gate, Tensor y) =>
            (New(x1.Shape), New(x1.Shape), New(gate.Shape), New(scale.Shape), New(scale.Shape));
        public Tensor RmsNorm(Tensor x, Tensor weight, float eps, out Tensor rstd)
        {
            rstd = New(x.Shape[..^1], Precision.Master);
            Qkv(2 * BytesOf(x) + BytesOf(rstd));
            return New(x.Shape);
        }
        public Tensor RmsNormBackward(Tensor dy, Tensor x, Tensor weight, Tensor rstd)
        {
            Qkv(3 * BytesOf(x) + BytesOf(rstd));
            return New(x.Shape);
        }

        public Tensor RopeTable(Tensor ids, int[] axesDim, float theta) => New([ids.Shape[0], ids.Shape[1], axesDim.Sum() / 2, 2], Precision.Master);
        public Tensor ApplyRope(Tensor x, Tensor pe)
        {
            Qkv(2 * BytesOf(x) + BytesOf(pe));
            return New(x.Shape);
        }
        public Tensor ApplyRopeBackward(Tensor dy, Tensor pe)
        {
            Qkv(2 * BytesOf(dy) + BytesOf(pe));
            return New(dy.Shape);
        }
        public (Tensor QRstd, Tensor KRstd) QkvNormRope(MatrixSlice qkv, QkNorm norm, Tensor pe, QkvJoint joint, int start)
        {
            var g = QkvGeometry.Of("qkv_norm_rope", qkv, norm, pe, joint, start);
            long values = qkv.Rows * qkv.Columns, pairs = (long)g.B * g.H * g.L;
            Qkv(2 * values * Size(qkv.Tensor) + (long)g.L * g.D * 4 + 2 * pairs * 4);   // qkv read, q, k, v written; pe rows; rstd
            return (New([g.B, g.H, g.L], Precision.Master), New([g.B, g.H, g.L], Precision.Master));
        }
        public void QkvNormRopeBackward(QkvJoint grads, int start, MatrixSlice qkv, QkNorm norm, Tensor pe, Tensor qRstd, Tensor kRstd, MatrixSlice dQkv)
        {
            var g = QkvGeometry.Of("qkv_norm_rope_backward", qkv, norm, pe, grads, start);
            long values = qkv.Rows * qkv.Columns, pairs = (long)g.B * g.H * g.L;
            // dq, dk, dv rows read, q and k of qkv read, d qkv written; pe rows; rstd
            Qkv(values * Size(grads.Q) + 2 * values / 3 * Size(qkv.Tensor) + values * Size(dQkv.Tensor) + (long)g.L * g.D * 4 + 2 * pairs * 4);
        }
        public Tensor Attention(Tensor q, Tensor k, Tensor v, out Tensor lse)
        {
            lse = New([q.Shape[0], q.Shape[1], q.Shape[2]], Precision.Master);
            return New([q.Shape[0], q.Shape[2], q.Shape[1] * q.Shape[3]]);
        }
        public (Tensor Dq, Tensor Dk, Tensor Dv) AttentionBackward(Tensor dOut, Tensor q, Tensor k, Tensor v, Tensor output, Tensor lse) =>
            (New(q.Shape), New(k.Shape), New(v.Shape));

        public Tensor TimestepEmbedding(Tensor t, int dim, float timeFactor = 1000f, float maxPeriod = 10000f) => New([t.Shape[0], dim]);
        public Tensor TimestepEmbeddingBackward(Tensor t, Tensor dy, float timeFactor = 1000f, float maxPeriod = 10000f) => New(t.Shape);
        public Tensor GatedResidual(Tensor x, Tensor gate, Tensor y) => New(x.Shape);
        public (Tensor Dy, Tensor DGate) GatedResidualBackward(Tensor dOut, Tensor gate, Tensor y) => (New(y.Shape), New(gate.Shape));

        public double MseLoss(Tensor pred, Tensor target, out Tensor dPred)
        {
            dPred = New(pred.Shape);
            return 0;
        }
        public double SumSquares(Tensor t) => 0;
        public void AdamW(Tensor param, Tensor grad, Tensor m, Tensor v, in AdamWStep step) { }
        public StepScalars NewStepScalars() => new ShapeScalars();
        public void MseLoss(Tensor pred, Tensor target, out Tensor dPred, StepScalars scalars) => dPred = New(pred.Shape);
        public void ClipScale(IReadOnlyList<Tensor> grads, float maxNorm, StepScalars scalars) { }
        public void AdamW(IReadOnlyList<AdamWTensors> tensors, in AdamWStep step, StepScalars scalars) { }
        public void ReadBack(StepScalars scalars) { }
        sealed class ShapeScalars : StepScalars
        {
            public override StepValues Read() => new(0, 0, 1, true);
        }
        public void Dispose() { }
    }
}
