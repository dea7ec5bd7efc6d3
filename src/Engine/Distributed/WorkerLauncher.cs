using System.ComponentModel;
using System.Diagnostics;
using System.Globalization;

namespace MetaLoraNative.Engine.Distributed;

/// <summary>How a worker is told its GPU.</summary>
public enum DeviceAssignment
{
    /// <summary>CUDA_VISIBLE_DEVICES=&lt;id&gt;: the worker sees only its GPU, as device 0 (NCCL and the driver agree on it).</summary>
    VisibleDevices,
    /// <summary>METALORA_DEVICE=&lt;id&gt;: every GPU stays visible and the worker opens that ordinal.</summary>
    DeviceIndex,
}

/// <summary>What to start: the same command once per GPU.</summary>
/// <param name="FileName">The executable (see <see cref="WorkerLauncher.CurrentExecutable"/>).</param>
/// <param name="Arguments">Its arguments, the same for every worker; the rank comes through the environment.</param>
/// <param name="GpuIds">One worker per id, rank i on GpuIds[i].</param>
/// <param name="MasterPort">Rank 0's rendezvous port; 0 picks a free one.</param>
/// <param name="StopGrace">After a worker fails, how long the others get to exit by themselves (their communicators
/// fail within seconds) before they are killed.</param>
public sealed record WorkerLaunch(string FileName, IReadOnlyList<string> Arguments, IReadOnlyList<int> GpuIds,
    DeviceAssignment Assignment = DeviceAssignment.VisibleDevices, int MasterPort = 0, TimeSpan? StopGrace = null)
{
    public TimeSpan Grace => StopGrace ?? TimeSpan.FromSeconds(5);
}

/// <summary>How a launch ended.</summary>
/// <param name="ExitCode">0 when every worker succeeded; otherwise the first failed worker's exit code.</param>
/// <param name="FailedRank">The first worker to fail, or null.</param>
/// <param name="Message">One line for the user.</param>
public sealed record WorkerResult(int ExitCode, int? FailedRank, string Message);

/// <summary>
/// Starts one worker process per GPU with the torchrun variables set (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
/// MASTER_PORT, and CUDA_VISIBLE_DEVICES or METALORA_DEVICE), prefixes every output line with "[rank N]", and when a
/// worker exits non-zero stops the rest and reports which rank failed with which code.
/// </summary>
public static class WorkerLauncher
{
    static readonly TimeSpan Poll = TimeSpan.FromMilliseconds(50);

    /// <summary>"0,1,2,3" → [0, 1, 2, 3]; an ArgumentException naming <paramref name="flag"/> for an empty, negative, non-numeric or repeated id.</summary>
    public static IReadOnlyList<int> ParseGpuIds(string text, string flag = "--gpus")
    {
        if (string.IsNullOrWhiteSpace(text)) throw new InputException(flag, $"{flag} is empty; give GPU ids such as 0,1,2,3");
        var ids = new List<int>();
        string[] items = text.Split(',');
        for (int i = 0; i < items.Length; i++)
        {
            string item = items[i].Trim();
            if (item.Length == 0) throw new InputException(flag, $"{flag} '{text}': item {i + 1} is empty");
            if (!int.TryParse(item, NumberStyles.None, CultureInfo.InvariantCulture, out int id))
                throw new InputException(flag, $"{flag} '{text}': '{item}' is not a GPU id (a number ≥ 0)");
            if (ids.Contains(id)) throw new InputException(flag, $"{flag} '{text}': GPU {id} is listed twice");
            ids.Add(id);
        }
        return ids;
    }

    /// <summary>
    /// This program, to start again as a worker: the apphost itself, or `dotnet metalora.dll` when it was run that way.
    /// </summary>
    public static (string FileName, IReadOnlyList<string> Arguments) CurrentExecutable(IEnumerable<string> arguments)
    {
        string host = Environment.ProcessPath ?? throw new InvalidOperationException("the path of the running executable is unknown");
        bool viaDotnet = Path.GetFileNameWithoutExtension(host).Equals("dotnet", StringComparison.OrdinalIgnoreCase);
        return viaDotnet ? (host, [Environment.GetCommandLineArgs()[0], .. arguments]) : (host, arguments.ToArray());
    }

    /// <summary>The environment of worker <paramref name="rank"/> (what <see cref="DistributedConfig.Parse"/> reads back).</summary>
    public static DistributedConfig WorkerConfig(WorkerLaunch launch, int rank, int port)
    {
        int gpu = launch.GpuIds[rank];
        return new DistributedConfig(rank, launch.GpuIds.Count, rank, "127.0.0.1", port,
            Device: launch.Assignment == DeviceAssignment.DeviceIndex ? gpu : null,
            VisibleDevices: launch.Assignment == DeviceAssignment.VisibleDevices ? gpu.ToString(CultureInfo.InvariantCulture) : null);
    }

    /// <summary>
    /// Runs the workers to the end. <paramref name="output"/> receives every line of every worker (stdout and stderr)
    /// prefixed with its rank, one call at a time. Cancelling kills every worker.
    /// </summary>
    public static WorkerResult Run(WorkerLaunch launch, Action<string> output, CancellationToken cancel = default)
    {
        if (launch.GpuIds.Count == 0) throw new ArgumentException("a launch needs at least one GPU id");
        int port = launch.MasterPort != 0 ? launch.MasterPort : FreePort();
        var gate = new object();
        var workers = new List<Process>();
        try
        {
            for (int rank = 0; rank < launch.GpuIds.Count; rank++) workers.Add(Start(launch, rank, port, Line));
            return Supervise(workers, launch.Grace, cancel);
        }
        finally
        {
            foreach (var p in workers) Stop(p);
            foreach (var p in workers) p.Dispose();
        }

        void Line(int rank, string? text)
        {
            if (text == null) return;
            lock (gate) output($"[rank {rank}] {text}");
        }
    }

    static Process Start(WorkerLaunch launch, int rank, int port, Action<int, string?> line)
    {
        try { return StartProcess(launch.FileName, launch.Arguments, WorkerConfig(launch, rank, port).ToEnvironment(), text => line(rank, text)); }
        catch (Win32Exception e) { throw new InvalidOperationException($"cannot start worker rank {rank} ({launch.FileName}): {e.Message}", e); }
    }

    /// <summary>
    /// Starts one worker process with <paramref name="environment"/> added to this one's; every line of its stdout and
    /// stderr goes to <paramref name="line"/> (null at the end of each stream). The queue (<see cref="QueueScheduler"/>)
    /// starts its workers here too. A Win32Exception when the file cannot be started.
    /// </summary>
    public static Process StartProcess(string fileName, IReadOnlyList<string> arguments, IReadOnlyDictionary<string, string> environment,
                                       Action<string?> line)
    {
        var info = new ProcessStartInfo(fileName)
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (string a in arguments) info.ArgumentList.Add(a);
        foreach (var (k, v) in environment) info.Environment[k] = v;
        var p = new Process { StartInfo = info };
        p.OutputDataReceived += (_, e) => line(e.Data);
        p.ErrorDataReceived += (_, e) => line(e.Data);
        try { p.Start(); }
        catch
        {
            p.Dispose();
            throw;
        }
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        return p;
    }

    static WorkerResult Supervise(List<Process> workers, TimeSpan grace, CancellationToken cancel)
    {
        while (true)
        {
            if (cancel.WaitHandle.WaitOne(Poll))
                return new WorkerResult(130, null, $"cancelled; stopped {workers.Count} worker(s)");
            var failed = workers.Select((p, rank) => (p, rank)).Where(w => w.p.HasExited && w.p.ExitCode != 0)
                                .OrderBy(w => w.p.ExitTime).FirstOrDefault();
            if (failed.p != null) return StopAfterFailure(workers, failed.rank, failed.p.ExitCode, grace);
            if (workers.All(p => p.HasExited))
            {
                foreach (var p in workers) p.WaitForExit();   // drains the output handlers
                return new WorkerResult(0, null, $"all {workers.Count} worker(s) finished");
            }
        }
    }

    /// <summary>Gives the others <paramref name="grace"/> to exit on their own, then kills the rest; the message names the failed rank.</summary>
    static WorkerResult StopAfterFailure(List<Process> workers, int failedRank, int code, TimeSpan grace)
    {
        var start = Stopwatch.GetTimestamp();
        while (workers.Any(p => !p.HasExited) && Stopwatch.GetElapsedTime(start) < grace) Thread.Sleep(Poll);
        var killed = Enumerable.Range(0, workers.Count).Where(r => !workers[r].HasExited).ToArray();
        foreach (int r in killed) Stop(workers[r]);
        foreach (var p in workers) p.WaitForExit();
        var others = Enumerable.Range(0, workers.Count).Where(r => r != failedRank && !killed.Contains(r))
                               .Select(r => $"rank {r} exited with {workers[r].ExitCode}").ToArray();
        string message = $"rank {failedRank} failed with exit code {code}"
                         + (killed.Length > 0 ? $"; stopped rank(s) {string.Join(", ", killed)}" : "")
                         + (others.Length > 0 ? $"; {string.Join(", ", others)}" : "");
        return new WorkerResult(code, failedRank, message);
    }

    /// <summary>Kills a worker and its process tree unless it has exited.</summary>
    public static void Stop(Process p)
    {
        try
        {
            if (!p.HasExited) p.Kill(entireProcessTree: true);
        }
        catch (Exception e) when (e is InvalidOperationException or Win32Exception) { }   // it exited meanwhile
    }

    /// <summary>A loopback port nobody listens on right now (the OS picks it), for a rendezvous.</summary>
    public static int FreePort()
    {
        using var l = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        l.Start();
        return ((System.Net.IPEndPoint)l.LocalEndpoint).Port;
    }
}
