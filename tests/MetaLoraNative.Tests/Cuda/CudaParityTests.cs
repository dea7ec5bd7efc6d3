using MetaLoraNative.Engine;
using MetaLoraNative.Kernels;
using MetaLoraNative.Kernels.Verification;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cuda;

/// <summary>
/// CUDA vs the fp64 CPU oracle: one theory case per check of <see cref="CudaParity"/> (src/Kernels/Verification),
/// the same checks `metalora check cuda` runs on a machine with only the published binary. The tolerance rules are
/// documented there and in docs/GPU.md. Skips, saying why, without a CUDA GPU.
/// </summary>
public class CudaParityTests(ITestOutputHelper output)
{
    public static TheoryData<string> Checks()
    {
        var data = new TheoryData<string>();
        foreach (var c in CudaParity.All) data.Add(c.Name);
        return data;
    }

    [SkippableTheory]
    [MemberData(nameof(Checks))]
    public void Check(string name)
    {
        var check = CudaParity.Find(name);
        bool ok = CudaBackend.TryCreate(out var gpu, out string reason);
        if (!ok) output.WriteLine($"skipped: {reason}");
        Skip.IfNot(ok, reason);
        using var _ = gpu;
        using var oracle = Oracle.Cpu();
        var r = check.Run(gpu!, oracle);
        output.WriteLine($"{r.Name} on {reason}: {r.Elapsed.TotalSeconds:F1} s");
        foreach (var m in r.Measures)
            output.WriteLine($"{m.What}: ours {m.Error:E3}, allowed {m.Allowed:E3}, bf16 baseline {m.Baseline:E3}, max|ref| {m.MaxRef:E3}{(m.Pass ? "" : "  FAIL")}");
        Assert.True(r.Failure == null, r.Failure);
        Assert.True(r.Pass, $"{r.Name}: {r.Worst} error {r.Error:E3} > allowed {r.Allowed:E3}");
    }

    [Fact]
    public void EveryCheckHasAUniqueName()
    {
        var names = CudaParity.All.Select(c => c.Name).ToArray();
        Assert.Equal(names.Length, names.Distinct().Count());
        Assert.Equal(CudaParity.AttentionCases.Length, names.Count(n => n.StartsWith("attention ")));
    }
}

/// <summary>GPU-only checks that need no oracle.</summary>
public class CudaBackendTests(ITestOutputHelper output)
{
    CudaBackend Open() => Gpu.OpenOrSkip(output);

    [SkippableFact]
    public void UploadDownloadRoundTripsAndPoolReuses()
    {
        using var gpu = Open();
        float[] v = [1f, -2.5f, 3.140625f, 1e-3f];
        using (var t = gpu.Upload(v, [2, 2], Precision.Master)) Assert.Equal(v, gpu.Download(t));
        using (var t = gpu.Upload(v, 4)) Assert.Equal(Array.ConvertAll(v, Bf16Bits.Round), gpu.Download(t));
        long reserved = gpu.Pool.ReservedBytes;
        for (int i = 0; i < 10; i++) using (gpu.Zeros(1000, 1000)) { }
        Assert.True(gpu.Pool.ReservedBytes <= reserved + DevicePool.SizeClass(2_000_000), "the pool did not reuse a freed block");
        Assert.True(gpu.PeakBytes >= 2_000_000);
        var t2 = gpu.Zeros(3, 4);
        var r = t2.Reshape(12);
        t2.Dispose();
        Assert.Equal(new float[12], gpu.Download(r));   // storage lives while a view does
        r.Dispose();
    }

    [SkippableFact]
    public void MissingKernelArgumentsFailWithTheExpression()
    {
        using var gpu = Open();
        using var a = gpu.Zeros(2, 3);
        using var b = gpu.Zeros(4, 5);
        var e = Assert.Throws<ArgumentException>(() => gpu.Gemm(a, false, b, false, a));
        Assert.Contains("gemm", e.Message);
    }
}

/// <summary>Host bf16 rounding (always runs): nearest, ties to even, NaN kept.</summary>
public class Bf16BitsTests
{
    [Fact]
    public void RoundsToNearestEven()
    {
        Assert.Equal(1f, Bf16Bits.Round(1f));
        Assert.Equal(1f, Bf16Bits.Round(BitConverter.UInt32BitsToSingle(0x3f808000)));            // tie -> even (down)
        Assert.Equal(BitConverter.UInt32BitsToSingle(0x3f820000), Bf16Bits.Round(BitConverter.UInt32BitsToSingle(0x3f818000)));   // tie -> even (up)
        Assert.Equal(BitConverter.UInt32BitsToSingle(0x3f810000), Bf16Bits.Round(BitConverter.UInt32BitsToSingle(0x3f808001)));
        Assert.True(float.IsNaN(Bf16Bits.Round(float.NaN)));
        Assert.Equal(float.PositiveInfinity, Bf16Bits.Round(float.PositiveInfinity));
    }
}
