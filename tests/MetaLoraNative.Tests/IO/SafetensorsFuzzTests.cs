using MetaLoraNative.Engine.IO;
using MetaLoraNative.Tests.Errors;
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

    private static byte[] BaseData()
    {
        var rng = new Random(7);
        var data = new byte[51];
        rng.NextBytes(data);
        return data;
    }

    // The mutations themselves (8 families, index % 8) live in the one shared mutator.
    private static readonly SafetensorsMutator Mutator = new(BaseFields(), BaseMetadata, BaseData());

    private static (string Kind, byte[] Bytes) Mutate(int index) => Mutator.Mutate(index);

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
        string basePath = RawSafetensors.Write(dir, "base.safetensors", Mutator.Valid);
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
