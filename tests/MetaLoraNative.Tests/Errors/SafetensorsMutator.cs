using System.Text.Json;
using MetaLoraNative.Tests.IO;

namespace MetaLoraNative.Tests.Errors;

/// <summary>One tensor's header fields as raw JSON text, so a mutation can replace any of them with anything.</summary>
internal sealed record Field(string Name, string DType, string Shape, string Offsets);

/// <summary>
/// The one safetensors mutator: deterministic damage of a valid file given as its header fields (raw JSON), metadata
/// and data. <see cref="Mutate"/> holds the byte- and JSON-level families (flips, truncation, the length field, wild
/// values, structure, splices, stacked); <see cref="Crafted"/> the files that are valid safetensors but wrong for
/// their reader (reshaped tensors, empty and 1-D factors, damaged names, stray keys, dtype swaps, metadata values).
/// <see cref="Coverage"/> keeps every header field valid but breaks the tiling of the data section (gaps, overlaps,
/// trailing or missing bytes). <see cref="Any"/> mixes all three: index % 13 picks the family. <see cref="Family"/>
/// gives the named families one by one (<see cref="Families"/>), for corpora that report per family.
/// </summary>
internal sealed class SafetensorsMutator(IReadOnlyList<Field> baseFields, string baseMetadata, byte[] baseData)
{
    /// <summary>The fields, metadata and data of a file as written (its header parsed, each value kept as raw JSON).</summary>
    public static SafetensorsMutator FromFile(string path)
    {
        byte[] bytes = File.ReadAllBytes(path);
        int n = (int)BitConverter.ToUInt64(bytes, 0);
        using var doc = JsonDocument.Parse(bytes.AsMemory(8, n));
        var fields = new List<Field>();
        string metadata = "";
        foreach (var p in doc.RootElement.EnumerateObject())
        {
            if (p.Name == "__metadata__") { metadata = "\"__metadata__\":" + p.Value.GetRawText(); continue; }
            fields.Add(new(p.Name, p.Value.GetProperty("dtype").GetRawText(), p.Value.GetProperty("shape").GetRawText(), p.Value.GetProperty("data_offsets").GetRawText()));
        }
        return new(fields, metadata, bytes[(8 + n)..]);
    }

    public string HeaderJson(IEnumerable<Field> fields, string? metadata = null)
    {
        metadata ??= baseMetadata;
        return "{" + string.Join(",", (metadata.Length > 0 ? new[] { metadata } : []).Concat(
            fields.Select(f => $"\"{JsonEncodedText.Encode(f.Name)}\":{{\"dtype\":{f.DType},\"shape\":{f.Shape},\"data_offsets\":{f.Offsets}}}"))) + "}";
    }

    public byte[] Valid => RawSafetensors.Build(HeaderJson(baseFields), baseData);

    public (string Kind, byte[] Bytes) Any(int index) => (index % 13) switch
    {
        < 8 => Mutate(index / 13 * 8 + index % 13),
        < 12 => Crafted(index / 13 * 12 + index % 13),
        _ => ("data coverage", Coverage(index / 13)),
    };

    /// <summary>The named families of <see cref="Family"/>, each aimed at one part of a reader's checks.</summary>
    public static readonly string[] Families =
    [
        "truncation", "length field", "offsets", "dtype", "shape overflow", "metadata", "duplicate keys", "nesting",
        "data coverage", "byte flips", "json structure", "crafted shapes and names",
    ];

    /// <summary>Mutant number <paramref name="index"/> of the family <paramref name="family"/> (one of <see cref="Families"/>).</summary>
    public byte[] Family(string family, int index)
    {
        var rng = new Random(9000 + index * 31 + Array.IndexOf(Families, family));
        var fields = baseFields.ToList();
        int t = rng.Next(fields.Count);
        var f = fields[t];
        long[] o = JsonSerializer.Deserialize<long[]>(f.Offsets)!;
        byte[] Header(IEnumerable<Field> changed, string? metadata = null) => RawSafetensors.Build(HeaderJson(changed, metadata), baseData);
        byte[] With(Field changed) { fields[t] = changed; return Header(fields); }
        switch (family)
        {
            case "truncation": return Mutate(index * 8 + 2).Bytes;
            case "length field": return Mutate(index * 8 + 3).Bytes;
            case "byte flips": return Mutate(index * 8 + index % 2).Bytes;
            case "json structure": return Mutate(index * 8 + 5).Bytes;
            case "crafted shapes and names": return Crafted(index * 12 + 8 + index % 2).Bytes;
            case "offsets":
            {
                long d = rng.Next(1, 9) * (rng.Next(2) == 0 ? 1 : -1), n = baseData.Length;
                string[] offsets =
                [
                    $"[{o[0] + d},{o[1] + d}]", $"[{o[0]},{o[1] + d}]", $"[{o[0] + d},{o[1]}]", $"[{o[1]},{o[0]}]", $"[{o[0]},{o[0]}]",
                    $"[0,{o[1] - o[0]}]", $"[{n},{n + o[1] - o[0]}]", $"[{o[0]},{n + 1}]", $"[-{o[1]},{o[0]}]", $"[{o[0]}]", $"[{o[0]},{o[1]},{o[1]}]",
                    $"[{o[0]}.0,{o[1]}]", $"[\"{o[0]}\",{o[1]}]", $"[{o[0] + (1L << 62)},{o[1] + (1L << 62)}]", $"[{o[0]},{ulong.MaxValue}]",
                ];
                return With(f with { Offsets = offsets[rng.Next(offsets.Length)] });
            }
            case "dtype":
            {
                if (index % 3 == 0) return Crafted(index / 3 * 12 + 10).Bytes;     // other dtypes over the same bytes
                string[] dtypes =
                [
                    "\"F64\"", "\"F16\"", "\"BF16\"", "\"I8\"", "\"U8\"", "\"I16\"", "\"U16\"", "\"I64\"", "\"U64\"", "\"BOOL\"",
                    "\"F8_E4M3\"", "\"F8_E5M2\"", "\"f32\"", "\"F32 \"", "\"\"", "\"FP32\"", "\"F4\"", "\"C64\"", "32", "null", "[\"F32\"]",
                ];
                return With(f with { DType = dtypes[rng.Next(dtypes.Length)] });
            }
            case "shape overflow":
            {
                string[] shapes =
                [
                    "[2147483647,2147483647,2147483647]", "[4294967296]", "[2147483648,1]", "[65536,65536,65536,65536]",
                    "[9223372036854775807,2]", "[3037000500,3037000500]", "[1,1,1,1,1,1,1,1,1,2147483647,2147483647]",
                    "[46341,46341]", "[2147483647,0,2147483647]", "[-1,-1]", "[1e3]", "[18446744073709551616]",
                ];
                return With(f with { Shape = shapes[rng.Next(shapes.Length)] });
            }
            case "metadata":
            {
                if (index % 2 == 0) return Crafted(index / 2 * 12 + 11).Bytes;      // one value replaced
                string[] metadata =
                [
                    "{\"metalora.iteration\":1}", "{\"metalora.iteration\":[1]}", "{\"metalora.state\":null}", "{\"a\":{\"b\":\"c\"}}",
                    "[]", "\"stage2\"", "7", "null", "{}", "{\"metalora.adam_steps\":\"{\\\"x\\\":1e99}\"}",
                    "{\"metalora.adam_steps\":\"[1,2]\"}", "{\"metalora.iteration\":\"-1\"}", "{\"metalora.iteration\":\"9223372036854775808\"}",
                    "{\"metalora.identities\":\"\"}", "{\"metalora.rank1\":\"0\"}", "{\"metalora.nonfinite_skips\":\"-3\"}",
                ];
                return Header(fields, "\"__metadata__\":" + metadata[rng.Next(metadata.Length)]);
            }
            case "duplicate keys":
            {
                string json = HeaderJson(fields);
                string entry = $"\"{JsonEncodedText.Encode(f.Name)}\":{{";
                int at = json.IndexOf(entry, StringComparison.Ordinal) + entry.Length;
                switch (rng.Next(6))
                {
                    case 0: fields.Add(f); return Header(fields);                                   // the whole tensor twice
                    case 1: fields.Add(f with { Offsets = $"[{baseData.Length},{baseData.Length}]", Shape = "[0]" }); return Header(fields);
                    case 2: json = json.Insert(at, $"\"dtype\":{f.DType},"); break;                  // a known key twice
                    case 3: json = json.Insert(at, $"\"shape\":{f.Shape},"); break;
                    case 4: json = json.Insert(at, $"\"data_offsets\":{f.Offsets},"); break;
                    default:
                        json = baseMetadata.Length > 0 ? json.Replace("\"__metadata__\":{", "\"__metadata__\":{\"k\":\"1\",\"k\":\"2\",", StringComparison.Ordinal)
                                                        : "{\"__metadata__\":{},\"__metadata__\":{}," + json[1..];
                        break;
                }
                return RawSafetensors.Build(json, baseData);
            }
            case "nesting":
            {
                int depth = rng.Next(2) == 0 ? rng.Next(2, 60) : rng.Next(64, 400);
                string deep = new string('[', depth) + "1" + new string(']', depth);
                string deepObject = string.Concat(Enumerable.Repeat("{\"a\":", depth)) + "1" + new string('}', depth);
                switch (rng.Next(5))
                {
                    case 0: return With(f with { Shape = deep });
                    case 1: return With(f with { Offsets = $"[{deep},{o[1]}]" });
                    case 2: return With(f with { DType = deepObject });
                    case 3: return Header(fields, "\"__metadata__\":{\"k\":" + deepObject + "}");
                    default:
                        string json = HeaderJson(fields);
                        return RawSafetensors.Build(json.Insert(json.Length - 1, ",\"extra\":" + deepObject), baseData);
                }
            }
            case "data coverage": return Coverage(index);
            default: throw new ArgumentException($"no mutant family '{family}'", nameof(family));
        }
    }

    /// <summary>
    /// Valid fields whose byte ranges no longer tile the data section exactly: a gap before, between or after the
    /// tensors (the data grown to match), an overlap (one range moved onto its neighbour), bytes appended after the
    /// last tensor, or a data section cut short of the last range.
    /// </summary>
    public byte[] Coverage(int index)
    {
        var rng = new Random(7000 + index);
        var fields = baseFields.ToList();
        var order = fields.Select((f, i) => (I: i, O: JsonSerializer.Deserialize<long[]>(f.Offsets)!)).Where(x => x.O[1] > x.O[0]).OrderBy(x => x.O[0]).ToArray();
        var (t, o) = order[rng.Next(order.Length)];
        int k = rng.Next(1, 17);
        string Shifted(long[] r, long by) => $"[{r[0] + by},{r[1] + by}]";
        switch (index % 5)
        {
            case 0: // a gap of k bytes before tensor t: it and every later one move up, the data grows
            {
                var data = baseData.Take((int)o[0]).Concat(new byte[k]).Concat(baseData.Skip((int)o[0])).ToArray();
                foreach (var (i, r) in order.Where(x => x.O[0] >= o[0])) fields[i] = fields[i] with { Offsets = Shifted(r, k) };
                return RawSafetensors.Build(HeaderJson(fields), data);
            }
            case 1: // an overlap: tensor t starts k bytes early, every later one with it (the data shrinks to fit)
            {
                if (o[0] == 0) goto case 3;
                long by = -Math.Min(k, o[0]);
                foreach (var (i, r) in order.Where(x => x.O[0] >= o[0])) fields[i] = fields[i] with { Offsets = Shifted(r, by) };
                return RawSafetensors.Build(HeaderJson(fields), baseData[..(int)(baseData.Length + by)]);
            }
            case 2: // trailing bytes after the last tensor
                return RawSafetensors.Build(HeaderJson(fields), [.. baseData, .. Enumerable.Range(0, k).Select(_ => (byte)rng.Next(256))]);
            case 3: // two tensors on the same bytes: t's range given to another tensor of the same size, its own left uncovered
            {
                var twin = order.FirstOrDefault(x => x.I != t && x.O[1] - x.O[0] == o[1] - o[0]);
                if (twin.O is null) goto case 2;
                fields[twin.I] = fields[twin.I] with { Offsets = fields[t].Offsets };
                return RawSafetensors.Build(HeaderJson(fields), baseData);
            }
            default: // a gap inside: the last tensor's range moved k bytes on with the data grown, or the data cut short
            {
                var last = order[^1];
                if (rng.Next(2) == 0) return RawSafetensors.Build(HeaderJson(fields), baseData[..Math.Max(0, baseData.Length - k)]);
                fields[last.I] = fields[last.I] with { Offsets = Shifted(last.O, k) };
                return RawSafetensors.Build(HeaderJson(fields), [.. baseData, .. new byte[k]]);
            }
        }
    }

    static readonly string[] WildNumbers =
    [
        "-1", "0", "1", "3", "8", "51", "52", "2147483647", "2147483648", "4294967296", "9007199254740993",
        "9223372036854775807", "9223372036854775808", "18446744073709551615", "99999999999999999999999999",
        "1e308", "1e400", "-0", "1.5", "-1e-300", "1E2", "-9223372036854775808",
    ];

    static readonly string[] WildValues =
    [
        "\"x\"", "null", "true", "false", "[]", "{}", "[[1]]", "\"F32\"", "\"BF16\"", "\"F8_E4M3\"", "\"U8\"", "\"\"",
        "\"F8_E5M2\"", "[65536,65536,65536]", "[1,2,3,4,5,6,7,8,9,10]", "[2147483647,2147483647]", "[0,9223372036854775807]",
        "[9223372036854775807,9223372036854775807]", "[-5,-1]", "[0,0]", "[51,0]",
        new string('[', 100) + new string(']', 100),   // deeper than the parser allows
        "{\"dtype\":\"F32\"}", "\"\\u0000\\ud800\"",
    ];

    static string Wild(Random rng)
    {
        int pick = rng.Next(4);
        if (pick == 0) return WildNumbers[rng.Next(WildNumbers.Length)];
        if (pick == 1) return WildValues[rng.Next(WildValues.Length)];
        int n = rng.Next(4);
        return "[" + string.Join(",", Enumerable.Range(0, n).Select(_ => WildNumbers[rng.Next(WildNumbers.Length)])) + "]";
    }

    /// <summary>Builds mutated file number <paramref name="index"/> (families 0-7); the same index always gives the same bytes.</summary>
    public (string Kind, byte[] Bytes) Mutate(int index)
    {
        var rng = new Random(1000 + index);
        var fields = baseFields.ToList();
        byte[] data = baseData;
        byte[] valid = Valid;
        int headerLength = valid.Length - 8 - data.Length;

        switch (index % 8)
        {
            case 0: // byte flips in the header
            {
                var b = (byte[])valid.Clone();
                for (int k = rng.Next(1, 5); k > 0; k--) b[8 + rng.Next(headerLength)] ^= (byte)rng.Next(1, 256);
                return ("header byte flips", b);
            }
            case 1: // byte flips anywhere, data included (data flips must still read fine)
            {
                var b = (byte[])valid.Clone();
                for (int k = rng.Next(1, 5); k > 0; k--)
                {
                    int at = rng.Next(2) == 0 ? 8 + headerLength + rng.Next(data.Length) : rng.Next(b.Length);
                    b[at] ^= (byte)rng.Next(1, 256);
                }
                return ("byte flips", b);
            }
            case 2: // truncation at a random point
                return ("truncation", valid[..rng.Next(valid.Length)]);
            case 3: // header length field
            {
                ulong[] choices =
                [
                    0, 1, 2, (ulong)headerLength - 1, (ulong)headerLength + 1, (ulong)headerLength + (ulong)rng.Next(1, 100),
                    (ulong)(valid.Length - 8), (ulong)valid.Length, ulong.MaxValue, 1ul << 63, 100ul << 20, (100ul << 20) + 1,
                    (ulong)rng.NextInt64(), (ulong)rng.Next(headerLength),
                ];
                return ("length field", RawSafetensors.Build(HeaderJson(fields), data, choices[rng.Next(choices.Length)]));
            }
            case 4: // one header value replaced by a wild one
            {
                int t = rng.Next(fields.Count);
                var f = fields[t];
                fields[t] = rng.Next(4) switch
                {
                    0 => f with { DType = Wild(rng) },
                    1 => f with { Shape = Wild(rng) },
                    2 => f with { Offsets = Wild(rng) },
                    _ => f with { Offsets = $"[{WildNumbers[rng.Next(WildNumbers.Length)]},{WildNumbers[rng.Next(WildNumbers.Length)]}]" },
                };
                return ("json value", RawSafetensors.Build(HeaderJson(fields), data));
            }
            case 5: // structural edits of the header
            {
                string json;
                int t = rng.Next(fields.Count);
                switch (rng.Next(9))
                {
                    case 0: json = HeaderJson(fields).Replace($"\"dtype\":{fields[t].DType},", "", StringComparison.Ordinal); break;
                    case 1: fields.Add(fields[t] with { Offsets = "[0,0]" }); json = HeaderJson(fields); break;   // duplicate name
                    case 2:
                    {
                        int u = rng.Next(fields.Count);
                        (fields[t], fields[u]) = (fields[t] with { Offsets = fields[u].Offsets }, fields[u] with { Offsets = fields[t].Offsets });
                        json = HeaderJson(fields);
                        break;
                    }
                    case 3: json = HeaderJson(fields, "\"__metadata__\":{\"step\":" + Wild(rng) + "}"); break;
                    case 4: json = HeaderJson(fields, "\"__metadata__\":" + Wild(rng)); break;
                    case 5: fields[t] = fields[t] with { Name = "__metadata__" }; json = HeaderJson(fields, ""); break;
                    case 6: json = "[" + HeaderJson(fields) + "]"; break;
                    case 7:
                    {
                        json = HeaderJson(fields);
                        int at = rng.Next(json.Length);
                        json = json.Remove(at, 1);
                        break;
                    }
                    default:
                    {
                        json = HeaderJson(fields);
                        string[] junk = ["{", "}", "[", "]", ",", ":", "\"", "\\", "-", "9", "\u00e9", "\u0001"];
                        json = json.Insert(rng.Next(json.Length), junk[rng.Next(junk.Length)]);
                        break;
                    }
                }
                return ("json structure", RawSafetensors.Build(json, data));
            }
            case 6: // splices: inserted, appended or removed bytes, odd padding
            {
                var list = valid.ToList();
                switch (rng.Next(4))
                {
                    case 0: list.InsertRange(rng.Next(list.Count), Enumerable.Range(0, rng.Next(1, 16)).Select(_ => (byte)rng.Next(256))); break;
                    case 1: list.AddRange(Enumerable.Repeat((byte)rng.Next(256), rng.Next(1, 64))); break;
                    case 2: list.RemoveRange(rng.Next(list.Count - 16), rng.Next(1, 16)); break;
                    default:
                    {
                        string padded = HeaderJson(fields) + new string(rng.Next(2) == 0 ? ' ' : '\0', rng.Next(1, 9));
                        return ("padding", RawSafetensors.Build(padded, data));
                    }
                }
                return ("splice", list.ToArray());
            }
            default: // two mutations stacked: a header-level one, then a byte-level one
            {
                var (_, first) = Mutate(index - 3);   // an earlier case 4 (json value)
                var b = (byte[])first.Clone();
                if (b.Length > 0) b[rng.Next(b.Length)] ^= (byte)rng.Next(1, 256);
                if (rng.Next(2) == 0 && b.Length > 1) b = b[..rng.Next(1, b.Length)];
                return ("stacked", b);
            }
        }
    }


    /// <summary>A valid safetensors file that its reader must still refuse or accept cleanly (families 8-11 of <see cref="Any"/>).</summary>
    public (string Kind, byte[] Bytes) Crafted(int index)
    {
        var rng = new Random(5000 + index);
        var fields = baseFields.ToList();
        int t = rng.Next(fields.Count);
        var f = fields[t];
        long[] shape = JsonSerializer.Deserialize<long[]>(f.Shape) ?? [];
        long count = shape.Aggregate(1L, (a, b) => a * b);
        switch (index % 12)
        {
            case 8: // the same bytes under another shape: 1-D, transposed, a leading 1, or emptied
            {
                string[] shapes = count > 0
                    ? [$"[{count}]", "[]", $"[1,{count}]", $"[{count},1]", shape.Length == 2 ? $"[{shape[1]},{shape[0]}]" : $"[{count}]", $"[1,1,{count}]"]
                    : ["[]", "[0]", "[1,0]"];
                string s = shapes[rng.Next(shapes.Length)];
                if (s is "[]" or "[0]" or "[1,0]" && count != (s == "[]" ? 1 : 0))
                {
                    // an empty tensor: no bytes of its own (its old bytes are left uncovered)
                    long start = JsonSerializer.Deserialize<long[]>(f.Offsets)![0];
                    fields[t] = f with { Shape = s == "[]" ? "[0]" : s, Offsets = $"[{start},{start}]" };
                }
                else fields[t] = f with { Shape = s };
                return ("crafted shape", RawSafetensors.Build(HeaderJson(fields), baseData));
            }
            case 9: // damaged names: a renamed factor, a NUL or a space in a name, a stray copy, a dropped tensor
            {
                string[] renames = ["lora_B", "lora_b", "lora_A", "lora_a", "lora_down", "lora_dwn", "lora_up", "lora_mid", "adam.m", "adam.M", "blocks.0", "blocks.00", "weight", "weigh"];
                switch (rng.Next(5))
                {
                    case 0:
                    {
                        int k = rng.Next(renames.Length / 2) * 2;
                        string from = renames[k], to = renames[k + 1];
                        fields[t] = f with { Name = f.Name.Contains(from, StringComparison.Ordinal) ? f.Name.Replace(from, to, StringComparison.Ordinal) : f.Name + "x" };
                        break;
                    }
                    case 1: fields[t] = f with { Name = f.Name.Insert(rng.Next(f.Name.Length + 1), "\0") }; break;
                    case 2: fields[t] = f with { Name = f.Name.Insert(rng.Next(f.Name.Length + 1), " ") }; break;
                    case 3:
                    {
                        long start = JsonSerializer.Deserialize<long[]>(f.Offsets)![0];
                        fields.Add(f with { Name = "stray." + f.Name, Shape = "[0]", Offsets = $"[{start},{start}]" });
                        break;
                    }
                    default:
                    {
                        fields.RemoveAt(t);
                        byte[] data = Compact(fields);
                        return ("crafted names", RawSafetensors.Build(HeaderJson(fields), data));
                    }
                }
                return ("crafted names", RawSafetensors.Build(HeaderJson(fields), baseData));
            }
            case 10: // another dtype over the same bytes (F32 ↔ I32/U32, or half the elements read as F64)
            {
                string[] same = ["\"I32\"", "\"U32\"", "\"F32\""];
                if (f.DType == "\"F32\"" && count % 2 == 0 && rng.Next(3) == 0 && shape.Length > 0)
                    fields[t] = f with { DType = "\"F64\"", Shape = $"[{count / 2}]" };
                else if (f.DType == "\"F32\"" && count > 0 && rng.Next(2) == 0)
                    fields[t] = f with { DType = "\"F16\"", Shape = $"[{count * 2}]" };
                else fields[t] = f with { DType = same[rng.Next(same.Length)] };
                return ("crafted dtype", RawSafetensors.Build(HeaderJson(fields), baseData));
            }
            default: // one metadata value replaced (a number that is text, negative, huge, NaN, a JSON of the wrong type)
            {
                var meta = baseMetadata.Length == 0 ? new Dictionary<string, string>()
                    : JsonSerializer.Deserialize<Dictionary<string, string>>(baseMetadata[(baseMetadata.IndexOf(':') + 1)..]) ?? [];
                string[] values = ["abc", "-5", "[]", "{}", "", "0", "1", "-1", "NaN", "Infinity", "1e400", "99999999999999999999", "3.5", "16,56", "16,56,57",
                                   "0,0,0", "-16,56,56", "16,,56", "{\"a\":-3}", "{\"a\":1e30}", "null", "stage1", "stage2", "\u0000"];
                if (meta.Count > 0)
                {
                    var key = meta.Keys.OrderBy(k => k, StringComparer.Ordinal).ElementAt(rng.Next(meta.Count));
                    if (rng.Next(8) == 0) meta.Remove(key); else meta[key] = values[rng.Next(values.Length)];
                }
                string metadata = "\"__metadata__\":" + JsonSerializer.Serialize(meta);
                return ("crafted metadata", RawSafetensors.Build(HeaderJson(fields, metadata), baseData));
            }
        }
    }

    /// <summary>The data of <paramref name="fields"/> alone, packed in order; their offsets are rewritten to match.</summary>
    byte[] Compact(List<Field> fields)
    {
        var data = new List<byte>();
        for (int i = 0; i < fields.Count; i++)
        {
            var o = JsonSerializer.Deserialize<long[]>(fields[i].Offsets)!;
            fields[i] = fields[i] with { Offsets = $"[{data.Count},{data.Count + (o[1] - o[0])}]" };
            data.AddRange(baseData[(int)o[0]..(int)o[1]]);
        }
        return [.. data];
    }
}
