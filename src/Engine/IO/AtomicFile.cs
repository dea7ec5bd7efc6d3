using System.Security.Cryptography;

namespace MetaLoraNative.Engine.IO;

/// <summary>
/// Writes any file the way <see cref="SafetensorsWriter"/> writes safetensors: to "PATH.tmp-XXXXXXXXXXXX" in the same
/// folder, flushed to disk, then renamed over PATH, so a reader (or a crash) sees the old file or the whole new one.
/// On failure the temporary file is deleted and PATH is untouched. A failing write names PATH, never the temporary
/// file (<see cref="OutputPath.WriteFailure"/>).
/// </summary>
public static class AtomicFile
{
    /// <summary>
    /// The temporary file is created before <paramref name="write"/> runs, so an unwritable folder fails before a
    /// caller's (possibly expensive, lazily computed) content is produced.
    /// </summary>
    public static void Write(string path, Action<Stream> write, int bufferSize = 4096)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        string fullPath = Path.GetFullPath(path);
        string tempPath = $"{fullPath}.tmp-{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6))}";
        try
        {
            using (var stream = new FileStream(tempPath, FileMode.CreateNew, FileAccess.Write, FileShare.None, bufferSize))
            {
                write(stream);
                stream.Flush(flushToDisk: true);
            }
            File.Move(tempPath, fullPath, overwrite: true);
        }
        catch (Exception e)
        {
            try { File.Delete(tempPath); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            if (OutputPath.WriteFailure(path, tempPath, e) is { } named) throw named;
            throw;
        }
    }

    public static void WriteAllText(string path, string text) =>
        Write(path, s => s.Write(System.Text.Encoding.UTF8.GetBytes(text)));
}
