using System.Diagnostics;
using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Training;
using MetaLoraNative.Tests.Testing;

namespace MetaLoraNative.Tests.Training;

/// <summary>The lock on a run's --out: a live holder refuses a second run, a dead one's lock and temporaries are cleaned up.</summary>
public sealed class RunLockTests() : TempFolderTest("lock")
{
    static int DeadPid()
    {
        using var p = Process.Start(new ProcessStartInfo("true") { UseShellExecute = false })!;
        p.WaitForExit();
        return p.Id;
    }

    [Fact]
    public void ASecondRunOnTheSameOutIsRefusedNamingTheHoldersPid()
    {
        string output = Path.Combine(dir, "me.safetensors");
        using (var held = RunLock.Acquire(output, [], _ => { }))
        {
            Assert.Equal(output + ".lock", held.Path);
            var e = Assert.Throws<InputException>(() => RunLock.Acquire(output, [], _ => { }));
            Assert.Equal(output, e.Subject);
            Assert.Contains($"pid {Environment.ProcessId} on {Environment.MachineName}", e.Message);
        }
        Assert.False(File.Exists(output + ".lock"));
        using (RunLock.Acquire(output, [], _ => { })) Assert.True(File.Exists(output + ".lock"));
    }

    [Fact]
    public void TheLockOfADeadRunIsTakenOverWithAWarning()
    {
        string output = Path.Combine(dir, "me.safetensors");
        int dead = DeadPid();
        File.WriteAllText(output + ".lock", RunLock.Describe(dead, Environment.MachineName, DateTime.UtcNow) + "\n");
        var log = new List<string>();
        using (RunLock.Acquire(output, [], log.Add))
        {
            Assert.Contains(log, l => l.StartsWith("warning:", StringComparison.Ordinal) && l.Contains($"pid {dead}"));
            Assert.StartsWith($"{Environment.ProcessId} ", File.ReadAllText(output + ".lock"));
        }
        // a lock written on another host cannot be checked and is never taken over
        File.WriteAllText(output + ".lock", RunLock.Describe(dead, "some-other-host", DateTime.UtcNow) + "\n");
        Assert.Contains("some-other-host", Assert.Throws<InputException>(() => RunLock.Acquire(output, [], _ => { })).Message);
    }

    [Fact]
    public void StaleTemporariesOfTheRunsOwnFilesAreRemovedAndNothingElse()
    {
        string output = Path.Combine(dir, "me.safetensors"), state = Path.Combine(dir, "me.state.safetensors");
        string[] stale = [output + ".tmp-0123456789ab", state + ".tmp-fedcba987654"];
        string[] kept = [output + ".tmp-notours", Path.Combine(dir, "other.safetensors.tmp-0123456789ab"), output + ".tmp-0123456789abc", state];
        foreach (var f in stale.Concat(kept)) File.WriteAllText(f, "x");
        var log = new List<string>();
        using (RunLock.Acquire(output, [state], log.Add))
        {
            foreach (var f in stale) Assert.False(File.Exists(f), f);
            foreach (var f in kept) Assert.True(File.Exists(f), f);
            Assert.Equal(2, log.Count(l => l.StartsWith("removed ", StringComparison.Ordinal)));
        }
    }
}
