using System.Buffers.Binary;
using System.IO.MemoryMappedFiles;

namespace MetaLoraNative.Engine.IO;

/// <summary>
/// A safetensors file opened read-only and memory-mapped.
///
/// Layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the data section; every entry's
/// data_offsets are relative to the data section. <see cref="Open"/> validates the whole header (sizes, JSON,
/// dtypes, shapes, every offset range against the file and against each other) before anything is mapped, so any
/// later read is a plain slice of the mapping and cannot go out of bounds. Reads are safe from several threads.
///
/// Spans from <see cref="RawBytes"/> point into the mapping: they are valid until <see cref="Dispose"/>, and only
/// while nobody truncates the file underneath us (the OS would fault, as with any mapping).
/// </summary>
public sealed unsafe class SafetensorsFile : IDisposable
{
    private readonly MemoryMappedFile _map;
    private readonly MemoryMappedViewAccessor _view;
    private byte* _base;   // first byte of the file in the mapping; null once disposed

    private SafetensorsFile(string path, long dataStart, long fileLength,
        Dictionary<string, SafetensorsEntry> entries, Dictionary<string, string> metadata,
        MemoryMappedFile map, MemoryMappedViewAccessor view, byte* basePointer)
    {
        Path = path;
        DataStart = dataStart;
        FileLength = fileLength;
        Entries = entries;
        Metadata = metadata;
        _map = map;
        _view = view;
        _base = basePointer;
    }

    /// <summary>The path as given to <see cref="Open"/>.</summary>
    public string Path { get; }

    /// <summary>Absolute file offset of the data section (8 + header length).</summary>
    public long DataStart { get; }

    public long FileLength { get; }

    /// <summary>The "__metadata__" object; empty if the file has none.</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    public IReadOnlyDictionary<string, SafetensorsEntry> Entries { get; }

    public bool Contains(string name) => Entries.ContainsKey(name);

    /// <summary>The entry for <paramref name="name"/>; <see cref="KeyNotFoundException"/> naming the file otherwise.</summary>
    public SafetensorsEntry this[string name] =>
        Entries.TryGetValue(name, out var e)
            ? e
            : throw new KeyNotFoundException($"Tensor {SafetensorsHeader.Quote(name)} is not in safetensors file '{Path}'");

    /// <summary>Opens, validates and maps <paramref name="path"/>. Malformed files throw <see cref="SafetensorsFormatException"/>.</summary>
    public static SafetensorsFile Open(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        // FileShare.Delete lets a writer atomically replace the file while we still have the old one mapped.
        var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read | FileShare.Delete,
            bufferSize: 1, FileOptions.RandomAccess);
        MemoryMappedFile? map = null;
        MemoryMappedViewAccessor? view = null;
        try
        {
            long length = stream.Length;
            if (length < 8)
                throw SafetensorsHeader.Fault(path,
                    $"file is truncated: {length} bytes, shorter than the 8-byte header length field");

            Span<byte> lengthField = stackalloc byte[8];
            ReadExactly(path, stream, lengthField, 0);
            ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(lengthField);
            if (headerLength > SafetensorsHeader.MaxHeaderBytes)
                throw SafetensorsHeader.Fault(path,
                    $"header length {headerLength} is absurdly large (limit {SafetensorsHeader.MaxHeaderBytes} bytes)");
            if ((long)headerLength > length - 8)
                throw SafetensorsHeader.Fault(path,
                    $"header length {headerLength} runs beyond the end of the {length}-byte file (truncated?)");

            // Sizes are now bounded by the file and the cap, so the header buffer can be allocated.
            var header = new byte[headerLength];
            ReadExactly(path, stream, header, 8);
            long dataStart = 8 + (long)headerLength;
            var (entries, metadata) = SafetensorsHeader.Parse(path, header, length - dataStart);

            map = MemoryMappedFile.CreateFromFile(stream, mapName: null, capacity: 0, MemoryMappedFileAccess.Read,
                HandleInheritability.None, leaveOpen: false);
            view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            byte* pointer = null;
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref pointer);
            return new SafetensorsFile(path, dataStart, length, entries, metadata, map, view, pointer + view.PointerOffset);
        }
        catch
        {
            view?.Dispose();
            if (map is not null) map.Dispose();
            else stream.Dispose();   // once mapped, the map owns the stream
            throw;
        }
    }

    private static void ReadExactly(string path, FileStream stream, Span<byte> buffer, long offset)
    {
        while (buffer.Length > 0)
        {
            int n = RandomAccess.Read(stream.SafeFileHandle, buffer, offset);
            // Only reachable if the file shrinks while we read it; that is still a truncated file.
            if (n <= 0) throw SafetensorsHeader.Fault(path, $"file ended at byte {offset} while reading the header (truncated)");
            buffer = buffer[n..];
            offset += n;
        }
    }

    /// <summary>The tensor's bytes as stored (little-endian, its own dtype), viewed in place.</summary>
    public ReadOnlySpan<byte> RawBytes(string name)
    {
        var entry = this[name];
        byte* basePointer = _base;
        ObjectDisposedException.ThrowIf(basePointer == null, this);
        if (entry.ByteLength > int.MaxValue)
            throw new NotSupportedException(
                $"Tensor {SafetensorsHeader.Quote(name)} in '{Path}' is {entry.ByteLength} bytes; spans are limited to 2 GiB");
        return new ReadOnlySpan<byte>(basePointer + DataStart + entry.Begin, (int)entry.ByteLength);
    }

    /// <summary>The tensor converted to fp32 (see <see cref="HalfPrecision.Decode"/>).</summary>
    public float[] ReadFloats(string name)
    {
        var entry = this[name];
        long count = entry.ElementCount;
        if (count > Array.MaxLength)
            throw new NotSupportedException(
                $"Tensor {SafetensorsHeader.Quote(name)} in '{Path}' has {count} elements, more than a float[] can hold");
        var result = new float[count];
        ReadFloats(name, result);
        return result;
    }

    /// <summary>
    /// The tensor converted to fp32, refused (<see cref="InputFileException"/> naming the file, the tensor and the first
    /// bad element) when a value is NaN or infinite: weights, factors, moments and cached data must all be finite.
    /// </summary>
    public float[] ReadFiniteFloats(string name)
    {
        var values = ReadFloats(name);
        int bad = Array.FindIndex(values, v => !float.IsFinite(v));
        if (bad >= 0) throw new InputFileException(Path, $"tensor {SafetensorsHeader.Quote(name)} holds a non-finite value ({values[bad]} at element {bad})");
        return values;
    }

    /// <summary>Converts the tensor to fp32 into <paramref name="destination"/>, whose length must equal its element count.</summary>
    public void ReadFloats(string name, Span<float> destination)
    {
        var entry = this[name];
        if (destination.Length != entry.ElementCount)
            throw new ArgumentException(
                $"Tensor {SafetensorsHeader.Quote(name)} in '{Path}' has {entry.ElementCount} elements; destination holds {destination.Length}",
                nameof(destination));
        HalfPrecision.Decode(entry.DType, RawBytes(name), destination);
    }

    public void Dispose()
    {
        if (_base == null) return;
        _base = null;
        _view.SafeMemoryMappedViewHandle.ReleasePointer();
        _view.Dispose();
        _map.Dispose();
    }
}
