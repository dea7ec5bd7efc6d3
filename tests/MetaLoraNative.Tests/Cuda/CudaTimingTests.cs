using MetaLoraNative.Engine;
using MetaLoraNative.Kernels;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cuda;

/// <summary>
/// Timings at FLUX.1-dev's sizes (hidden 3072, 24 heads of 128, 512 text + 4096 image tokens at 1024²), printed for
/// the record; they assert only that the ops run. Skips without a GPU.
/// </summary>
public class CudaTimingTests(ITestOutputHelper output)
{
    CudaBackend Open() => Gpu.OpenOrSkip(output);

    [SkippableFact]
    public void GemmAtFluxSizes()
    {
        using var gpu = Open();
        const int L = 4608, C = 3072;
        using var x = gpu.Zeros(1, L, C);
        using var w = gpu.Zeros(4 * C, C);
        using var b = gpu.Zeros(4 * C);
        gpu.Fill(x, 0.01f);
        gpu.Fill(w, 0.01f);
        Tensor? y = null;
        float ms = gpu.TimeMs(() => { y?.Dispose(); y = gpu.Linear(x, w, b); });
        y?.Dispose();
        double tflops = 2.0 * L * C * 4 * C / (ms * 1e-3) / 1e12;
        output.WriteLine($"linear {L}x{C} -> {4 * C} with bias: {ms:F3} ms, {tflops:F0} TFLOP/s; pool peak {gpu.PeakBytes / 1048576.0:F0} MiB");
        Assert.True(ms > 0);
    }

    [SkippableTheory]
    [InlineData(AttentionKernel.Scalar)]
    [InlineData(AttentionKernel.TensorCore)]
    public void AttentionAtFluxSizes(AttentionKernel kernel)
    {
        using var gpu = Open();
        gpu.AttentionForwardKernel = kernel;
        gpu.AttentionBackwardKernel = kernel;
        const int B = 1, H = 24, L = 4608, D = 128;
        using var q = gpu.Zeros(B, H, L, D);
        using var k = gpu.Zeros(B, H, L, D);
        using var v = gpu.Zeros(B, H, L, D);
        gpu.Fill(q, 0.05f);
        gpu.Fill(k, 0.05f);
        gpu.Fill(v, 1f);
        Tensor? o = null, lse = null;
        float fwd = gpu.TimeMs(() => { o?.Dispose(); lse?.Dispose(); o = gpu.Attention(q, k, v, out lse); }, 3);
        using var dout = gpu.Zeros(B, L, H * D);
        gpu.Fill(dout, 0.01f);
        float bwd = gpu.TimeMs(() =>
        {
            var (dq, dk, dv) = gpu.AttentionBackward(dout, q, k, v, o!, lse!);
            dq.Dispose();
            dk.Dispose();
            dv.Dispose();
        }, 3);
        double flop = 4.0 * B * H * L * L * D;   // two L×L×D products
        output.WriteLine($"attention {kernel} (1, 24, 4608, 128): forward {fwd:F2} ms ({flop / (fwd * 1e-3) / 1e12:F1} TFLOP/s), " +
                         $"backward {bwd:F2} ms ({2.5 * flop / (bwd * 1e-3) / 1e12:F1} TFLOP/s)");
        Assert.All(gpu.Download(o!).Take(1000), x => Assert.Equal(1f, x, 1e-2f));   // uniform v: every output is 1
        o?.Dispose();
        lse?.Dispose();
    }
}
