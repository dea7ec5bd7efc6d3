using MetaLoraNative.Engine;
using System.Diagnostics;
using MetaLoraNative.Engine.Distributed;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Distributed;

/// <summary>The launcher with /bin/sh workers standing in for metalora processes.</summary>
[Collection("distributed")]
public class WorkerLauncherTests(ITestOutputHelper output)
{
    static WorkerLaunch Shell(string script, string gpus, DeviceAssignment assignment = DeviceAssignment.VisibleDevices, TimeSpan? grace = null) =>
        new("/bin/sh", ["-c", script], WorkerLauncher.ParseGpuIds(gpus), assignment, StopGrace: grace);

    [Fact]
    public void EachWorkerGetsItsRankAndGpuAndItsLinesArePrefixed()
    {
        var lines = new List<string>();
        var result = WorkerLauncher.Run(
            Shell("echo \"RANK=$RANK WORLD_SIZE=$WORLD_SIZE LOCAL_RANK=$LOCAL_RANK MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT " +
                  "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES\"; echo oops >&2", "4,5,6"), lines.Add);
        foreach (var l in lines) output.WriteLine(l);
        Assert.Equal(0, result.ExitCode);
        Assert.Null(result.FailedRank);
        Assert.Equal(6, lines.Count);
        var configs = new DistributedConfig[3];
        for (int r = 0; r < 3; r++)
        {
            string line = lines.Single(l => l.StartsWith($"[rank {r}] RANK=", StringComparison.Ordinal));
            var env = line[$"[rank {r}] ".Length..].Split(' ').Select(kv => kv.Split('=', 2)).ToDictionary(kv => kv[0], kv => kv[1]);
            configs[r] = DistributedConfig.Parse(env.GetValueOrDefault)!;
            Assert.Contains($"[rank {r}] oops", lines);
        }
        Assert.Equal([0, 1, 2], configs.Select(c => c.Rank));
        Assert.All(configs, c => Assert.Equal(3, c.WorldSize));
        Assert.Equal(["4", "5", "6"], configs.Select(c => c.VisibleDevices));
        Assert.All(configs, c => Assert.Equal(0, c.DeviceOrdinal));   // each sees only its own GPU
        Assert.Single(configs.Select(c => c.MasterPort).Distinct());
    }

    [Fact]
    public void DeviceIndexModeKeepsEveryGpuVisible()
    {
        var lines = new List<string>();
        var result = WorkerLauncher.Run(Shell("echo \"$METALORA_DEVICE ${CUDA_VISIBLE_DEVICES-unset}\"", "2,0", DeviceAssignment.DeviceIndex), lines.Add);
        Assert.Equal(0, result.ExitCode);
        Assert.Contains("[rank 0] 2 unset", lines);
        Assert.Contains("[rank 1] 0 unset", lines);
    }

    [Fact]
    public void AFailingWorkerStopsTheOthersAndIsNamed()
    {
        var clock = Stopwatch.StartNew();
        var lines = new List<string>();
        var result = WorkerLauncher.Run(
            Shell("if [ \"$RANK\" = 2 ]; then sleep 0.3; echo giving up; exit 3; fi; echo working; sleep 60", "0,1,2,3",
                  grace: TimeSpan.FromSeconds(1)), lines.Add);
        double seconds = clock.Elapsed.TotalSeconds;
        output.WriteLine($"{result.Message} after {seconds:F2} s");
        Assert.Equal(3, result.ExitCode);
        Assert.Equal(2, result.FailedRank);
        Assert.Contains("rank 2 failed with exit code 3", result.Message);
        Assert.Contains("stopped rank(s) 0, 1, 3", result.Message);
        Assert.Contains("[rank 2] giving up", lines);
        Assert.True(seconds < 10, $"the others were stopped only after {seconds:F1} s (grace 1 s; they sleep 60 s)");
    }

    [Fact]
    public void ARunWhoseOthersExitByThemselvesDuringTheGraceSaysSo()
    {
        var result = WorkerLauncher.Run(Shell("if [ \"$RANK\" = 0 ]; then exit 7; fi; sleep 0.5; exit 1", "0,1", grace: TimeSpan.FromSeconds(20)),
                                        _ => { });
        Assert.Equal(0, result.FailedRank);
        Assert.Equal(7, result.ExitCode);
        Assert.Contains("rank 1 exited with 1", result.Message);
        Assert.DoesNotContain("stopped", result.Message);
    }

    [Fact]
    public void CancellingKillsEveryWorker()
    {
        using var cancel = new CancellationTokenSource(TimeSpan.FromMilliseconds(300));
        var clock = Stopwatch.StartNew();
        var result = WorkerLauncher.Run(Shell("sleep 60", "0,1"), _ => { }, cancel.Token);
        Assert.Equal(130, result.ExitCode);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10));
    }

    [Theory]
    [InlineData("", "--gpus is empty")]
    [InlineData("0,,1", "item 2 is empty")]
    [InlineData("0,a", "'a' is not a GPU id")]
    [InlineData("-1", "'-1' is not a GPU id")]
    [InlineData("1,0,1", "GPU 1 is listed twice")]
    public void GpuListErrorsNameTheFlag(string text, string message)
    {
        var e = Assert.Throws<InputException>(() => WorkerLauncher.ParseGpuIds(text));
        Assert.Contains(message, e.Message);
        Assert.Contains("--gpus", e.Message);
    }

    [Fact]
    public void GpuListsParseInOrder() => Assert.Equal([3, 0, 2], WorkerLauncher.ParseGpuIds(" 3, 0,2 "));

    [Fact]
    public void TheCurrentExecutableRestartsThisProgram()
    {
        var (file, args) = WorkerLauncher.CurrentExecutable(["train", "stage1"]);
        Assert.True(File.Exists(file), file);
        Assert.Equal(["train", "stage1"], args.TakeLast(2));
        if (Path.GetFileNameWithoutExtension(file) == "dotnet") Assert.EndsWith(".dll", args[0]);   // `dotnet metalora.dll ...`
    }

    [Fact]
    public void AMissingExecutableIsNamed()
    {
        var e = Assert.Throws<InvalidOperationException>(() =>
            WorkerLauncher.Run(new WorkerLaunch("/nonexistent/metalora", [], [0, 1]), _ => { }));
        Assert.Contains("/nonexistent/metalora", e.Message);
        Assert.Contains("rank 0", e.Message);
    }
}
