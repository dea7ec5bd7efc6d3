using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Quantization;

namespace MetaLoraNative.Kernels.Verification;

// Quant: E4M3 weights decoded to bf16 (quant.cu), LinearQuantized and its input backward (the decode, then cuBLASLt).
public static partial class CudaParity
{
    static IEnumerable<ParityCheck> QuantChecks() =>
    [
        new("dequantize e4m3", "E4M3 codes times fp32 row scales decoded to bf16: bit for bit the fp32 product rounded to bf16", DequantizeE4M3),
        new("linear quantized", "LinearQuantized with and without bias, and its input backward; baseline the bf16-rounded weight", LinearQuantized),
    ];

    /// <summary>A (rows, cols) weight quantised per row from bf16-exact values (shapes off the kernels' tiles).</summary>
    static Fp8Rows QuantizedRand(int rows, int cols, int seed) => Fp8Rows.Quantize(Rand(rows * cols, seed, 0.3f), rows, cols, "parity weight");

    static void DequantizeE4M3(ParityContext p)
    {
        var q = QuantizedRand(45, 70, 1);
        using var gw = q.Upload(p.Gpu);
        using var cw = q.Upload(p.Cpu);
        using var gd = p.Gpu.Dequantize(gw);
        using var cd = p.Cpu.Dequantize(cw);
        ParityContext.RequireShape(gd, [45, 70], "dequantized weight");
        // The oracle's value is the exact product; the kernel rounds it once to fp32, then to bf16.
        var expected = Array.ConvertAll(p.Cpu.DownloadDouble(cd), v => Engine.IO.HalfPrecision.RoundToBFloat16((float)v));
        p.Exact("dequantize", p.Gpu.Download(gd), expected);
    }

    static void LinearQuantized(ParityContext p)
    {
        var q = QuantizedRand(40, 48, 2);
        using var gw = q.Upload(p.Gpu);
        using var cw = q.Upload(p.Cpu);
        using var exact = p.Cpu.Dequantize(cw);
        using var rounded = p.RoundedCopy(exact);                              // the weight the GPU's GEMM reads
        var (gx, cx) = p.Both(Rand(2 * 19 * 48, 3), 2, 19, 48);
        var (gb, cb) = p.Both(Rand(40, 4), 40);
        foreach (var bias in new[] { true, false })
        {
            using var gy = p.Gpu.LinearQuantized(gx, gw, bias ? gb : null);
            using var cy = p.Cpu.LinearQuantized(cx, cw, bias ? cb : null);
            using var by = p.Cpu.Linear(cx, rounded, bias ? cb : null);
            ParityContext.RequireShape(gy, [2, 19, 40], "linear quantized output");
            p.Bf16($"linear quantized{(bias ? "+bias" : "")}", gy, p.Cpu.DownloadDouble(cy), ParityContext.RoundBf16(p.Cpu.DownloadDouble(by)));
        }
        var (gdy, cdy) = p.Both(Rand(2 * 19 * 40, 5), 2, 19, 40);
        using var gdx = p.Gpu.LinearQuantizedBackward(gdy, gw);
        using var cdx = p.Cpu.LinearQuantizedBackward(cdy, cw);
        using var bdx = p.Cpu.LinearBackward(cdy, rounded);
        p.Bf16("linear quantized backward", gdx, p.Cpu.DownloadDouble(cdx), ParityContext.RoundBf16(p.Cpu.DownloadDouble(bdx)));
        foreach (var t in new[] { gx, cx, gb, cb, gdy, cdy }) t.Dispose();
    }
}
