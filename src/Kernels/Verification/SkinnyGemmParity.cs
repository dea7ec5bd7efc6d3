using MetaLoraNative.Engine;

namespace MetaLoraNative.Kernels.Verification;

/// <summary>
/// One GEMM as a LoRA layer (src/Engine/Lora/LoraBinding.cs) or a frozen linear issues it: C (M, N) = alpha · op(A) ·
/// op(B) + beta · C, each operand bf16 (Compute) or fp32 (Master); with <see cref="Bias"/> it is Linear(a, b, bias)
/// (no transposes of a, b stored (N, K), alpha 1, beta 0).
/// </summary>
public sealed record SkinnyProduct(string Name, int M, int N, int K, bool TransA, bool TransB, Precision A, Precision B, Precision C,
                                   float Alpha = 1f, float Beta = 0f, bool Bias = false)
{
    public int[] ShapeA => TransA ? [K, M] : [M, K];
    public int[] ShapeB => TransB ? [N, K] : [K, N];

    static int Size(Precision p) => p == Precision.Master ? 4 : 2;

    /// <summary>The problem as the backend describes it: contiguous tensors, each at the start of a pool block (256-byte aligned).</summary>
    public GemmProblem Problem => new(M, N, K, TransA, TransB, ShapeA[1], ShapeB[1], N, Size(A), Size(B), Size(C), 256, 256, 256);

    public GemmRoute Route => GemmRouting.Route(Problem).Route;
}

/// <summary>
/// CUDA vs the fp64 CPU oracle for the GEMMs of one LoRA target at flux-dev's widths, rank r1 16, r2 1: the down
/// product, mid and up (forward), dU, dmid, dM, ddown, dx and dD (backward), on <see cref="Tokens"/> tokens (odd, not
/// a multiple of any tile) — so each of <see cref="GemmRoute"/>'s routes runs at the shapes it serves in a step.
/// The 3072→9216 kind adds the stacked q/k/v down product (48 rows: cuBLASLt), the modulation GEMV with its bias and
/// the one-token LoRA products of a modulation target; 3072→3072 adds alpha/beta other than 0 and 1 and an operand
/// off the 16-byte rule (skinny kernels over several tiles of the smaller side).
/// Every input is bf16-exact, so both backends multiply the same numbers (an fp32 factor of a mixed product is
/// rounded to bf16 on the GPU: exact here). beta = 0 products start from a C full of NaN on the GPU: a kernel that
/// reads C then fails. bf16 results take the bf16 rule, fp32 results (factor gradients, accumulated with beta 1)
/// the fp32 rule at 1e-5. Each product must take the route its name says, or the check fails before comparing.
/// </summary>
public static class SkinnyGemmParity
{
    public const int Tokens = 333, Rank1 = 16, Rank2 = 1;

    /// <summary>(d_in, d_out) of every LoRA target kind of flux-dev: attention q/k/v/proj, MLP in, MLP out, single-block proj_out, modulation.</summary>
    public static readonly (int DIn, int DOut)[] TargetKinds = [(3072, 3072), (3072, 12288), (12288, 3072), (15360, 3072), (3072, 9216)];

    public static IReadOnlyList<ParityCheck> Checks { get; } =
    [
        .. TargetKinds.Select(kind => new ParityCheck($"skinny gemm {kind.DIn}→{kind.DOut}",
            $"the LoRA GEMMs of a {kind.DIn}→{kind.DOut} target (r1 {Rank1}, r2 {Rank2}, {Tokens} tokens) through every route they take",
            p => Run(p, Products(kind.DIn, kind.DOut)))),
    ];

    /// <summary>The products of one target kind, in the order LoraBinding issues them.</summary>
    public static IReadOnlyList<SkinnyProduct> Products(int dIn, int dOut)
    {
        const Precision Bf = Precision.Compute, F32 = Precision.Master;
        int n = Tokens, r = Rank1, r2 = Rank2;
        var list = new List<SkinnyProduct>
        {
            new("down = x·Dᵀ", n, r, dIn, false, true, Bf, F32, Bf),
            new("mid = down·Mᵀ", n, r2, r, false, true, Bf, F32, Bf),
            new("up = mid·Uᵀ", n, dOut, r2, false, true, Bf, F32, Bf),
            new("dU += dyᵀ·mid", dOut, r2, n, true, false, Bf, Bf, F32, 1f, 1f),
            new("dmid = dy·U", n, r2, dOut, false, false, Bf, F32, Bf),
            new("dM += dmidᵀ·down", r2, r, n, true, false, Bf, Bf, F32, 1f, 1f),
            new("ddown = dmid·M", n, r, r2, false, false, Bf, F32, Bf),
            new("dx = ddown·D", n, dIn, r, false, false, Bf, F32, Bf),
            new("dD += ddownᵀ·x", r, dIn, n, true, false, Bf, Bf, F32, 1f, 1f),
        };
        if (dOut == 3 * dIn)
            list.AddRange(
            [
                new("stacked q/k/v down = x·[Dq; Dk; Dv]ᵀ", n, 3 * r, dIn, false, true, Bf, F32, Bf),
                new("modulation = vec·Wᵀ + b", 1, dOut, dIn, false, true, Bf, Bf, Bf, Bias: true),
                new("one-token down = vec·Dᵀ", 1, r, dIn, false, true, Bf, F32, Bf),
                new("one-token up = mid·Uᵀ", 1, dOut, r2, false, true, Bf, F32, Bf),
                new("one-token dU += dyᵀ·mid", dOut, r2, 1, true, false, Bf, Bf, F32, 1f, 1f),
                new("one-token dM += dmidᵀ·down", r2, r, 1, true, false, Bf, Bf, F32, 1f, 1f),
            ]);
        if (dIn == dOut)
            list.AddRange(
            [
                new("down, alpha −0.5, beta 0.75", n, r, dIn, false, true, Bf, F32, Bf, -0.5f, 0.75f),
                new("up, alpha −0.5, beta 0.75", n, dOut, r2, false, true, Bf, F32, Bf, -0.5f, 0.75f),
                new("odd widths (ld 77, 35)", n, 35, 77, false, false, Bf, Bf, Bf, 0.5f, 0.25f),
            ]);
        return list;
    }

    static void Run(ParityContext p, IReadOnlyList<SkinnyProduct> products)
    {
        int seed = 1;
        foreach (var x in products)
        {
            var route = x.Route;
            string what = $"{x.Name} ({x.M}×{x.K}·{x.K}×{x.N}, {route})";
            float[] a = ParityContext.Rand(x.M * x.K, seed++), b = ParityContext.Rand(x.K * x.N, seed++, 0.5f);
            float[] c = ParityContext.Rand(x.N * (x.Bias ? 1 : x.M), seed++);   // the bias, or C's starting value
            using var ga = p.Gpu.Upload(a, x.ShapeA, x.A);
            using var ca = p.Cpu.Upload(a, x.ShapeA, x.A);
            using var gb = p.Gpu.Upload(b, x.ShapeB, x.B);
            using var cb = p.Cpu.Upload(b, x.ShapeB, x.B);
            Tensor gc, cc;
            if (x.Bias)
            {
                using var gbias = p.Gpu.Upload(c, x.N);
                using var cbias = p.Cpu.Upload(c, x.N);
                gc = p.Gpu.Linear(ga, gb, gbias);
                cc = p.Cpu.Linear(ca, cb, cbias);
            }
            else
            {
                gc = x.Beta == 0f ? p.Gpu.Zeros([x.M, x.N], x.C) : p.Gpu.Upload(c, [x.M, x.N], x.C);
                cc = x.Beta == 0f ? p.Cpu.Zeros([x.M, x.N], x.C) : p.Cpu.Upload(c, [x.M, x.N], x.C);
                if (x.Beta == 0f) p.Gpu.Fill(gc, float.NaN);   // beta 0 must not read C
                p.Gpu.Gemm(ga, x.TransA, gb, x.TransB, gc, x.Alpha, x.Beta);
                p.Cpu.Gemm(ca, x.TransA, cb, x.TransB, cc, x.Alpha, x.Beta);
            }
            using (gc)
            using (cc)
            {
                var actual = GemmRouting.Route(CudaBackend.Describe((CudaTensor)ga, x.TransA, (CudaTensor)gb, x.TransB, (CudaTensor)gc)).Route;
                ParityContext.Require(actual == route, $"{what}: the GPU's tensors took the {actual} route");
                if (x.C == Precision.Master) p.F32(what, gc, cc, 1e-5);
                else p.Bf16(what, gc, cc);
            }
        }
    }
}
