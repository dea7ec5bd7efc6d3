using MetaLoraNative.Engine;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Kernels;
using MetaLoraNative.Kernels.Verification;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cuda;

/// <summary>
/// The Memory group on the GPU (Ops/CudaBackend.Memory.cs, kernels/memory.cu) against the fp64 oracle, and the
/// device pool. Skips without a GPU.
/// </summary>
[Collection(CudaCollection.Name)]
public class CudaMemoryTests(ITestOutputHelper output)
{
    public static TheoryData<string> Checks() => Parity.Checks("Memory");

    [SkippableTheory]
    [MemberData(nameof(Checks))]
    public void MatchesTheOracle(string check) => Parity.Run(check, output);

    [SkippableFact]
    public void UploadDownloadRoundTripsAndPoolReuses()
    {
        using var gpu = Gpu.OpenOrSkip(output);
        float[] v = [1f, -2.5f, 3.140625f, 1e-3f];
        using (var t = gpu.Upload(v, [2, 2], Precision.Master)) Assert.Equal(v, gpu.Download(t));
        using (var t = gpu.Upload(v, 4)) Assert.Equal(Array.ConvertAll(v, HalfPrecision.RoundToBFloat16), gpu.Download(t));
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

    /// <summary>With METALORA_SYNC_CHECK's synchronisation after every launch and op, ops and checks run as usual.</summary>
    [SkippableFact]
    public void SyncCheckedOpsRunAsUsual()
    {
        using var gpu = Gpu.OpenOrSkip(output);
        gpu.SyncCheck = true;
        using var oracle = Oracle.Cpu();
        foreach (string name in new[] { "memory", "linear", "layernorm", "attention scalar/scalar 2x3x77x64" })
        {
            var r = CudaParity.Find(name).Run(gpu, oracle);
            output.WriteLine($"{name}: {(r.Pass ? "pass" : r.Failure ?? r.Worst)} in {r.Elapsed.TotalSeconds:F1} s");
            Assert.True(r.Pass, $"{name} with SyncCheck: {r.Failure ?? r.Worst}");
        }
        // every file the backend loads is compiled for the device's own arch (no kernel is marked arch-specific)
        Assert.All(KernelCompiler.KernelFiles(), f => Assert.Equal(gpu.Arch, gpu.ArchOf(f)));
    }
}
