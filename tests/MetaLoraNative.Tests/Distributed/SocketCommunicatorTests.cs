using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Distributed;
using MetaLoraNative.Tests.Testing;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Distributed;

/// <summary>
/// The socket communicator with N ranks as threads of one test. Tensor lengths are chosen so that a 1 KiB bucket
/// splits tensors across buckets and leaves one empty tensor in the middle.
/// </summary>
[Collection("distributed")]
public class SocketCommunicatorTests(ITestOutputHelper output)
{
    static readonly int[][] Shapes = [[3, 5], [300], [0], [7, 33], [1]];
    static readonly CommunicatorOptions Small = new() { BucketBytes = 1024 };

    static double[][] RankValues(int rank) =>
        Shapes.Select((s, i) => new TestData(100 * rank + i).Normal(TestData.Numel(s), scale: 1 + rank)).ToArray();

    static Tensor[] Upload(IBackend be, double[][] values) => values.Select((v, i) => be.Upload(v, Shapes[i])).ToArray();

    [Theory]
    [InlineData(ReduceOp.Sum)]
    [InlineData(ReduceOp.Average)]
    public void AllReduceFp32MatchesTheSerialSumAndIsBitIdenticalOnEveryRank(ReduceOp op)
    {
        const int N = 4;
        var outcomes = LoopbackRanks.Run(N, Small, (comm, _) =>
        {
            var be = CpuBackend.F32();
            var ts = Upload(be, RankValues(comm.Rank));
            comm.AllReduce(ts, op);
            return (Values: ts.Select(be.Download).ToArray(), Stats: comm.LastCall);
        });
        var results = LoopbackRanks.Results(outcomes);

        // Tolerance: the communicator adds the N fp32 inputs in fp64 and rounds once to fp32, so it is within half an
        // fp32 ulp of the fp64 serial sum (2^-24 relative) plus fp64's own accumulation error, N · 2^-53 · Σ|x|.
        var inputs = Enumerable.Range(0, N).Select(RankValues).ToArray();
        double worst = 0;
        for (int t = 0; t < Shapes.Length; t++)
            for (int i = 0; i < inputs[0][t].Length; i++)
            {
                double sum = 0, abs = 0;
                for (int r = 0; r < N; r++) { sum += inputs[r][t][i]; abs += Math.Abs(inputs[r][t][i]); }
                double expected = op == ReduceOp.Average ? sum / N : sum;
                double bound = Math.Abs(expected) * Math.Pow(2, -24) + N * Math.Pow(2, -53) * abs;
                double err = Math.Abs(results[0].Values[t][i] - expected);
                worst = Math.Max(worst, err / Math.Max(bound, double.Epsilon));
                Assert.True(err <= bound, $"tensor {t}[{i}]: {results[0].Values[t][i]} vs serial {expected} (error {err:E2} > {bound:E2})");
            }
        output.WriteLine($"{op}: worst error {worst:F2} of the bound");

        for (int r = 1; r < N; r++)
            for (int t = 0; t < Shapes.Length; t++)
                Assert.True(results[r].Values[t].AsSpan().SequenceEqual(results[0].Values[t]), $"rank {r} tensor {t} differs from rank 0 bitwise");

        long elements = Shapes.Sum(s => (long)TestData.Numel(s));
        foreach (var (values, stats) in results)
        {
            Assert.Equal(elements * 4, stats.PayloadBytes);
            Assert.Equal((int)Math.Ceiling(elements * 4 / 1024.0), stats.Buckets);
        }
    }

    [Fact]
    public void AllReduceFp64AddsInRankOrder()
    {
        const int N = 3;
        var results = LoopbackRanks.Results(LoopbackRanks.Run(N, Small, (comm, _) =>
        {
            var be = CpuBackend.F64();
            var ts = Upload(be, RankValues(comm.Rank));
            comm.AllReduce(ts, ReduceOp.Sum);
            return ts.Select(be.DownloadDouble).ToArray();
        }));
        // Tolerance 0: the fp64 engine's sum is the same fp64 additions as this loop, in the same order (0, 1, 2).
        var inputs = Enumerable.Range(0, N).Select(RankValues).ToArray();
        for (int t = 0; t < Shapes.Length; t++)
            for (int i = 0; i < inputs[0][t].Length; i++)
            {
                double sum = 0;
                for (int r = 0; r < N; r++) sum += inputs[r][t][i];
                for (int r = 0; r < N; r++) Assert.Equal(sum, results[r][t][i]);
            }
    }

    [Fact]
    public void BroadcastCopiesTheRootsValuesAndBytes()
    {
        const int N = 3, Root = 2;
        var results = LoopbackRanks.Results(LoopbackRanks.Run(N, Small, (comm, _) =>
        {
            var be = CpuBackend.F32();
            var ts = Upload(be, RankValues(comm.Rank));
            comm.Broadcast(ts, Root);
            var id = new byte[128];
            if (comm.Rank == Root) new Random(7).NextBytes(id);
            comm.Broadcast(id, Root);
            return (Values: ts.Select(be.Download).ToArray(), Id: id);
        }));
        var expected = RankValues(Root);
        var expectedId = new byte[128];
        new Random(7).NextBytes(expectedId);
        for (int r = 0; r < N; r++)
        {
            for (int t = 0; t < Shapes.Length; t++)
                Assert.Equal(expected[t].Select(v => (float)v).ToArray(), results[r].Values[t]);
            Assert.Equal(expectedId, results[r].Id);
        }
    }

    [Fact]
    public void BytesSentPerCallFollowTheStar()
    {
        // Each round: every rank but 0 sends one frame up; rank 0 sends one frame down to each. A frame is a 24-byte
        // header, a 24-byte description and the payload.
        const int N = 3, Frame = 48;
        var results = LoopbackRanks.Results(LoopbackRanks.Run(N, Small, (comm, _) =>
        {
            var be = CpuBackend.F32();
            var ts = Upload(be, RankValues(comm.Rank));
            comm.AllReduce(ts, ReduceOp.Sum);
            var reduce = comm.LastCall;
            comm.Barrier();
            var barrier = comm.LastCall;
            return (reduce, barrier, comm.TotalBytesSent);
        }));
        long payload = Shapes.Sum(s => (long)TestData.Numel(s)) * 4;
        int buckets = results[0].reduce.Buckets;
        Assert.Equal((N - 1) * (buckets * Frame + payload), results[0].reduce.BytesSent);
        Assert.Equal((N - 1) * Frame, results[0].barrier.BytesSent);
        for (int r = 1; r < N; r++)
        {
            Assert.Equal(buckets * Frame + payload, results[r].reduce.BytesSent);
            Assert.Equal(Frame, results[r].barrier.BytesSent);
        }
        foreach (var (reduce, barrier, total) in results) Assert.Equal(reduce.BytesSent + barrier.BytesSent, total);
        output.WriteLine($"all-reduce of {payload} B in {buckets} buckets: rank 0 sent {results[0].reduce.BytesSent} B, rank 1 {results[1].reduce.BytesSent} B");
    }

    [Fact]
    public void BarrierWaitsForTheSlowestRank()
    {
        // Rank 1 arrives last; every rank must leave after that arrival. The arrival is stamped just before rank 1
        // enters the barrier (its exit time would be a proxy skewed by scheduling on a busy machine).
        var results = LoopbackRanks.Results(LoopbackRanks.Run(3, Small, (comm, clock) =>
        {
            double arrived = 0;
            if (comm.Rank == 1)
            {
                Thread.Sleep(400);
                arrived = clock.Elapsed.TotalSeconds;
            }
            comm.Barrier();
            return (Arrived: arrived, Left: clock.Elapsed.TotalSeconds);
        }));
        double slowest = results[1].Arrived;
        Assert.True(slowest >= 0.4, $"rank 1 arrived at {slowest:F2} s, before its 0.4 s sleep ended");
        foreach (var (_, left) in results) Assert.True(left >= slowest, $"a rank left the barrier at {left:F3} s, before rank 1 arrived at {slowest:F3} s");
    }

    [Fact]
    public void OneRankNeedsNoSockets()
    {
        using var comm = SocketCommunicator.Connect(DistributedConfig.Single);
        var be = CpuBackend.F32();
        var t = be.Upload(new float[] { 1, 2, 3 }, 3);
        comm.AllReduce([t], ReduceOp.Average);
        comm.Barrier();
        Assert.Equal(new float[] { 1, 2, 3 }, be.Download(t));
        Assert.Equal(0, comm.TotalBytesSent);
    }

    [Fact]
    public void APeerThatClosesItsCommunicatorFailsTheOthersAtOnce()
    {
        var options = new CommunicatorOptions { PeerTimeout = TimeSpan.FromSeconds(10) };
        var outcomes = LoopbackRanks.Run(3, options, (comm, clock) =>
        {
            if (comm.Rank == 2) return 0.0;   // leaves: Dispose says goodbye
            Thread.Sleep(100);
            var be = CpuBackend.F32();
            var start = clock.Elapsed;
            var e = Assert.Throws<DistributedException>(() => comm.AllReduce([be.Upload(new float[5], 5)], ReduceOp.Sum));
            output.WriteLine($"rank {comm.Rank}: {e.Message}");
            Assert.Equal(2, e.FailedRank);
            Assert.Contains("rank 2", e.Message);
            // A later call keeps failing with the same cause.
            Assert.Equal(2, Assert.Throws<DistributedException>(() => comm.Barrier()).FailedRank);
            return (clock.Elapsed - start).TotalSeconds;
        });
        foreach (var o in outcomes.Where(o => o.Rank != 2))
        {
            Assert.Null(o.Error);
            Assert.True(o.Result < 2, $"rank {o.Rank} took {o.Result:F2} s to notice; the goodbye should make it immediate");
        }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void AKilledPeerFailsTheOthersWithinSeconds(bool reset)
    {
        // Rank 2 is a bare socket that joins and then drops the connection as the kernel does when a process dies:
        // RST when data it never read is pending (reset), FIN otherwise.
        int port = LoopbackRanks.FreePort();
        var options = new CommunicatorOptions { PeerTimeout = TimeSpan.FromSeconds(30) };
        var killer = new Thread(() =>
        {
            using var peer = RawPeer.Join(port, rank: 2, worldSize: 3);
            Thread.Sleep(1200);   // the other ranks are inside their all-reduce by now; heartbeats have arrived unread
            if (reset) peer.LingerState = new LingerOption(true, 0);
            peer.Close();
        }) { IsBackground = true };
        killer.Start();
        var outcomes = LoopbackRanks.Run(3, options, (comm, clock) =>
        {
            var be = CpuBackend.F32();
            var e = Assert.Throws<DistributedException>(() => comm.AllReduce([be.Upload(new float[5], 5)], ReduceOp.Sum));
            output.WriteLine($"rank {comm.Rank} at {clock.Elapsed.TotalSeconds:F2} s: {e.Message}");
            Assert.Equal(2, e.FailedRank);
            return clock.Elapsed.TotalSeconds;
        }, port: port, ranks: [0, 1]);
        killer.Join();
        foreach (var o in outcomes)
        {
            Assert.Null(o.Error);
            Assert.True(o.Result < 4, $"rank {o.Rank} failed at {o.Result:F2} s; the kill was at ~1.2 s and the peer timeout is 30 s");
        }
    }

    [Fact]
    public void ASilentPeerIsDeclaredDeadAfterThePeerTimeout()
    {
        int port = LoopbackRanks.FreePort();
        var options = new CommunicatorOptions { HeartbeatInterval = TimeSpan.FromMilliseconds(100), PeerTimeout = TimeSpan.FromSeconds(1) };
        var hung = new Thread(() =>
        {
            using var peer = RawPeer.Join(port, rank: 2, worldSize: 3);
            Thread.Sleep(6000);   // joined, then never speaks again: a stopped or hung process
        }) { IsBackground = true };
        hung.Start();
        var outcomes = LoopbackRanks.Run(3, options, (comm, clock) =>
        {
            var start = clock.Elapsed;
            var e = Assert.Throws<DistributedException>(() => comm.Barrier());
            output.WriteLine($"rank {comm.Rank}: {e.Message}");
            Assert.Equal(2, e.FailedRank);
            Assert.Contains("heard nothing from rank 2", e.Message);
            return (clock.Elapsed - start).TotalSeconds;
        }, port: port, ranks: [0, 1]);
        foreach (var o in outcomes)
        {
            Assert.Null(o.Error);
            Assert.InRange(o.Result, 0.5, 3.0);   // the 1 s peer timeout counts from the hello, plus one watchdog period
        }
    }

    [Fact]
    public void ALivePeerThatNeverArrivesFailsAtTheOperationTimeout()
    {
        var options = new CommunicatorOptions { OperationTimeout = TimeSpan.FromSeconds(1) };
        var outcomes = LoopbackRanks.Run(3, options, (comm, clock) =>
        {
            if (comm.Rank == 2) Thread.Sleep(2500);   // alive (heartbeats go on) but late
            var start = clock.Elapsed;
            var e = Assert.Throws<DistributedException>(() => comm.Barrier());
            output.WriteLine($"rank {comm.Rank}: {e.Message}");
            Assert.Equal(2, e.FailedRank);
            return (clock.Elapsed - start).TotalSeconds;
        });
        foreach (var o in outcomes.Where(o => o.Rank != 2))
        {
            Assert.Null(o.Error);
            Assert.InRange(o.Result, 0.9, 2.5);
        }
        Assert.Null(outcomes.Single(o => o.Rank == 2).Error);   // the late rank learns of the failure when it arrives
    }

    [Fact]
    public void MismatchedCallsFailNamingBothCalls()
    {
        var outcomes = LoopbackRanks.Run(3, Small, (comm, _) =>
        {
            var be = CpuBackend.F32();
            var t = be.Upload(new float[8], 8);
            var e = Assert.Throws<DistributedException>(() =>
            {
                if (comm.Rank == 1) comm.Broadcast([t]);
                else comm.AllReduce([t], ReduceOp.Sum);
            });
            return e.Message;
        });
        foreach (var o in outcomes)
        {
            Assert.Null(o.Error);
            Assert.Contains("differs between ranks", o.Result);
            Assert.Contains("all-reduce (sum) of 8 fp32 values", o.Result);
            Assert.Contains("broadcast from rank 0 of 8 fp32 values", o.Result);
        }
    }

    [Fact]
    public void RendezvousReportsMissingAndMisconfiguredRanks()
    {
        var quick = new CommunicatorOptions { ConnectTimeout = TimeSpan.FromSeconds(1) };
        var missing = LoopbackRanks.Run(3, quick, (_, _) => 0, ranks: [0, 1]);
        var hostError = Assert.IsType<DistributedException>(missing[0].Error);
        Assert.Contains("rank(s) 2 of 3 did not connect", hostError.Message);
        Assert.Equal(2, hostError.FailedRank);
        Assert.Contains("did not connect", Assert.IsType<DistributedException>(missing[1].Error).Message);

        int port = LoopbackRanks.FreePort();
        var outcomes = new Exception?[2];
        var host = new Thread(() => outcomes[0] = Record(() => SocketCommunicator.Connect(LoopbackRanks.Config(0, 2, port), quick)));
        host.Start();
        outcomes[1] = Record(() => SocketCommunicator.Connect(LoopbackRanks.Config(1, 3, port), quick));
        host.Join();
        Assert.Contains("WORLD_SIZE=3, rank 0 with 2", Assert.IsType<DistributedException>(outcomes[0]).Message);
        Assert.Contains("WORLD_SIZE=3, rank 0 with 2", Assert.IsType<DistributedException>(outcomes[1]).Message);

        var remote = Assert.Throws<MetaLoraNative.Engine.InputException>(() => SocketCommunicator.Connect(LoopbackRanks.Config(1, 2, port) with { MasterAddr = "10.0.0.2" }));
        Assert.Contains("MASTER_ADDR=10.0.0.2", remote.Message);
    }

    [Fact]
    public void CudaOrMixedTensorsAreRefusedBeforeAnythingIsSent()
    {
        using var comm = SocketCommunicator.Connect(DistributedConfig.Single);
        var e = Assert.Throws<ArgumentException>(() => comm.AllReduce([CpuBackend.F32().Zeros(2), CpuBackend.F64().Zeros(2)], ReduceOp.Sum));
        Assert.Contains("tensor 1 is cpu-f64", e.Message);
    }

    static Exception? Record(Func<IDisposable> connect)
    {
        try { connect().Dispose(); return null; }
        catch (Exception e) { return e; }
    }
}

/// <summary>
/// A bare TCP peer that joins a rendezvous by the documented wire format (docs/DISTRIBUTED.md) and then does nothing:
/// no heartbeats, no collectives. It stands in for a process that hangs or is killed.
/// </summary>
static class RawPeer
{
    public static Socket Join(int port, int rank, int worldSize)
    {
        var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        var sw = Stopwatch.StartNew();
        while (true)
        {
            try { s.Connect(new IPEndPoint(IPAddress.Loopback, port)); break; }
            catch (SocketException) when (sw.Elapsed < TimeSpan.FromSeconds(10)) { Thread.Sleep(50); }
        }
        var frame = new byte[24 + 16];
        frame[0] = 1;                                                            // Hello
        BinaryPrimitives.WriteInt32LittleEndian(frame.AsSpan(4), rank);
        BinaryPrimitives.WriteInt64LittleEndian(frame.AsSpan(16), 16);           // body length
        BinaryPrimitives.WriteUInt32LittleEndian(frame.AsSpan(24), 0x4E524C4D);  // "MLRN"
        BinaryPrimitives.WriteInt32LittleEndian(frame.AsSpan(28), 1);            // protocol version
        BinaryPrimitives.WriteInt32LittleEndian(frame.AsSpan(32), rank);
        BinaryPrimitives.WriteInt32LittleEndian(frame.AsSpan(36), worldSize);
        s.Send(frame);
        var welcome = new byte[24];
        for (int got = 0; got < 24;) got += s.Receive(welcome, got, 24 - got, SocketFlags.None);
        Assert.Equal(2, welcome[0]);   // Welcome: everyone has joined
        return s;
    }
}
