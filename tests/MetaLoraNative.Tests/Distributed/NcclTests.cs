using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Distributed;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Kernels;
using MetaLoraNative.Kernels.Distributed;
using MetaLoraNative.Kernels.Native;
using MetaLoraNative.Tests.Cuda;
using MetaLoraNative.Tests.Testing;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Distributed;

/// <summary>
/// The NCCL binding and communicator. Without libnccl the binding tests skip saying why (the probe's line lists every
/// path tried); without a GPU the communicator tests skip like the other CUDA tests.
/// </summary>
[Collection("distributed")]
public class NcclTests(ITestOutputHelper output)
{
    [Fact]
    public void VersionCodesOfBothEncodingsDecode()
    {
        Assert.Equal((2, 18, 3), Nccl.DecodeVersion(21803));
        Assert.Equal((2, 8, 4), Nccl.DecodeVersion(2804));
        Assert.Equal((2, 10, 3), Nccl.DecodeVersion(21003));
        Assert.False(Nccl.IsSupportedVersion(2804));
        Assert.False(Nccl.IsSupportedVersion(20907));
        Assert.True(Nccl.IsSupportedVersion(21000));
        Assert.True(Nccl.IsSupportedVersion(22304));
    }

    [Fact]
    public void TheUniqueIdIs128BytesByValue()
    {
        Assert.Equal(128, System.Runtime.CompilerServices.Unsafe.SizeOf<ncclUniqueId>());
        var bytes = Enumerable.Range(0, 128).Select(i => (byte)(i * 7)).ToArray();
        Assert.Equal(bytes, ncclUniqueId.FromArray(bytes).ToArray());
        Assert.Contains("128 bytes, not 127", Assert.Throws<ArgumentException>(() => ncclUniqueId.FromArray(new byte[127])).Message);
    }

    [Fact]
    public void TheProbeGivesTheVersionOrEveryPathTried()
    {
        string line = NcclProbe.Report();
        output.WriteLine(line);
        if (NcclProbe.Version(out _) is { } version) Assert.StartsWith($"NCCL: {version} (", line);
        else
        {
            Assert.StartsWith("NCCL: MISSING", line);
            Assert.Contains("libnccl.so.2", line);
            Assert.Contains("tried: libnccl.so.2, libnccl.so", line);
        }
    }

    [SkippableFact]
    public void NcclLoadsAndReportsItsVersion()
    {
        string? version = NcclProbe.Version(out string reason);
        output.WriteLine(version != null ? $"NCCL {version} from {reason}" : $"skipped: {reason}");
        Skip.If(version == null, reason);
        NcclCheck.Call(Nccl.ncclGetVersion(out int code));
        Assert.True(code > 0);
        var e = Assert.Throws<CudaException>(() => NcclCheck.Call(Nccl.ncclInvalidArgument));
        Assert.Contains("NCCL error 4", e.Message);
        Assert.Contains("Nccl.ncclInvalidArgument", e.Message);   // the failing expression
    }

    /// <summary>Opens GPU 0 and checks NCCL, or skips saying which is missing.</summary>
    CudaBackend GpuWithNccl()
    {
        var gpu = Gpu.OpenOrSkip(output);
        string? version = NcclProbe.Version(out string reason);
        if (version == null)
        {
            gpu.Dispose();
            output.WriteLine($"skipped: {reason}");
        }
        Skip.If(version == null, reason);
        return gpu;
    }

    [SkippableFact]
    public void OneRankRoundTripsBf16AndFp32Tensors()
    {
        using var gpu = GpuWithNccl();
        using var comm = NcclCommunicator.Create(gpu, DistributedConfig.Single, new CommunicatorOptions { BucketBytes = 4096 });
        var data = new TestData(3);
        var f32 = data.Normal(3000).Select(v => (float)v).ToArray();
        var bf16 = data.Normal(700).Select(v => HalfPrecision.RoundToBFloat16((float)v)).ToArray();
        using var a = gpu.Upload(f32, [3000], Precision.Master);
        using var b = gpu.Upload(bf16, [7, 100], Precision.Compute);
        comm.AllReduce([a, b], ReduceOp.Sum);
        comm.AllReduce([a, b], ReduceOp.Average);
        comm.Broadcast([a, b]);
        var broadcast = comm.LastCall;
        comm.Barrier();
        // One rank: the sum and the average are the values themselves, and fp32 → bf16 of a bf16 value is exact.
        Assert.Equal(f32, gpu.Download(a));
        Assert.Equal(bf16, gpu.Download(b));
        // Both tensors travel as fp32: 3,700 values in 4 KiB buckets; one rank sends nothing.
        Assert.Equal(3700L * 4, broadcast.PayloadBytes);
        Assert.Equal(4, broadcast.Buckets);
        Assert.Equal(0L, broadcast.BytesSent);
    }

    [SkippableFact]
    public void TwoGpusSumLikeTheHost()
    {
        using (GpuWithNccl()) { }
        bool two = CudaBackend.TryCreate(out var second, out string reason, ordinal: 1);
        second?.Dispose();
        output.WriteLine(two ? "two GPUs" : $"skipped: {reason}");
        Skip.IfNot(two, $"needs two GPUs: {reason}");

        int port = WorkerLauncher.FreePort();
        var values = new float[2][];
        var results = new float[2][];
        var errors = new Exception?[2];
        var threads = Enumerable.Range(0, 2).Select(r => new Thread(() =>
        {
            try
            {
                Assert.True(CudaBackend.TryCreate(out var gpu, out string why, ordinal: r), why);
                using (gpu)
                {
                    values[r] = new TestData(10 + r).Normal(5000).Select(v => (float)v).ToArray();
                    using var comm = NcclCommunicator.Create(gpu!, new DistributedConfig(r, 2, r, "127.0.0.1", port));
                    using var t = gpu!.Upload(values[r], [5000], Precision.Master);
                    comm.AllReduce([t], ReduceOp.Sum);
                    results[r] = gpu.Download(t);
                    Assert.Equal(5000L * 4, comm.LastCall.PayloadBytes);
                    Assert.Equal(5000L * 4, comm.LastCall.BytesSent);   // ring share 2(N−1)/N = 1 for two ranks
                }
            }
            catch (Exception e) { errors[r] = e; }
        })).ToArray();
        foreach (var t in threads) t.Start();
        foreach (var t in threads) Assert.True(t.Join(TimeSpan.FromMinutes(2)), "NCCL ranks hang");
        Assert.Null(errors[0]);
        Assert.Null(errors[1]);
        // Tolerance 0: one fp32 addition of two fp32 values rounds the same on the GPU as on the host.
        for (int i = 0; i < 5000; i++) Assert.Equal(values[0][i] + values[1][i], results[0][i]);
        Assert.Equal(results[0], results[1]);
    }
}
