namespace MetaLoraNative.Engine.IO;

/// <summary>
/// Output paths checked before any work, and write failures named by the user's path. Every command that writes
/// calls <see cref="CheckFile"/> or <see cref="CheckFolder"/> on each output flag at start: a real probe write (a
/// temporary file created and deleted) in the folder the output will go to, or, when that folder does not exist yet,
/// in its nearest existing ancestor (the writers create the rest). So a missing parent that cannot be made, a path
/// through a file, a read-only or full folder is one `error: --flag: PATH: ...` line before hours of training, not
/// after. The probe leaves nothing behind and creates no folder.
/// </summary>
public static class OutputPath
{
    /// <summary>A file output (<paramref name="path"/> null or empty: the flag was not given, nothing to check).</summary>
    public static void CheckFile(string? path, string flag)
    {
        if (string.IsNullOrEmpty(path)) return;
        string full = Resolve(path, flag);
        if (Directory.Exists(full)) throw new InputException(flag, $"{path}: is a folder; give a file name");
        Probe(Path.GetDirectoryName(full)!, path, flag);
    }

    /// <summary>A folder output: the folder itself, made by the writer when missing.</summary>
    public static void CheckFolder(string? path, string flag)
    {
        if (string.IsNullOrEmpty(path)) return;
        string full = Path.TrimEndingDirectorySeparator(Resolve(path, flag));
        if (File.Exists(full)) throw new InputException(flag, $"{path}: is a file, not a folder");
        Probe(full, path, flag);
    }

    static string Resolve(string path, string flag)
    {
        try { return Path.GetFullPath(path); }
        catch (Exception e) when (e is ArgumentException or NotSupportedException or PathTooLongException)
        {
            throw new InputException(flag, $"{path}: is not a usable path ({e.Message})");
        }
    }

    static void Probe(string folder, string path, string flag)
    {
        string existing = folder;
        while (!Directory.Exists(existing))
        {
            if (File.Exists(existing))
                throw new InputException(flag, $"{path}: cannot make its folder: '{existing}' is a file");
            existing = Path.GetDirectoryName(existing) ?? throw new InputException(flag, $"{path}: no part of its folder exists");
        }
        string probe = Path.Combine(existing, $".metalora-probe-{Environment.ProcessId}-{Guid.NewGuid():N}");
        try
        {
            // created, written and deleted on close; not synced to disk (a probe must cost nothing next to the run)
            using var s = new FileStream(probe, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1, FileOptions.DeleteOnClose);
            s.WriteByte(0);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            string where = existing == folder ? $"its folder '{existing}'" : $"'{existing}' (where its folder '{folder}' would be made)";
            string reason = e is UnauthorizedAccessException ? "permission denied" : e.Message.Replace($" '{probe}'", "", StringComparison.Ordinal).TrimEnd('.');
            throw new InputException(flag, $"{path}: cannot write in {where}: a test file could not be created ({reason})");
        }
    }

    /// <summary>
    /// The exception to throw for <paramref name="e"/>, raised while writing <paramref name="internalPath"/> (a
    /// temporary file or partial folder) on the way to <paramref name="userPath"/>: the same fault named by the user's
    /// path, an <see cref="InputException"/> when the location is wrong (no such folder, no permission) and a
    /// <see cref="RuntimeFailure"/> otherwise (a full disk, an I/O error). Null when <paramref name="e"/> is not an I/O
    /// fault of that path (a reader's own error inside the write, say), which is then rethrown as it is.
    /// </summary>
    public static Exception? WriteFailure(string userPath, string internalPath, Exception e)
    {
        if (e is not (IOException or UnauthorizedAccessException) || !e.Message.Contains(internalPath, StringComparison.Ordinal)) return null;
        string message = e.Message.Replace(internalPath, userPath, StringComparison.Ordinal);
        return e is UnauthorizedAccessException or DirectoryNotFoundException
            ? new InputException(userPath, $"cannot write: {message}", e)
            : new RuntimeFailure(userPath, $"writing failed: {message}", e);
    }
}
