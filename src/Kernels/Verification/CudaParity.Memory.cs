using MetaLoraNative.Engine;
using MetaLoraNative.Engine.IO;

namespace MetaLoraNative.Kernels.Verification;

// Memory: upload and download in both precisions, copies between them, fill.
public static partial class CudaParity
{
    static IEnumerable<ParityCheck> MemoryChecks() =>
    [
        new("memory", "upload/download round trips, fp32→bf16 and bf16→fp32 copy, fill in both precisions", Memory),
    ];

    static void Memory(ParityContext p)
    {
        const int n = 1000;
        float[] a = Rand(n, 1, 3f);
        float[] wide = [.. a.Select((v, i) => v + (i % 7 - 3) * 1e-3f)];   // not bf16-exact: the copy must round
        using var g32 = p.Gpu.Upload(wide, [n], Precision.Master);
        using var c32 = p.Cpu.Upload(wide, [n], Precision.Master);
        p.Exact("upload/download fp32", p.Gpu.Download(g32), wide);
        using var g16 = p.Gpu.Upload(a, n);
        p.Exact("upload/download bf16 (bf16-exact values)", p.Gpu.Download(g16), a);

        using var gbf = p.Gpu.Zeros(n);
        p.Gpu.Copy(g32, gbf);   // fp32 -> bf16 rounds
        p.Bf16("copy fp32->bf16", gbf, c32);
        using var gback = p.Gpu.Zeros([n], Precision.Master);
        p.Gpu.Copy(gbf, gback);   // bf16 -> fp32 is exact
        p.Exact("copy bf16->fp32", p.Gpu.Download(gback), p.Gpu.Download(gbf));

        p.Gpu.Fill(gbf, 0.1f);
        p.Exact("fill bf16", p.Gpu.Download(gbf), Enumerable.Repeat(HalfPrecision.RoundToBFloat16(0.1f), n).ToArray());
        p.Gpu.Fill(gback, 0.1f);
        p.Exact("fill fp32", p.Gpu.Download(gback), Enumerable.Repeat(0.1f, n).ToArray());
    }
}
