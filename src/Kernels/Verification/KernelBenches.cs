using MetaLoraNative.Engine;
using MetaLoraNative.Engine.IO;

namespace MetaLoraNative.Kernels.Verification;

/// <summary>A kernel timing at FLUX.1-dev's sizes (`metalora kernels bench`, and the CUDA tests).</summary>
public sealed record KernelBench(string Name, string Description, Func<CudaBackend, BenchResult> Run);

/// <summary>One timed call: milliseconds per call (CUDA events) and the achieved TFLOP/s.</summary>
public sealed record BenchTiming(string What, double Ms, double Tflops);

/// <summary>
/// What a bench measured, and whether the timed calls computed the right thing: the inputs are chosen so that every
/// output has a value known in closed form, and <see cref="Valid"/> says whether all of them have it
/// (<see cref="Check"/> says which and by how much).
/// </summary>
public sealed record BenchResult(string Name, IReadOnlyList<BenchTiming> Timings, bool Valid, string Check);

/// <summary>
/// The kernel benches: <see cref="All"/> times the engine's kernels, <see cref="Dev"/> the playground's versions
/// (kernels/dev) at the same sizes, so a version's speed-up is read off one run of `metalora kernels bench --dev`.
/// Sizes are FLUX.1-dev's at 1024²: hidden 3072, 24 heads of 128, 512 text + 4096 image tokens.
/// </summary>
public static partial class KernelBenches
{
    const int Tokens = 4608, Hidden = 3072, Heads = 24, HeadDim = 128;

    public static IReadOnlyList<KernelBench> All { get; } =
    [
        new("linear", $"Linear ({Tokens}, {Hidden}) -> {4 * Hidden} with bias (the MLP's first layer), bf16", Linear),
        new("attention scalar", $"attention version 1 (kernels/attention.cu), (1, {Heads}, {Tokens}, {HeadDim}): forward, backward",
            gpu => Attention(gpu, AttentionKernel.Scalar)),
    ];

    /// <summary>The playground's versions at the same sizes as their engine counterparts in <see cref="All"/>.</summary>
    public static IReadOnlyList<KernelBench> Dev { get; } = [.. ResidualNormBenches(), .. AttentionMmaBenches(), .. GroupedGemmBenches(), .. GeluBenches(), .. QkvNormRopeBenches(), .. Fp8MatmulBenches(), .. ElementwiseVecBenches(), .. LoraUpBackwardBenches()];

    /// <summary>A bench of <see cref="All"/> or <see cref="Dev"/> by name.</summary>
    public static KernelBench Find(string name) =>
        All.Concat(Dev).FirstOrDefault(b => b.Name == name) ?? throw new InputException(name, $"no kernel bench named '{name}'");

    /// <summary>
    /// y = x·Wᵀ + b with x = w = 0.01 and b = 0.5 filled in bf16: every output is 3072·bf16(0.01)² + 0.5 = 0.80780,
    /// 0.8 bf16 ulps above 0.8047, so it rounds to 0.80859 whatever the fp32 summation order; the tolerance
    /// (expected/256, less than the 0.0039 gap to either neighbour) admits that value alone.
    /// </summary>
    static BenchResult Linear(CudaBackend gpu)
    {
        using var x = gpu.Zeros(1, Tokens, Hidden);
        using var w = gpu.Zeros(4 * Hidden, Hidden);
        using var b = gpu.Zeros(4 * Hidden);
        gpu.Fill(x, 0.01f);
        gpu.Fill(w, 0.01f);
        gpu.Fill(b, 0.5f);
        Tensor? y = null;
        float ms = gpu.TimeMs(() => { y?.Dispose(); y = gpu.Linear(x, w, b); });
        using var _ = y;
        double r = HalfPrecision.RoundToBFloat16(0.01f);
        float expected = HalfPrecision.RoundToBFloat16((float)(Hidden * r * r + 0.5));
        var check = Uniform("y", gpu.Download(y!), expected, expected / 256);
        double flop = 2.0 * Tokens * Hidden * 4 * Hidden;
        return new BenchResult("linear", [new("linear", ms, flop / (ms * 1e-3) / 1e12)], check.Ok, check.Text);
    }

    /// <summary>
    /// Attention forward and backward with q = k = 0.05, v = 1 and dout = 0.01 uniform: every score is equal, so every
    /// output is 1; dP = dout·vᵀ equals drow = rowsum(dout ∘ o), so dS, dq and dk are 0; dv = Σ_i P_ij·dout_i = 0.01.
    /// </summary>
    internal static BenchResult Attention(CudaBackend gpu, AttentionKernel kernel)
    {
        var (forward, backward) = (gpu.AttentionForwardKernel, gpu.AttentionBackwardKernel);
        gpu.AttentionForwardKernel = gpu.AttentionBackwardKernel = kernel;
        try
        {
            const int B = 1, H = Heads, L = Tokens, D = HeadDim;
            using var q = gpu.Zeros(B, H, L, D);
            using var k = gpu.Zeros(B, H, L, D);
            using var v = gpu.Zeros(B, H, L, D);
            using var dout = gpu.Zeros(B, L, H * D);
            gpu.Fill(q, 0.05f);
            gpu.Fill(k, 0.05f);
            gpu.Fill(v, 1f);
            gpu.Fill(dout, 0.01f);
            Tensor? o = null, lse = null;
            float fwd = gpu.TimeMs(() => { o?.Dispose(); lse?.Dispose(); o = gpu.Attention(q, k, v, out lse); }, 3);
            using var _o = o;
            using var _lse = lse;
            (Tensor Dq, Tensor Dk, Tensor Dv)? grads = null;
            float bwd = gpu.TimeMs(() =>
            {
                if (grads is var (a, b2, c)) { a.Dispose(); b2.Dispose(); c.Dispose(); }
                grads = gpu.AttentionBackward(dout, q, k, v, o!, lse!);
            }, 3);
            var (dq, dk, dv) = grads!.Value;
            using (dq) using (dk) using (dv)
            {
                float dvExpected = HalfPrecision.RoundToBFloat16(0.01f);
                var checks = new[]
                {
                    Uniform("out", gpu.Download(o!), 1f, 1e-2f),
                    Uniform("dq", gpu.Download(dq), 0f, 1e-3f),
                    Uniform("dk", gpu.Download(dk), 0f, 1e-3f),
                    Uniform("dv", gpu.Download(dv), dvExpected, dvExpected / 64),
                };
                double flop = 4.0 * B * H * L * L * D;   // two L×L×D products; the backward does 2.5 times as many
                string name = $"attention {kernel.Tag()}";
                return new BenchResult(name,
                    [new("forward", fwd, flop / (fwd * 1e-3) / 1e12), new("backward", bwd, 2.5 * flop / (bwd * 1e-3) / 1e12)],
                    checks.All(c => c.Ok), string.Join("; ", checks.Select(c => c.Text)));
            }
        }
        finally { (gpu.AttentionForwardKernel, gpu.AttentionBackwardKernel) = (forward, backward); }
    }

    /// <summary>Whether every value is within <paramref name="tolerance"/> of <paramref name="expected"/> (NaN fails).</summary>
    static (bool Ok, string Text) Uniform(string what, float[] values, float expected, float tolerance)
    {
        double worst = 0;
        foreach (float x in values)
        {
            double e = Math.Abs((double)x - expected);
            if (double.IsNaN(e)) { worst = double.NaN; break; }
            worst = Math.Max(worst, e);
        }
        bool ok = worst <= tolerance;   // false for NaN
        return (ok, $"{what} max |x − {expected:G6}| = {worst:G3} ({(ok ? "ok" : $"FAIL, allowed {tolerance:G3}")})");
    }
}
