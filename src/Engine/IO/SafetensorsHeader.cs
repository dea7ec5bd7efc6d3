using System.Text;
using System.Text.Json;
using System.Text.Unicode;

namespace MetaLoraNative.Engine.IO;

/// <summary>
/// Parses and validates the JSON header of a safetensors file. Pure: it sees only the header bytes and the size of
/// the data section, and either returns entries that are safe to slice the data section with, or throws
/// <see cref="SafetensorsFormatException"/> naming the fault. Every size is checked before it is used, so a hostile
/// header can make us allocate at most in proportion to its own length.
/// </summary>
internal static class SafetensorsHeader
{
    /// <summary>Real headers are at most a few MB (FLUX: ~100 KB); anything above this is corruption.</summary>
    public const long MaxHeaderBytes = 100L * 1024 * 1024;

    public const string MetadataKey = "__metadata__";

    public static (Dictionary<string, SafetensorsEntry> Entries, Dictionary<string, string> Metadata) Parse(
        string path, ReadOnlyMemory<byte> header, long dataLength)
    {
        if (!Utf8.IsValid(header.Span))
            throw Fault(path, "header is not valid UTF-8");

        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(header, new JsonDocumentOptions { MaxDepth = 64 });
        }
        catch (JsonException e)
        {
            throw Fault(path, $"header is not valid JSON ({e.Message})", e);
        }

        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw Fault(path, $"header JSON is {Article(root.ValueKind)}, not an object");

            var entries = new Dictionary<string, SafetensorsEntry>(StringComparer.Ordinal);
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            bool sawMetadata = false;
            foreach (var property in root.EnumerateObject())
            {
                string name = property.Name;
                if (name == MetadataKey)
                {
                    if (sawMetadata) throw Fault(path, $"duplicate \"{MetadataKey}\" in header");
                    sawMetadata = true;
                    ParseMetadata(path, property.Value, metadata);
                    continue;
                }
                if (entries.ContainsKey(name))
                    throw Fault(path, $"duplicate tensor name {Quote(name)} in header");
                entries.Add(name, ParseEntry(path, name, property.Value, dataLength));
            }

            CheckCoverage(path, entries.Values, dataLength);
            return (entries, metadata);
        }
    }

    private static void ParseMetadata(string path, JsonElement element, Dictionary<string, string> metadata)
    {
        if (element.ValueKind != JsonValueKind.Object)
            throw Fault(path, $"\"{MetadataKey}\" is {Article(element.ValueKind)}, not an object of strings");
        foreach (var property in element.EnumerateObject())
        {
            if (property.Value.ValueKind != JsonValueKind.String)
                throw Fault(path, $"metadata value for key {Quote(property.Name)} is {Article(property.Value.ValueKind)}, not a string");
            if (!metadata.TryAdd(property.Name, property.Value.GetString()!))
                throw Fault(path, $"duplicate metadata key {Quote(property.Name)}");
        }
    }

    private static SafetensorsEntry ParseEntry(string path, string name, JsonElement element, long dataLength)
    {
        string what = $"tensor {Quote(name)}";
        if (element.ValueKind != JsonValueKind.Object)
            throw Fault(path, $"{what} is {Article(element.ValueKind)}, not an object with dtype, shape and data_offsets");

        JsonElement? dtypeElement = null, shapeElement = null, offsetsElement = null;
        foreach (var property in element.EnumerateObject())
        {
            // Unknown keys are ignored, as other readers do; a repeated known key is ambiguous, so it is an error.
            ref JsonElement? slot = ref dtypeElement;
            switch (property.Name)
            {
                case "dtype": slot = ref dtypeElement; break;
                case "shape": slot = ref shapeElement; break;
                case "data_offsets": slot = ref offsetsElement; break;
                default: continue;
            }
            if (slot is not null) throw Fault(path, $"{what} has \"{property.Name}\" twice");
            slot = property.Value;
        }
        if (dtypeElement is not { } dtypeJson) throw Fault(path, $"{what} has no \"dtype\"");
        if (shapeElement is not { } shapeJson) throw Fault(path, $"{what} has no \"shape\"");
        if (offsetsElement is not { } offsetsJson) throw Fault(path, $"{what} has no \"data_offsets\"");

        // dtype
        if (dtypeJson.ValueKind != JsonValueKind.String)
            throw Fault(path, $"{what} has dtype {Raw(dtypeJson)}, which is not a string");
        string dtypeText = dtypeJson.GetString()!;
        if (!SafetensorsDTypes.TryParse(dtypeText, out var dtype))
            throw Fault(path, $"{what} has unknown dtype {Quote(dtypeText)}");

        // shape: the array's length is bounded by the header's, so allocating it is safe.
        if (shapeJson.ValueKind != JsonValueKind.Array)
            throw Fault(path, $"{what} has shape {Raw(shapeJson)}, which is not an array");
        var shape = new int[shapeJson.GetArrayLength()];
        int axis = 0;
        bool hasZero = false;
        foreach (var dim in shapeJson.EnumerateArray())
        {
            if (dim.ValueKind != JsonValueKind.Number || !dim.TryGetInt64(out long d) || d < 0)
                throw Fault(path, $"{what} has shape dimension {Raw(dim)} at axis {axis}, which is not a non-negative integer");
            if (d > int.MaxValue)
                throw Fault(path, $"{what} has shape dimension {d} at axis {axis}, larger than {int.MaxValue}");
            shape[axis++] = (int)d;
            hasZero |= d == 0;
        }

        // numel and byte size, overflow-checked. A zero dimension makes the tensor empty whatever the others are,
        // so it must not be reported as an overflow.
        long byteCount;
        try
        {
            long numel = 1;
            if (hasZero) numel = 0;
            else foreach (int d in shape) numel = checked(numel * d);
            byteCount = checked(numel * SafetensorsDTypes.Size(dtype));
        }
        catch (OverflowException)
        {
            throw Fault(path, $"{what} has shape {FormatShape(shape)} whose element count or byte size overflows 64 bits");
        }

        // data_offsets
        if (offsetsJson.ValueKind != JsonValueKind.Array || offsetsJson.GetArrayLength() != 2)
            throw Fault(path, $"{what} has data_offsets {Raw(offsetsJson)}, which is not two non-negative integers [begin, end]");
        long[] offsets = new long[2];
        int k = 0;
        foreach (var o in offsetsJson.EnumerateArray())
        {
            if (o.ValueKind != JsonValueKind.Number || !o.TryGetInt64(out long v) || v < 0)
                throw Fault(path, $"{what} has data_offsets {Raw(offsetsJson)}, which is not two non-negative integers [begin, end]");
            offsets[k++] = v;
        }
        long begin = offsets[0], end = offsets[1];
        if (begin > end)
            throw Fault(path, $"{what} has data_offsets [{begin}, {end}] with begin after end");
        if (end > dataLength)
            throw Fault(path, $"{what} has data_offsets [{begin}, {end}] ending beyond the data section of {dataLength} bytes (truncated file?)");
        if (end - begin != byteCount)
            throw Fault(path, $"{what} spans {end - begin} bytes but shape {FormatShape(shape)} of {dtype} needs {byteCount}");

        return new SafetensorsEntry(name, dtype, shape, begin, end);
    }

    /// <summary>
    /// The tensors must tile the data section exactly, as the reference safetensors library requires: sorted by
    /// offset, each begins where the previous one ended, the first at 0 and the last at the section's end. A gap would
    /// hide unread bytes, an overlap would let two tensors alias, trailing bytes would be data no tensor owns. Empty
    /// tensors own no bytes, so they may sit anywhere inside the section (several writers give them [0, 0]).
    /// </summary>
    private static void CheckCoverage(string path, IEnumerable<SafetensorsEntry> entries, long dataLength)
    {
        var sorted = entries.Where(e => e.End > e.Begin).OrderBy(e => e.Begin).ThenBy(e => e.End).ToArray();
        long covered = 0;
        SafetensorsEntry? previous = null;
        foreach (var e in sorted)
        {
            if (e.Begin < covered)
                throw Fault(path, $"tensor {Quote(previous!.Name)} [{previous.Begin}, {previous.End}) overlaps tensor {Quote(e.Name)} " +
                                  $"[{e.Begin}, {e.End}) at data offset {e.Begin}");
            if (e.Begin > covered)
                throw Fault(path, $"the data section has a gap at offset {covered}: bytes [{covered}, {e.Begin}) belong to no tensor " +
                                  $"(the next is {Quote(e.Name)})");
            covered = e.End;
            previous = e;
        }
        if (covered != dataLength)
            throw Fault(path, $"the data section has {dataLength - covered} trailing bytes at offset {covered} that belong to no tensor " +
                              $"(data section {dataLength} bytes, tensors end at {covered})");
    }

    internal static SafetensorsFormatException Fault(string path, string fault, Exception? inner = null) =>
        new(path, fault, inner);

    /// <summary>Names come from the file, so they are quoted, shortened and stripped of control characters.</summary>
    internal static string Quote(string text)
    {
        const int max = 120;
        var sb = new StringBuilder(Math.Min(text.Length, max) + 8).Append('\'');
        foreach (char c in text.Length > max ? text[..max] : text)
            sb.Append(char.IsControl(c) ? '?' : c);
        if (text.Length > max) sb.Append("...");
        return sb.Append('\'').ToString();
    }

    private static string Raw(JsonElement e)
    {
        string raw = e.GetRawText();
        return raw.Length > 60 ? raw[..60] + "..." : raw;
    }

    private static string Article(JsonValueKind kind) => kind switch
    {
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "an array",
        JsonValueKind.String => "a string",
        JsonValueKind.Number => "a number",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        JsonValueKind.Null => "null",
        _ => kind.ToString(),
    };

    internal static string FormatShape(int[] shape) => "[" + string.Join(", ", shape) + "]";
}
