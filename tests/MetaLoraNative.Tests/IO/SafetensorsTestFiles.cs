using System.Buffers.Binary;
using System.Text;

namespace MetaLoraNative.Tests.IO;

/// <summary>A fresh folder under the system temp folder, deleted with everything in it on Dispose.</summary>
internal sealed class TempDir : IDisposable
{
    public TempDir()
    {
        FullName = Path.Combine(Path.GetTempPath(), "mln-io-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(FullName);
    }

    public string FullName { get; }

    public string File(string name) => Path.Combine(FullName, name);

    public string[] Listing() => Directory.GetFiles(FullName).Select(Path.GetFileName).Order().ToArray()!;

    public void Dispose()
    {
        try { Directory.Delete(FullName, recursive: true); }
        catch (IOException) { }
    }
}

/// <summary>Builds safetensors bytes by hand, so tests control every header byte (the writer would refuse most faults).</summary>
internal static class RawSafetensors
{
    public static byte[] Build(string headerJson, byte[] data, ulong? headerLengthOverride = null) =>
        Build(Encoding.UTF8.GetBytes(headerJson), data, headerLengthOverride);

    public static byte[] Build(byte[] header, byte[] data, ulong? headerLengthOverride = null)
    {
        var bytes = new byte[8 + header.Length + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, headerLengthOverride ?? (ulong)header.Length);
        header.CopyTo(bytes, 8);
        data.CopyTo(bytes, 8 + header.Length);
        return bytes;
    }

    public static string Write(TempDir dir, string name, byte[] bytes)
    {
        string path = dir.File(name);
        System.IO.File.WriteAllBytes(path, bytes);
        return path;
    }

    public static byte[] F32(params float[] values)
    {
        var bytes = new byte[values.Length * 4];
        for (int i = 0; i < values.Length; i++) BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan(i * 4), values[i]);
        return bytes;
    }
}
