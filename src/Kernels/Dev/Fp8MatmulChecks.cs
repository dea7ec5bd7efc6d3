using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Quantization;

namespace MetaLoraNative.Kernels.Verification;

// The parity checks of the W8A8 product (kernels/dev/quant/02_fp8_activations.cu + cuBLASLt FP8), in CudaParity.Dev:
// `metalora check cuda --dev`. The oracle is the CPU's LinearQuantizedW8A8 (exact sum of the decoded codes): the
// GPU quantises x with the same amax, scale and rounding, so the codes agree exactly and the outputs differ by the
// GPU's fp32 accumulation and its bf16 output rounding only. Where the device has no FP8 route (below sm_89) the op
// runs W8A16, and the check then holds it against the W8A16 oracle instead (the fallback is what runs there).
public static partial class CudaParity
{
    /// <summary>(M, K, N) of the W8A8 checks: small and off the tiles, and FLUX.1-dev's img_attn.qkv-sized 4,608 × 3,072 → 3,072.</summary>
    public static readonly (int M, int K, int N)[] Fp8MatmulCases = [(38, 64, 48), (5, 48, 16), (4608, 3072, 3072)];

    /// <summary>Rows of the large case the fp64 oracle computes (row 0, which holds amax, among them).</summary>
    const int Fp8OracleRows = 64;

    static IEnumerable<ParityCheck> Fp8MatmulChecks() =>
        Fp8MatmulCases.Select(c => new ParityCheck($"linear w8a8 {c.M}x{c.K}x{c.N}",
            $"LinearQuantizedW8A8 (amax, quantise, cuBLASLt FP8, column scale) with and without bias against the CPU emulation, M {c.M}, K {c.K}, N {c.N}" +
            (c.M > Fp8OracleRows ? $"; the oracle on {Fp8OracleRows} rows including the one holding amax" : ""),
            p => LinearW8A8(p, c)) { Slow = c.M > Fp8OracleRows });

    static void LinearW8A8(ParityContext p, (int M, int K, int N) c)
    {
        var q = Fp8Rows.Quantize(Rand(c.N * c.K, 21, 0.05f), c.N, c.K, "parity weight");
        var x = Rand(c.M * c.K, 22, 2f);
        x[7] = 3.5f;                                             // amax in row 0, above every other |x| ≤ 2
        bool fp8 = Fp8Matmul.Choose(p.Gpu.Device.Major, p.Gpu.Device.Minor, (long)Native.CublasLt.cublasLtGetVersion(), c.M, c.N, c.K, true).Mode != Fp8GemmMode.Dequantize;
        int rows = Math.Min(c.M, Fp8OracleRows);
        // the oracle's rows: the first half of them, then the rest spread over x (the same amax: row 0 is among them)
        int[] picked = [.. Enumerable.Range(0, rows).Select(i => i < rows / 2 || rows == c.M ? i : (int)((long)(i - rows / 2) * (c.M - rows / 2) / (rows - rows / 2)) + rows / 2)];
        var xs = new float[rows * c.K];
        for (int r = 0; r < rows; r++) Array.Copy(x, (long)picked[r] * c.K, xs, (long)r * c.K, c.K);
        using var gw = q.Upload(p.Gpu);
        using var cw = q.Upload(p.Cpu);
        using var gx = p.Gpu.Upload(x, c.M, c.K);
        using var cx = p.Cpu.Upload(xs, rows, c.K);
        var (gb, cb) = p.Both(Rand(c.N, 23), c.N);
        foreach (var bias in new[] { true, false })
        {
            using var gy = p.Gpu.LinearQuantizedW8A8(gx, gw, bias ? gb : null);
            ParityContext.RequireShape(gy, [c.M, c.N], "w8a8 output");
            using var cy = fp8 ? p.Cpu.LinearQuantizedW8A8(cx, cw, bias ? cb : null) : p.Cpu.LinearQuantized(cx, cw, bias ? cb : null);
            var all = p.Gpu.DownloadDouble(gy);
            var ours = new double[rows * c.N];
            for (int r = 0; r < rows; r++) Array.Copy(all, (long)picked[r] * c.N, ours, (long)r * c.N, c.N);
            var reference = p.Cpu.DownloadDouble(cy);
            p.Bf16($"w8a8 {c.M}x{c.K}x{c.N}{(bias ? "+bias" : "")}{(fp8 ? "" : " (no FP8 route: W8A16)")}", ours, reference, RoundBf16(reference));
        }
        gb.Dispose();
        cb.Dispose();
    }
}

// The bench of the W8A8 forward product, in KernelBenches.Dev, beside version 1 (W8A16: the weight decoded to bf16,
// then the bf16 GEMM; what the fp8 base runs by default) at FLUX.1-dev's img_attn.qkv shape at 1024².
public static partial class KernelBenches
{
    /// <summary>M tokens, K = d_in, N = d_out of one fp8 linear.</summary>
    public readonly record struct Fp8BenchShape(int M, int K, int N);

    /// <summary>A double block's qkv linear at 1024²: 4,608 tokens (the bench joins both streams' rows), 3,072 → 9,216.</summary>
    public static Fp8BenchShape Fp8FluxDev { get; } = new(Tokens, Hidden, 3 * Hidden);

    static IEnumerable<KernelBench> Fp8MatmulBenches() =>
    [
        new("linear w8a16", $"LinearQuantized (fp8 weight decoded to bf16, bf16 GEMM), ({Fp8FluxDev.M}, {Fp8FluxDev.K}) -> {Fp8FluxDev.N} with bias",
            gpu => Fp8Linear(gpu, Fp8FluxDev, 1, gpu.TimeMs)),
        new("linear w8a8", $"LinearQuantizedW8A8 (kernels/dev/quant/02_fp8_activations.cu amax + quantise, cuBLASLt FP8, column scale), ({Fp8FluxDev.M}, {Fp8FluxDev.K}) -> {Fp8FluxDev.N} with bias",
            gpu => Fp8Linear(gpu, Fp8FluxDev, 2, gpu.TimeMs)),
    ];

    /// <summary>
    /// w = 2⁻⁷ (every row's amax: codes 448, scale 2⁻⁷/448), x = 0.5 (amax 0.5: codes 448), bias 0.5: every output is
    /// K · 2⁻⁸ + 0.5 (12.5 at K 3,072) on both paths, the decoded operands 2⁻⁷ and 0.5 within fp32's rounding of the
    /// scales, so the one bf16 rounding of the output leaves it exact; allowed expected/128 (one ulp). Version 2 on a
    /// device with no FP8 route (below sm_89) runs W8A16 and says so. TFLOP/s of 2 · M · K · N.
    /// </summary>
    internal static BenchResult Fp8Linear(IBackend be, Fp8BenchShape s, int version, BenchTimer time)
    {
        var weight = new float[(long)s.N * s.K];
        Array.Fill(weight, 1f / 128);
        var q = Fp8Rows.Quantize(weight, s.N, s.K, "bench weight");
        using var w = q.Upload(be);
        using var x = be.Zeros(1, s.M, s.K);
        using var b = be.Zeros(s.N);
        be.Fill(x, 0.5f);
        be.Fill(b, 0.5f);
        string mode = "";
        if (be is CudaBackend gpu && version == 2)
        {
            var choice = Fp8Matmul.Choose(gpu.Device.Major, gpu.Device.Minor, (long)Native.CublasLt.cublasLtGetVersion(), s.M, s.N, s.K, true);
            mode = choice.Mode == Fp8GemmMode.Dequantize ? $" (no FP8 route: W8A16; {choice.Reason})" : $" ({choice.Mode})";
        }
        Tensor? y = null;
        float ms = time(() =>
        {
            y?.Dispose();
            y = version == 2 ? be.LinearQuantizedW8A8(x, w, b) : be.LinearQuantized(x, w, b);
        }, 10);
        using var _ = y;
        float expected = s.K / 256f + 0.5f;
        var check = Uniform("y", be.Download(y!), expected, expected / 128);
        double flop = 2.0 * s.M * s.K * s.N;
        return new BenchResult($"linear w8a{(version == 2 ? 8 : 16)}", [new($"forward{mode}", ms, flop / (ms * 1e-3) / 1e12)], check.Ok, check.Text);
    }
}
