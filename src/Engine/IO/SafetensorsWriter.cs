using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace MetaLoraNative.Engine.IO;

/// <summary>
/// A tensor to write: fp32 values in row-major order, stored in the file as <paramref name="DType"/>; or, made by
/// <see cref="Float8E4M3"/>, E4M3 codes the caller has already encoded with its own scale policy.
/// </summary>
public sealed record SafetensorsTensor(string Name, int[] Shape, float[] Data, SafetensorsDType DType = SafetensorsDType.F32)
{
    /// <summary>Already-encoded F8_E4M3 codes, one byte per element, written as they are (Data is then empty).</summary>
    public byte[]? Codes { get; init; }

    /// <summary>
    /// An F8_E4M3 tensor from its codes (<see cref="HalfPrecision.FloatToFloat8E4M3"/>): the scale that maps them
    /// back to the weights is the caller's to store, e.g. as a "&lt;name&gt;.scale_weight" tensor beside them.
    /// </summary>
    public static SafetensorsTensor Float8E4M3(string name, int[] shape, byte[] codes) =>
        new(name, shape, [], SafetensorsDType.F8_E4M3) { Codes = codes };

    /// <summary>Elements held: the codes' count for an encoded tensor, else the values'.</summary>
    internal long Count => Codes?.Length ?? Data.Length;
}

/// <summary>
/// Writes safetensors files atomically through <see cref="AtomicFile"/>: a reader (or a crash) sees either the old file
/// or the complete new one, and on any failure PATH is untouched.
///
/// Output is deterministic: "__metadata__" first (keys sorted), then tensors sorted by name (ordinal) in both
/// header and data section, packed without gaps; the header is padded with spaces to a multiple of 8 bytes so the
/// data section stays 8-byte aligned; scalars are written with shape []. Writable dtypes: F32, F16, BF16, F64 from
/// fp32 values, and F8_E4M3 from codes (<see cref="SafetensorsTensor.Float8E4M3"/>).
/// </summary>
public static class SafetensorsWriter
{
    public static void Write(string path, IEnumerable<SafetensorsTensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ArgumentNullException.ThrowIfNull(tensors);

        AtomicFile.Write(path, stream =>
        {
            var sorted = Validate(path, tensors);
            byte[] header = BuildHeader(sorted, metadata, path);

            Span<byte> lengthField = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(lengthField, (ulong)header.Length);
            stream.Write(lengthField);
            stream.Write(header);
            foreach (var t in sorted) WriteData(stream, t);
        }, bufferSize: 1 << 20);
    }

    private static List<SafetensorsTensor> Validate(string path, IEnumerable<SafetensorsTensor> tensors)
    {
        var list = new List<SafetensorsTensor>();
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var t in tensors)
        {
            if (t is null) throw new ArgumentException($"Writing '{path}': a tensor is null", nameof(tensors));
            if (string.IsNullOrEmpty(t.Name)) throw new ArgumentException($"Writing '{path}': a tensor has an empty name", nameof(tensors));
            string what = $"Writing '{path}': tensor '{t.Name}'";
            if (t.Name == SafetensorsHeader.MetadataKey)
                throw new ArgumentException($"{what}: the name is reserved for metadata", nameof(tensors));
            if (!names.Add(t.Name)) throw new ArgumentException($"{what} appears twice", nameof(tensors));
            if (t.Shape is null || t.Data is null) throw new ArgumentException($"{what} has no shape or no data", nameof(tensors));
            if (t.Codes != null ? t.DType != SafetensorsDType.F8_E4M3
                                : t.DType is not (SafetensorsDType.F32 or SafetensorsDType.F16 or SafetensorsDType.BF16 or SafetensorsDType.F64))
                throw new NotSupportedException(
                    $"{what}: writing {t.DType} from {(t.Codes != null ? "codes" : "float values")} is not supported; write F32, F16, BF16 " +
                    "or F64 values, or F8_E4M3 codes (SafetensorsTensor.Float8E4M3: F8_E4M3 needs a scale policy, and integer types " +
                    "would silently round the float data)");
            if (t.Shape.Any(d => d < 0))
                throw new ArgumentException($"{what} has a negative dimension in shape {SafetensorsHeader.FormatShape(t.Shape)}", nameof(tensors));
            // The product is only compared with Data.Length, so saturating on overflow is enough.
            long numel = 1;
            if (Array.IndexOf(t.Shape, 0) >= 0) numel = 0;
            else foreach (int d in t.Shape) numel = numel > long.MaxValue / Math.Max(d, 1) ? long.MaxValue : numel * d;
            if (numel != t.Count)
                throw new ArgumentException(
                    $"{what} has shape {SafetensorsHeader.FormatShape(t.Shape)} but {t.Count} values", nameof(tensors));
            list.Add(t);
        }
        list.Sort((a, b) => string.CompareOrdinal(a.Name, b.Name));
        return list;
    }

    private static byte[] BuildHeader(List<SafetensorsTensor> tensors, IReadOnlyDictionary<string, string>? metadata, string path)
    {
        var buffer = new ArrayBufferWriter<byte>();
        // Relaxed escaping keeps names such as "a+b" readable; the header is never embedded in HTML.
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            json.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                json.WriteStartObject(SafetensorsHeader.MetadataKey);
                foreach (var (key, value) in metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal))
                {
                    if (key is null || value is null)
                        throw new ArgumentException($"Writing '{path}': metadata keys and values must not be null", nameof(metadata));
                    json.WriteString(key, value);
                }
                json.WriteEndObject();
            }
            long offset = 0;
            foreach (var t in tensors)
            {
                long bytes = t.Count * SafetensorsDTypes.Size(t.DType);
                json.WriteStartObject(t.Name);
                json.WriteString("dtype", SafetensorsDTypes.Name(t.DType));
                json.WriteStartArray("shape");
                foreach (int d in t.Shape) json.WriteNumberValue(d);
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                json.WriteNumberValue(offset + bytes);
                json.WriteEndArray();
                json.WriteEndObject();
                offset += bytes;
            }
            json.WriteEndObject();
        }
        int padded = (buffer.WrittenCount + 7) & ~7;
        var header = new byte[padded];
        buffer.WrittenSpan.CopyTo(header);
        header.AsSpan(buffer.WrittenCount).Fill((byte)' ');
        return header;
    }

    private static void WriteData(Stream stream, SafetensorsTensor t)
    {
        if (t.Codes != null)
        {
            stream.Write(t.Codes);
            return;
        }
        if (t.DType == SafetensorsDType.F32 && BitConverter.IsLittleEndian)
        {
            stream.Write(MemoryMarshal.AsBytes(t.Data.AsSpan()));
            return;
        }
        // Convert in chunks so writing a large tensor as bf16 needs no second full-size buffer.
        int size = SafetensorsDTypes.Size(t.DType);
        const int chunkElements = 1 << 16;
        byte[] chunk = ArrayPool<byte>.Shared.Rent(chunkElements * size);
        try
        {
            for (int start = 0; start < t.Data.Length; start += chunkElements)
            {
                int n = Math.Min(chunkElements, t.Data.Length - start);
                var src = t.Data.AsSpan(start, n);
                var dst = chunk.AsSpan(0, n * size);
                for (int i = 0; i < n; i++)
                {
                    switch (t.DType)
                    {
                        case SafetensorsDType.F32: BinaryPrimitives.WriteSingleLittleEndian(dst.Slice(i * 4), src[i]); break;
                        case SafetensorsDType.F64: BinaryPrimitives.WriteDoubleLittleEndian(dst.Slice(i * 8), src[i]); break;
                        case SafetensorsDType.F16: BinaryPrimitives.WriteUInt16LittleEndian(dst.Slice(i * 2), HalfPrecision.FloatToHalfBits(src[i])); break;
                        case SafetensorsDType.BF16: BinaryPrimitives.WriteUInt16LittleEndian(dst.Slice(i * 2), HalfPrecision.FloatToBFloat16(src[i])); break;
                    }
                }
                stream.Write(dst);
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(chunk);
        }
    }
}
