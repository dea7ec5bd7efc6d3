namespace MetaLoraNative.Engine.IO;

/// <summary>
/// Thrown for every malformed safetensors file or sharded layout. The message always starts with the file (or
/// folder) and then states the fault (it is bad input: exit code 2), so a failed load of a 30-file checkpoint says which file and what is wrong.
/// </summary>
public sealed class SafetensorsFormatException : InputException
{
    public SafetensorsFormatException(string filePath, string fault, Exception? innerException = null)
        : base(filePath, $"{filePath}: invalid safetensors file: {fault}", innerException)
    {
        FilePath = filePath;
        Fault = fault;
    }

    /// <summary>The file, index or folder at fault.</summary>
    public string FilePath { get; }

    /// <summary>The fault alone, without the file name.</summary>
    public string Fault { get; }
}
