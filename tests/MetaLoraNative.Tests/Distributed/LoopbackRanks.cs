using System.Diagnostics;
using MetaLoraNative.Engine.Distributed;

namespace MetaLoraNative.Tests.Distributed;

/// <summary>N ranks of one test as threads of this process, each with its own communicator over loopback.</summary>
public static class LoopbackRanks
{
    public static int FreePort() => WorkerLauncher.FreePort();

    public static DistributedConfig Config(int rank, int worldSize, int port) => new(rank, worldSize, rank, "127.0.0.1", port);

    /// <summary>One rank's outcome: its result or its exception, and when it finished (seconds from the common start).</summary>
    public sealed record Outcome<T>(int Rank, T? Result, Exception? Error, double Seconds);

    /// <summary>
    /// Runs <paramref name="body"/> for ranks in <paramref name="ranks"/> (default: all) on their own threads, each
    /// connecting first. A rank that has not finished within <paramref name="limit"/> fails the test: a hang is a bug.
    /// </summary>
    public static Outcome<T>[] Run<T>(int worldSize, CommunicatorOptions options, Func<SocketCommunicator, Stopwatch, T> body,
        TimeSpan? limit = null, int port = 0, IEnumerable<int>? ranks = null)
    {
        port = port == 0 ? FreePort() : port;
        var clock = Stopwatch.StartNew();
        var which = (ranks ?? Enumerable.Range(0, worldSize)).ToArray();
        var outcomes = new Outcome<T>?[which.Length];
        var threads = which.Select((rank, i) => new Thread(() =>
        {
            try
            {
                using var comm = SocketCommunicator.Connect(Config(rank, worldSize, port), options);
                outcomes[i] = new Outcome<T>(rank, body(comm, clock), null, clock.Elapsed.TotalSeconds);
            }
            catch (Exception e)
            {
                outcomes[i] = new Outcome<T>(rank, default, e, clock.Elapsed.TotalSeconds);
            }
        }) { IsBackground = true, Name = $"test rank {rank}" }).ToArray();
        foreach (var t in threads) t.Start();
        var deadline = limit ?? TimeSpan.FromSeconds(60);
        foreach (var t in threads)
            Assert.True(t.Join(deadline - clock.Elapsed > TimeSpan.Zero ? deadline - clock.Elapsed : TimeSpan.Zero),
                        $"{t.Name} did not finish within {deadline.TotalSeconds} s: a collective hangs");
        return outcomes.Select(o => o!).ToArray();
    }

    /// <summary>Every rank's result, or the first rank's exception rethrown with its rank.</summary>
    public static T[] Results<T>(Outcome<T>[] outcomes)
    {
        foreach (var o in outcomes)
            if (o.Error != null) throw new Xunit.Sdk.XunitException($"rank {o.Rank} failed: {o.Error}");
        return outcomes.Select(o => o.Result!).ToArray();
    }
}
