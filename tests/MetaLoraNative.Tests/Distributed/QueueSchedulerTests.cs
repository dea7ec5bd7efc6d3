using System.Diagnostics;
using MetaLoraNative.Engine.Distributed;
using MetaLoraNative.Tests.Testing;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Distributed;

/// <summary>The queue's scheduler with /bin/sh jobs standing in for metalora's: slots, logs, a dying worker, cancel.</summary>
[Collection("distributed")]
public sealed class QueueSchedulerTests(ITestOutputHelper output) : TempFolderTest("queue-scheduler")
{
    QueueJob Shell(int line, string script) => new(line, $"p{line}", "/bin/sh", ["-c", script], Path.Combine(dir, $"p{line}", "run.log"));

    [Fact]
    public void EverySlotTakesTheNextJobAndAWorkerThatDiesTakesOnlyItsOwnJob()
    {
        var lines = new List<string>();
        var jobs = new[]
        {
            Shell(1, "echo \"gpu=$CUDA_VISIBLE_DEVICES\"; sleep 0.3"),
            Shell(2, "echo started; kill -9 $$"),                                    // dies without an error line
            Shell(3, "echo 'error: photo x.png: not an image' >&2; exit 2"),         // fails with one
            Shell(4, "echo \"gpu=$CUDA_VISIBLE_DEVICES\""),
            Shell(5, "echo \"gpu=$CUDA_VISIBLE_DEVICES\""),
        };
        var outcomes = QueueScheduler.Run(jobs, [QueueSlot.Gpu(3), QueueSlot.Gpu(7)], lines.Add);
        lines.ForEach(output.WriteLine);

        Assert.Equal([1, 2, 3, 4, 5], outcomes.Select(o => o.Job.Line).Order());
        var by = outcomes.ToDictionary(o => o.Job.Line);
        Assert.All(new[] { 1, 4, 5 }, l => Assert.Equal(QueueStatus.Done, by[l].Status));
        Assert.Equal(QueueStatus.Failed, by[2].Status);
        Assert.Equal(137, by[2].ExitCode);
        Assert.Equal("the worker exited with code 137 without an error line (crashed or killed)", by[2].Error);
        Assert.Equal((QueueStatus.Failed, 2, "error: photo x.png: not an image"), (by[3].Status, by[3].ExitCode, by[3].Error));
        // each job's log holds its own output and the slot's GPU; both slots were used
        foreach (int l in new[] { 1, 4, 5 })
        {
            string gpu = by[l].Slot["GPU ".Length..];
            Assert.Contains($"gpu={gpu}", File.ReadAllText(jobs[l - 1].LogPath));
        }
        Assert.Equal(["GPU 3", "GPU 7"], outcomes.Select(o => o.Slot).Distinct().Order());
        Assert.Contains("error: photo x.png: not an image", File.ReadAllText(jobs[2].LogPath));
        Assert.EndsWith("# exit code 137 after", File.ReadAllLines(jobs[1].LogPath)[^1][..21]);
        // one start and one end line per job, the end lines with the counts so far
        Assert.Equal(5, lines.Count(l => l.StartsWith("start  line ", StringComparison.Ordinal)));
        Assert.Equal(3, lines.Count(l => l.StartsWith("done   line ", StringComparison.Ordinal)));
        Assert.Equal(2, lines.Count(l => l.StartsWith("FAILED line ", StringComparison.Ordinal)));
        Assert.Matches(@"^(done  |FAILED) line \d .+: 3 done, 2 failed, 0 left; elapsed \d+:\d\d, ETA 0:00", lines[^1]);
    }

    [Fact]
    public void CancelStopsTheRunningWorkersAndStartsNoOther()
    {
        using var cancel = new CancellationTokenSource();
        var jobs = new[] { Shell(1, "sleep 60"), Shell(2, "sleep 60") };
        var clock = Stopwatch.StartNew();
        cancel.CancelAfter(TimeSpan.FromMilliseconds(500));
        var lines = new List<string>();
        var outcomes = QueueScheduler.Run(jobs, [QueueSlot.Cpu(0)], lines.Add, cancel.Token);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(20), $"took {clock.Elapsed.TotalSeconds:F1} s");
        var o = Assert.Single(outcomes);
        Assert.Equal((1, QueueStatus.Cancelled), (o.Job.Line, o.Status));
        Assert.Contains("cancelled: 1 job(s) not started", lines);
        Assert.False(Directory.Exists(Path.Combine(dir, "p2")));
    }
}
