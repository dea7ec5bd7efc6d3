using MetaLoraNative.Engine;
using MetaLoraNative.Engine.IO;

namespace MetaLoraNative.Kernels.Verification;

// The parity checks of the LoRA up factor's backward, version 2 (kernels/dev/lora/02_up_backward.cu, tag upback), in
// CudaParity.Dev: `metalora check cuda --dev`. Each runs LoraUpBackward with CudaBackend.LoraUpBackwardKernel on
// against the fp64 oracle's LoraUpBackward and compares whole tensors (dU, and all of dmid's tensor: the cells outside
// its window must be untouched), then runs the same call a second time back to back (dU += once more, dmid = again):
// the second launch works on the "last block finishes" counters the first left, which must be zero again.
public static partial class CudaParity
{
    /// <summary>
    /// (n, rows, r2, dy's columns, dy's window start, a/dmid's columns, their window start, row offset, with dU) of the
    /// checks. The FLUX.1-dev rows are 1024² (4,096 image + 512 text tokens): a 3,072-column target in the middle of
    /// qkv's 9,216 and linear1's 12,288-column MLP target at 9,216 of 21,504, r2 1 (the paper's) and 4 (the kernel's
    /// limit); the small ones put the edges of the 64-row tiles and 1,024-column chunks, a dy window off the 16-byte
    /// rule (scalar loads), a batch group's rows, a call without dU, a grid of a single block (the block finishes its
    /// own tile and chunk), and r2 5 (version 1 under the same switch).
    /// </summary>
    public static readonly (int N, int Rows, int R, int DyCols, int S, int MCols, int O, int Row0, bool WithDu)[] LoraUpBackwardCases =
    [
        (4608, 3072, 1, 9216, 3072, 3, 1, 0, true),
        (4608, 3072, 4, 9216, 3072, 12, 4, 0, true),
        (4608, 12288, 1, 21504, 9216, 4, 3, 0, true),
        (4608, 12288, 4, 21504, 9216, 16, 12, 0, true),
        (70, 200, 1, 200, 0, 1, 0, 0, true),
        (65, 1030, 2, 1048, 8, 5, 1, 3, true),
        (130, 2053, 3, 2064, 3, 7, 2, 1, true),
        (33, 300, 4, 320, 16, 6, 1, 2, false),
        (50, 1000, 2, 1000, 0, 3, 1, 0, true),
        (40, 96, 5, 96, 0, 5, 0, 0, true),
    ];

    static IEnumerable<ParityCheck> LoraUpBackwardChecks() =>
        LoraUpBackwardCases.Select(c => new ParityCheck(
            $"lora upback v2 n{c.N} rows{c.Rows} r{c.R}{(c.WithDu ? "" : " dmid-only")}{(c.S % 8 != 0 ? " unaligned" : "")}",
            $"LoraUpBackward version 2 (kernels/dev/lora/02_up_backward.cu{(c.R > LoraUpBackwardPlan.MaxR ? ", r2 past 4: version 1" : "")}): " +
            $"dU += dyᵀ·a and dmid = dy·u, dy columns [{c.S}, {c.S + c.Rows}) of ({c.N}, {c.DyCols}), a and dmid columns " +
            $"[{c.O}, {c.O + c.R}) of (.., {c.MCols}), against the fp64 oracle", p => LoraUpBackward(p, c)) { Slow = (long)c.N * c.Rows > 1 << 22 });

    static void LoraUpBackward(ParityContext p, (int N, int Rows, int R, int DyCols, int S, int MCols, int O, int Row0, bool WithDu) c)
    {
        var gpu = p.Gpu;
        bool previous = gpu.LoraUpBackwardKernel;
        int all = c.Row0 + c.N + 1;
        var (gdy, cdy) = p.Both(Rand(all * c.DyCols, 1), all, c.DyCols);
        var (ga, ca) = p.Both(Rand(all * c.MCols, 2), all, c.MCols);
        var (gm, cm) = p.Both(Rand(all * c.MCols, 3), all, c.MCols);   // stale contents: the window is written, the rest kept
        Tensor Master(IBackend be, int seed) => be.Upload(Rand(c.Rows * c.R, seed), [c.Rows, c.R], Precision.Master);
        Tensor gu = Master(gpu, 4), cu = Master(p.Cpu, 4), gdu = Master(gpu, 5), cdu = Master(p.Cpu, 5);
        try
        {
            gpu.LoraUpBackwardKernel = true;
            long launches = gpu.LoraUpBackwardLaunches;
            MatrixSlice Dy(Tensor t) => new(t, c.Row0, c.N, c.S, c.Rows);
            MatrixSlice? A(Tensor t) => c.WithDu ? (MatrixSlice?)new MatrixSlice(t, c.Row0, c.N, c.O, c.R) : null;
            MatrixSlice M(Tensor t) => new(t, c.Row0, c.N, c.O, c.R);
            for (int call = 1; call <= 2; call++)
            {
                gpu.LoraUpBackward(Dy(gdy), gu, A(ga), c.WithDu ? gdu : null, M(gm));
                p.Cpu.LoraUpBackward(Dy(cdy), cu, A(ca), c.WithDu ? cdu : null, M(cm));
                long expected = c.R <= LoraUpBackwardPlan.MaxR ? call : 0;
                ParityContext.Require(gpu.LoraUpBackwardLaunches - launches == expected,
                                      $"{gpu.LoraUpBackwardLaunches - launches} version-2 calls after call {call}, expected {expected}");
                p.F32($"dU (fp32, +=) after call {call}", gdu, cdu);
                p.Bf16($"dmid's tensor (bf16, the window =) after call {call}", gm, cm);
            }
        }
        finally
        {
            gpu.LoraUpBackwardKernel = previous;
            foreach (var t in new[] { gdy, cdy, ga, ca, gm, cm, gu, cu, gdu, cdu }) t.Dispose();
        }
    }
}

// The bench of the LoRA up factor's backward, in KernelBenches.Dev: version 1 (two GEMMs) beside version 2 (one pass).
public static partial class KernelBenches
{
    static IEnumerable<KernelBench> LoraUpBackwardBenches() =>
    [
        new("lora upback v1", $"LoraUpBackward as two GEMMs (dU += dyᵀ·a, dmid = dy·u), n {Tokens}, r2 1, dy windows of 3,072 and 12,288 columns " +
            "of a (.., 21,504) gradient", gpu => LoraUpBackward(gpu, 1)),
        new("lora upback v2", $"LoraUpBackward version 2 (kernels/dev/lora/02_up_backward.cu), one pass over dy, the same shapes",
            gpu => LoraUpBackward(gpu, 2)),
    ];

    /// <summary>
    /// dy = bf16(0.01) = 41/4096, u = 0.5, a = 0.25: dmid = rows·41/8192 (15.375 at 3,072 rows, 61.5 at 12,288, both
    /// bf16-exact) and dU = n·41/16384 = 11.53125 after one call from zero; every partial sum is a multiple of 41/16384
    /// well inside fp32's 24 bits, so any summation order gives these values exactly. GB/s counts dy's bytes read once (n·rows·2): the traffic version 2 needs, which version 1 moves twice.
    /// </summary>
    static BenchResult LoraUpBackward(CudaBackend gpu, int version)
    {
        bool previous = gpu.LoraUpBackwardKernel;
        gpu.LoraUpBackwardKernel = version == 2;
        try
        {
            const int N = Tokens, Ld = 21504, R = 1;
            using var dy = gpu.Zeros(N, Ld);
            using var a = gpu.Zeros(N, R);
            using var dmid = gpu.Zeros(N, R);
            gpu.Fill(dy, 0.01f);
            gpu.Fill(a, 0.25f);
            var timings = new List<BenchTiming>();
            var checks = new List<(bool Ok, string Text)>();
            foreach (var (rows, start) in new[] { (3072, 0), (12288, 9216) })
            {
                using var u = gpu.Zeros([rows, R], Precision.Master);
                using var du = gpu.Zeros([rows, R], Precision.Master);
                gpu.Fill(u, 0.5f);
                var window = new MatrixSlice(dy, 0, N, start, rows);
                float ms = gpu.TimeMs(() => gpu.LoraUpBackward(window, u, a, du, dmid));
                double gbs = (double)N * rows * 2 / (ms * 1e-3) / 1e9;
                timings.Add(new($"rows {rows} ({gbs:F0} GB/s of dy)", ms, 4.0 * N * rows * R / (ms * 1e-3) / 1e12));
                gpu.Fill(du, 0f);
                gpu.LoraUpBackward(window, u, a, du, dmid);
                checks.Add(Uniform($"dmid (rows {rows})", gpu.Download(dmid), HalfPrecision.RoundToBFloat16(rows * 41f / 8192), 0f));
                checks.Add(Uniform($"dU (rows {rows})", gpu.Download(du), N * 41f / 16384, 0f));
            }
            return new BenchResult($"lora upback v{version}", timings, checks.All(c => c.Ok), string.Join("; ", checks.Select(c => c.Text)));
        }
        finally { gpu.LoraUpBackwardKernel = previous; }
    }
}
