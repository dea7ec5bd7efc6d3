using System.Buffers.Binary;
using System.Text;
using MetaLoraNative.Engine.IO;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.IO;

/// <summary>
/// Deterministic mutation fuzzing of a valid multi-dtype file. The contract under test: opening a damaged file and
/// reading every tensor either succeeds or throws <see cref="SafetensorsFormatException"/>; any other exception, a
/// hang, or an allocation out of proportion to the (tiny) file fails the case.
/// </summary>
public class SafetensorsFuzzTests(ITestOutputHelper output)
{
    private const int Cases = 600;
    private static readonly TimeSpan CaseTimeout = TimeSpan.FromSeconds(5);
    // The base file is under 1 KB; anything allocating megabytes trusted a size it should not have.
    private const long AllocationLimit = 8L << 20;

    /// <summary>One tensor's header fields as raw JSON text, so a mutation can replace any of them with anything.</summary>
    private sealed record Field(string Name, string DType, string Shape, string Offsets);

    private static List<Field> BaseFields() =>
    [
        new("f32", "\"F32\"", "[2,3]", "[0,24]"),
        new("bf16", "\"BF16\"", "[4]", "[24,32]"),
        new("f16.scalar", "\"F16\"", "[]", "[32,34]"),
        new("f8", "\"F8_E4M3\"", "[3]", "[34,37]"),
        new("flag", "\"BOOL\"", "[2]", "[37,39]"),
        new("i64", "\"I64\"", "[1]", "[39,47]"),
        new("empty", "\"F32\"", "[0,5]", "[47,47]"),
        new("i32", "\"I32\"", "[1,1]", "[47,51]"),
    ];

    private const string BaseMetadata = "\"__metadata__\":{\"format\":\"pt\",\"step\":\"100\"}";

    private static string HeaderJson(IEnumerable<Field> fields, string metadata = BaseMetadata) =>
        "{" + string.Join(",", (metadata.Length > 0 ? new[] { metadata } : []).Concat(
            fields.Select(f => $"\"{f.Name}\":{{\"dtype\":{f.DType},\"shape\":{f.Shape},\"data_offsets\":{f.Offsets}}}"))) + "}";

    private static byte[] BaseData()
    {
        var rng = new Random(7);
        var data = new byte[51];
        rng.NextBytes(data);
        return data;
    }

    private static readonly string[] WildNumbers =
    [
        "-1", "0", "1", "3", "8", "51", "52", "2147483647", "2147483648", "4294967296", "9007199254740993",
        "9223372036854775807", "9223372036854775808", "18446744073709551615", "99999999999999999999999999",
        "1e308", "1e400", "-0", "1.5", "-1e-300", "1E2", "-9223372036854775808",
    ];

    private static readonly string[] WildValues =
    [
        "\"x\"", "null", "true", "false", "[]", "{}", "[[1]]", "\"F32\"", "\"BF16\"", "\"F8_E4M3\"", "\"U8\"", "\"\"",
        "\"F8_E5M2\"", "[65536,65536,65536]", "[1,2,3,4,5,6,7,8,9,10]", "[2147483647,2147483647]", "[0,9223372036854775807]",
        "[9223372036854775807,9223372036854775807]", "[-5,-1]", "[0,0]", "[51,0]",
        new string('[', 100) + new string(']', 100),   // deeper than the parser allows
        "{\"dtype\":\"F32\"}", "\"\\u0000\\ud800\"",
    ];

    private static string Wild(Random rng)
    {
        int pick = rng.Next(4);
        if (pick == 0) return WildNumbers[rng.Next(WildNumbers.Length)];
        if (pick == 1) return WildValues[rng.Next(WildValues.Length)];
        int n = rng.Next(4);
        return "[" + string.Join(",", Enumerable.Range(0, n).Select(_ => WildNumbers[rng.Next(WildNumbers.Length)])) + "]";
    }

    private static byte[] Build(string header, byte[] data, ulong? lengthField = null) => RawSafetensors.Build(header, data, lengthField);

    /// <summary>Builds mutated file number <paramref name="index"/>; the same index always gives the same bytes.</summary>
    private static (string Kind, byte[] Bytes) Mutate(int index)
    {
        var rng = new Random(1000 + index);
        var fields = BaseFields();
        byte[] data = BaseData();
        byte[] valid = Build(HeaderJson(fields), data);
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
                return ("length field", Build(HeaderJson(fields), data, choices[rng.Next(choices.Length)]));
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
                return ("json value", Build(HeaderJson(fields), data));
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
                return ("json structure", Build(json, data));
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
                        return ("padding", Build(padded, data));
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

    private enum Outcome { Opened, Rejected }

    private static Outcome OpenAndReadEverything(string path)
    {
        try
        {
            using var file = SafetensorsFile.Open(path);
            foreach (var (name, entry) in file.Entries)
            {
                float[] values = file.ReadFloats(name);
                Assert.Equal(entry.ElementCount, values.Length);
                Assert.Equal(entry.ByteLength, file.RawBytes(name).Length);
                Assert.InRange(file.DataStart + entry.End, 0, file.FileLength);
            }
            _ = file.Metadata.Count;
            return Outcome.Opened;
        }
        catch (SafetensorsFormatException e)
        {
            Assert.Contains(path, e.Message);
            return Outcome.Rejected;
        }
    }

    [Fact]
    public async Task MutatedFilesOpenOrFailWithFormatException()
    {
        using var dir = new TempDir();
        // The unmutated file must open, or every rejection below would be meaningless.
        string basePath = RawSafetensors.Write(dir, "base.safetensors", Build(HeaderJson(BaseFields()), BaseData()));
        Assert.Equal(Outcome.Opened, OpenAndReadEverything(basePath));

        var tally = new Dictionary<(string, Outcome), int>();
        var failures = new List<string>();
        for (int i = 0; i < Cases; i++)
        {
            var (kind, bytes) = Mutate(i);
            string path = RawSafetensors.Write(dir, $"case-{i}.safetensors", bytes);
            var run = Task.Run(() =>
            {
                long before = GC.GetAllocatedBytesForCurrentThread();
                try
                {
                    var outcome = OpenAndReadEverything(path);
                    long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
                    return allocated > AllocationLimit ? $"allocated {allocated} bytes" : (object)outcome;
                }
                catch (Exception e)
                {
                    return $"{e.GetType().Name}: {e.Message}";
                }
            });
            object result;
            try
            {
                result = await run.WaitAsync(CaseTimeout);
            }
            catch (TimeoutException)
            {
                failures.Add($"case {i} ({kind}): no result within {CaseTimeout.TotalSeconds} s");
                continue;
            }
            if (result is Outcome o)
            {
                tally[(kind, o)] = tally.GetValueOrDefault((kind, o)) + 1;
                File.Delete(path);
            }
            else failures.Add($"case {i} ({kind}): {result}");
        }

        foreach (var ((kind, outcome), count) in tally.OrderBy(kv => kv.Key.Item1).ThenBy(kv => kv.Key.Item2))
            output.WriteLine($"{kind,-18} {outcome,-9} {count}");
        Assert.True(failures.Count == 0, string.Join("\n", failures));
        // The mutations must actually reach the validator: every kind gets rejected sometimes, and data-only
        // damage is still readable.
        foreach (string kind in new[] { "header byte flips", "truncation", "length field", "json value", "json structure", "stacked" })
            Assert.True(tally.GetValueOrDefault((kind, Outcome.Rejected)) > 0, $"no '{kind}' case was rejected");
        Assert.True(tally.GetValueOrDefault(("byte flips", Outcome.Opened)) > 0, "no data-only flip was read back");
        Assert.True(tally.GetValueOrDefault(("padding", Outcome.Opened)) > 0, "space padding was never accepted");
    }
}
