using System.ComponentModel;
using System.Diagnostics;
using System.Globalization;

namespace MetaLoraNative.Engine.Distributed;

/// <summary>Where queue jobs run: one worker process at a time per slot.</summary>
/// <param name="Name">"GPU 1" or "worker 0", as the progress lines and the summary name it.</param>
/// <param name="Environment">What its workers get besides this process's environment (CUDA_VISIBLE_DEVICES=1).</param>
public sealed record QueueSlot(string Name, IReadOnlyDictionary<string, string> Environment)
{
    /// <summary>A GPU: its workers see only it, as device 0 (the launcher's default assignment).</summary>
    public static QueueSlot Gpu(int id) =>
        new($"GPU {id}", new Dictionary<string, string> { [DistributedConfig.VisibleDevicesVar] = id.ToString(CultureInfo.InvariantCulture) });

    /// <summary>A CPU worker (CI, or a machine without GPUs).</summary>
    public static QueueSlot Cpu(int index) => new($"worker {index}", new Dictionary<string, string>());
}

/// <summary>One person of the queue, as a worker process runs it.</summary>
/// <param name="Line">Its line in the queue file (1-based): the job's id in every message.</param>
/// <param name="Name">The person.</param>
/// <param name="FileName">The executable (<see cref="WorkerLauncher.CurrentExecutable"/>).</param>
/// <param name="Arguments">The command line that trains the person.</param>
/// <param name="LogPath">Every line the worker prints is appended here.</param>
/// <param name="Note">Said in the start line ("resumes from iteration 125").</param>
public sealed record QueueJob(int Line, string Name, string FileName, IReadOnlyList<string> Arguments, string LogPath, string Note = "");

public enum QueueStatus { Done, Failed, Cancelled }

/// <summary>How one job ended.</summary>
/// <param name="Error">The worker's last `error:` line, or what happened when it printed none (a crash, a kill).</param>
public sealed record QueueOutcome(QueueJob Job, string Slot, QueueStatus Status, int ExitCode, string? Error, TimeSpan Wall);

/// <summary>
/// Runs a queue of jobs on a set of slots (GPUs), one worker process per slot at a time: each slot takes the next job
/// as soon as its worker has exited, so every slot stays busy while jobs remain. A job is one process, started through
/// <see cref="WorkerLauncher.StartProcess"/>: a worker that fails or dies takes only its own job with it, and the
/// slot's next job gets a fresh process. Its output goes to the job's log file; the console gets one line per start
/// and end with the slot, the queue's elapsed time and its ETA (mean job time × jobs left / slots).
/// </summary>
public static class QueueScheduler
{
    static readonly TimeSpan Poll = TimeSpan.FromMilliseconds(50);

    sealed class Running(QueueJob job, string slot, StreamWriter log)
    {
        public readonly QueueJob Job = job;
        public readonly string Slot = slot;
        public readonly StreamWriter Log = log;
        public readonly Stopwatch Clock = Stopwatch.StartNew();
        public Process? Process;   // null when it could not start
        public string? LastError;

        public void Line(string? text)
        {
            if (text == null) return;
            lock (Log)
            {
                Log.WriteLine(text);
                if (text.StartsWith("error:", StringComparison.Ordinal)) LastError = text;
            }
        }
    }

    /// <summary>
    /// Runs every job to its end (or until <paramref name="cancel"/>, which kills the running workers) and returns
    /// the outcomes in the order the jobs finished; jobs never started (after a cancel) have none.
    /// </summary>
    public static IReadOnlyList<QueueOutcome> Run(IReadOnlyList<QueueJob> jobs, IReadOnlyList<QueueSlot> slots, Action<string> log,
                                                  CancellationToken cancel = default)
    {
        if (slots.Count == 0) throw new ArgumentException("a queue needs at least one slot");
        var pending = new Queue<QueueJob>(jobs);
        var running = new Running?[slots.Count];
        var outcomes = new List<QueueOutcome>();
        var queueClock = Stopwatch.StartNew();
        try
        {
            while (pending.Count > 0 || running.Any(r => r != null))
            {
                for (int s = 0; s < slots.Count; s++)
                {
                    if (running[s] is { Process: null or { HasExited: true } } r)
                    {
                        var o = Finish(r);
                        outcomes.Add(o);
                        running[s] = null;
                        log(o.Status == QueueStatus.Done
                            ? $"done   line {o.Job.Line} {o.Job.Name} on {o.Slot} in {Seconds(o.Wall)}: {Progress()}"
                            : $"FAILED line {o.Job.Line} {o.Job.Name} on {o.Slot} after {Seconds(o.Wall)}: {o.Error}; log {o.Job.LogPath}; {Progress()}");
                    }
                    if (running[s] != null || pending.Count == 0 || cancel.IsCancellationRequested) continue;
                    var job = pending.Dequeue();
                    running[s] = Start(job, slots[s]);
                    log($"start  line {job.Line} {job.Name} on {slots[s].Name}{(job.Note.Length > 0 ? $" ({job.Note})" : "")}: {Progress()}; log {job.LogPath}");
                }
                if (cancel.IsCancellationRequested)
                {
                    foreach (var r in running.OfType<Running>()) outcomes.Add(Cancel(r));
                    running.AsSpan().Clear();
                    log($"cancelled: {pending.Count} job(s) not started");
                    break;
                }
                cancel.WaitHandle.WaitOne(Poll);
            }
        }
        finally
        {
            foreach (var r in running.OfType<Running>().Where(r => r.Process is { HasExited: false })) WorkerLauncher.Stop(r.Process!);
        }
        return outcomes;

        // "2 done, 1 failed, 3 left; elapsed 1:05, ETA 2:10" (the mean of the finished jobs for each job left)
        string Progress()
        {
            int left = pending.Count + running.Count(r => r != null);
            var finished = outcomes.Where(o => o.Status != QueueStatus.Cancelled).ToList();
            string eta = "ETA unknown";
            if (finished.Count > 0)
            {
                double mean = finished.Average(o => o.Wall.TotalSeconds);
                double work = pending.Count * mean + running.OfType<Running>().Sum(r => Math.Max(0, mean - r.Clock.Elapsed.TotalSeconds));
                eta = $"ETA {Clock(TimeSpan.FromSeconds(work / slots.Count))}";
            }
            return $"{finished.Count(o => o.Status == QueueStatus.Done)} done, {finished.Count(o => o.Status == QueueStatus.Failed)} failed, " +
                   $"{left} left; elapsed {Clock(queueClock.Elapsed)}, {eta}";
        }
    }

    static Running Start(QueueJob job, QueueSlot where)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(job.LogPath))!);
        var writer = new StreamWriter(job.LogPath, append: true) { AutoFlush = true };
        writer.WriteLine($"# {DateTime.UtcNow:yyyy-MM-ddTHH:mm:ssZ} queue line {job.Line} ({job.Name}) on {where.Name}: {job.FileName} {string.Join(' ', job.Arguments)}");
        var r = new Running(job, where.Name, writer);
        try { r.Process = WorkerLauncher.StartProcess(job.FileName, job.Arguments, where.Environment, r.Line); }
        catch (Exception e) when (e is Win32Exception or InvalidOperationException)
        {
            r.Line($"error: cannot start the worker ({job.FileName}): {e.Message}");
        }
        return r;
    }

    static QueueOutcome Finish(Running r)
    {
        int code = -1;
        if (r.Process != null)
        {
            r.Process.WaitForExit();   // drains the output handlers
            code = r.Process.ExitCode;
            r.Process.Dispose();
        }
        var wall = r.Clock.Elapsed;
        string? error = code == 0 ? null : r.LastError ?? $"the worker exited with code {code} without an error line (crashed or killed)";
        Close(r, $"# exit code {code} after {Seconds(wall)}");
        return new QueueOutcome(r.Job, r.Slot, code == 0 ? QueueStatus.Done : QueueStatus.Failed, code, error, wall);
    }

    static QueueOutcome Cancel(Running r)
    {
        if (r.Process != null)
        {
            WorkerLauncher.Stop(r.Process);
            r.Process.WaitForExit();
            r.Process.Dispose();
        }
        Close(r, "# cancelled");
        return new QueueOutcome(r.Job, r.Slot, QueueStatus.Cancelled, 130, "cancelled", r.Clock.Elapsed);
    }

    static void Close(Running r, string last)
    {
        lock (r.Log)
        {
            r.Log.WriteLine(last);
            r.Log.Dispose();
        }
    }

    /// <summary>"12.3 s".</summary>
    public static string Seconds(TimeSpan t) => t.TotalSeconds.ToString("F1", CultureInfo.InvariantCulture) + " s";

    /// <summary>"1:05" or "2:01:05".</summary>
    public static string Clock(TimeSpan t) =>
        t.TotalHours >= 1 ? $"{(int)t.TotalHours}:{t.Minutes:D2}:{t.Seconds:D2}" : $"{(int)t.TotalMinutes}:{t.Seconds:D2}";
}
