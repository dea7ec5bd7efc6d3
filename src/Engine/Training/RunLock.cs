using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace MetaLoraNative.Engine.Training;

/// <summary>
/// A run's claim on its outputs: "OUT.lock", created exclusively (O_EXCL: FileMode.CreateNew) and held open for the
/// whole run, holding "pid host start-time" on one line. A second run on the same --out finds the file and is refused
/// with the holder's pid and host; a lock whose process is gone (same host, pid not running) is stale and taken over
/// with a warning. Once the lock is held, leftovers of a dead run next to the outputs are removed: only temporary files
/// of the atomic writers ("FILE.tmp-" + 12 hex digits, <see cref="IO.SafetensorsWriter"/>) of exactly the files this
/// run writes. Dispose releases the lock (deletes the file).
/// </summary>
public sealed partial class RunLock : IDisposable
{
    readonly FileStream stream;

    RunLock(string path, FileStream stream) => (Path, this.stream) = (path, stream);

    /// <summary>The lock file.</summary>
    public string Path { get; }

    /// <summary>
    /// Takes the lock on <paramref name="output"/> (throws <see cref="InputException"/> naming the other run when a
    /// live one holds it), then deletes stale temporary files of <paramref name="output"/> and of <paramref name="written"/>.
    /// </summary>
    public static RunLock Acquire(string output, IEnumerable<string> written, Action<string> log)
    {
        string path = System.IO.Path.GetFullPath(output) + ".lock";
        Directory.CreateDirectory(System.IO.Path.GetDirectoryName(path)!);   // the outputs' folder, as the writers would make it
        var held = TryCreate(path);
        if (held == null)
        {
            string holder = ReadHolder(path);
            if (!IsStale(holder))
                throw new InputException(output, $"another run holds {path} ({Describe(holder)}); wait for it to finish, " +
                                                 "or delete the lock file if that process is gone");
            log($"warning: taking over the stale lock {path} of a run that is gone ({Describe(holder)})");
            File.Delete(path);
            held = TryCreate(path) ?? throw new InputException(output, $"another run took {path} at the same moment ({Describe(ReadHolder(path))})");
        }
        var me = new RunLock(path, held);
        foreach (string file in written.Prepend(output).Select(System.IO.Path.GetFullPath).Distinct())
            me.RemoveStaleTemporaries(file, log);
        return me;
    }

    /// <summary>The pid, host and start time written into a lock file.</summary>
    public static string Describe(int pid, string host, DateTime startUtc) =>
        string.Create(CultureInfo.InvariantCulture, $"{pid} {host} {startUtc:yyyy-MM-ddTHH:mm:ssZ}");

    static FileStream? TryCreate(string path)
    {
        FileStream s;
        try { s = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.Read | FileShare.Delete); }
        catch (IOException) when (File.Exists(path)) { return null; }
        s.Write(Encoding.UTF8.GetBytes(Describe(Environment.ProcessId, Environment.MachineName, DateTime.UtcNow) + "\n"));
        s.Flush(flushToDisk: true);
        return s;
    }

    static string ReadHolder(string path)
    {
        try
        {
            using var s = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            using var r = new StreamReader(s);
            return r.ReadToEnd().Trim();
        }
        catch (FileNotFoundException) { return ""; }
    }

    static string Describe(string holder) =>
        Holder().Match(holder) is { Success: true } m ? $"pid {m.Groups[1].Value} on {m.Groups[2].Value}, started {m.Groups[3].Value}"
                                                      : $"unreadable holder '{holder}'";

    /// <summary>Stale: written on this host by a process that is no longer running. A lock of another host is never stale.</summary>
    static bool IsStale(string holder)
    {
        var m = Holder().Match(holder);
        if (!m.Success || m.Groups[2].Value != Environment.MachineName) return false;
        int pid = int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
        try
        {
            using var p = Process.GetProcessById(pid);
            return p.HasExited;
        }
        catch (ArgumentException) { return true; }   // no process with that id
    }

    void RemoveStaleTemporaries(string file, Action<string> log)
    {
        string? folder = System.IO.Path.GetDirectoryName(file);
        if (folder == null || !Directory.Exists(folder)) return;
        string name = System.IO.Path.GetFileName(file);
        foreach (string tmp in Directory.EnumerateFiles(folder, name + ".tmp-*"))
        {
            if (!Temporary().IsMatch(System.IO.Path.GetFileName(tmp)[name.Length..])) continue;
            File.Delete(tmp);
            log($"removed {tmp}, left by an interrupted run");
        }
    }

    public void Dispose()
    {
        stream.Dispose();
        File.Delete(Path);
    }

    [GeneratedRegex(@"^(\d+) (\S+) (\S+)$")]
    private static partial Regex Holder();

    [GeneratedRegex(@"^\.tmp-[0-9a-f]{12}$")]
    private static partial Regex Temporary();
}
