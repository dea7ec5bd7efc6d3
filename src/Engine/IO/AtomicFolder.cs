namespace MetaLoraNative.Engine.IO;

/// <summary>
/// Writes an output folder so that a failure (a full disk, a crash, a bad input half-way) leaves no partial output:
/// everything is built in "TARGET.partial-PID" beside it. When TARGET does not exist (or is empty) the finished folder
/// is renamed into place in one step. When TARGET already holds files (a rerun adds to or refreshes it), the new
/// files are moved in one by one, each rename atomic and overwriting its old version, so a reader sees every file
/// either old or complete, and files of TARGET the build did not write stay as they were. On failure the partial
/// folder is deleted and TARGET is untouched; a failing write names TARGET, never the partial folder.
/// </summary>
public static class AtomicFolder
{
    public static void Write(string target, Action<string> build)
    {
        ArgumentException.ThrowIfNullOrEmpty(target);
        string full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(target));
        string partial = $"{full}.partial-{Environment.ProcessId}";
        try
        {
            if (Directory.Exists(partial)) Directory.Delete(partial, recursive: true);   // our own, from an earlier failure
            Directory.CreateDirectory(partial);
            build(partial);
            if (Directory.Exists(full) && !Directory.EnumerateFileSystemEntries(full).Any()) Directory.Delete(full);
            if (!Directory.Exists(full)) Directory.Move(partial, full);
            else
            {
                MoveInto(partial, full);
                Directory.Delete(partial, recursive: true);
            }
        }
        catch (Exception e)
        {
            try { if (Directory.Exists(partial)) Directory.Delete(partial, recursive: true); }
            catch (IOException) { }                  // best effort: the original exception is what matters
            catch (UnauthorizedAccessException) { }
            if (OutputPath.WriteFailure(target, partial, e) is { } named) throw named;
            throw;
        }
    }

    static void MoveInto(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (string file in Directory.GetFiles(from)) File.Move(file, Path.Combine(to, Path.GetFileName(file)), overwrite: true);
        foreach (string dir in Directory.GetDirectories(from)) MoveInto(dir, Path.Combine(to, Path.GetFileName(dir)));
    }
}
