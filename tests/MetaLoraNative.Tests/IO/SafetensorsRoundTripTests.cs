using System.Buffers.Binary;
using System.Text;
using MetaLoraNative.Engine.IO;

namespace MetaLoraNative.Tests.IO;

public class SafetensorsRoundTripTests
{
    private static float[] Values(int n, int seed)
    {
        var rng = new Random(seed);
        var v = new float[n];
        for (int i = 0; i < n; i++) v[i] = (float)(rng.NextDouble() * 200 - 100);
        return v;
    }

    private static float Expected(float f, SafetensorsDType dtype) => dtype switch
    {
        SafetensorsDType.F16 => (float)(Half)f,
        SafetensorsDType.BF16 => HalfPrecision.BFloat16ToFloat(HalfPrecision.FloatToBFloat16(f)),
        _ => f,
    };

    [Theory]
    [InlineData(SafetensorsDType.F32)]
    [InlineData(SafetensorsDType.F16)]
    [InlineData(SafetensorsDType.BF16)]
    [InlineData(SafetensorsDType.F64)]
    public void RoundTripsValuesShapesAndMetadata(SafetensorsDType dtype)
    {
        using var dir = new TempDir();
        string path = dir.File("t.safetensors");
        var tensors = new[]
        {
            new SafetensorsTensor("matrix", [3, 4], Values(12, 1), dtype),
            new SafetensorsTensor("scalar", [], [1.25f], dtype),
            new SafetensorsTensor("empty", [0], [], dtype),
            new SafetensorsTensor("empty.3d", [2, 0, 3], [], dtype),
            new SafetensorsTensor("vec", [5], [0f, -0f, 1e-3f, 65000f, -3.5f], dtype),
        };
        var metadata = new Dictionary<string, string> { ["format"] = "pt", ["note"] = "ünïcode + \"quotes\"" };
        SafetensorsWriter.Write(path, tensors, metadata);

        using var file = SafetensorsFile.Open(path);
        Assert.Equal(metadata, file.Metadata);
        Assert.Equal(tensors.Length, file.Entries.Count);
        foreach (var t in tensors)
        {
            var e = file[t.Name];
            Assert.Equal(dtype, e.DType);
            Assert.Equal(t.Shape, e.Shape);
            Assert.Equal(t.Data.Length * SafetensorsDTypes.Size(dtype), e.ByteLength);
            Assert.Equal(t.Data.Select(v => Expected(v, dtype)).ToArray(), file.ReadFloats(t.Name));
        }
        // Nothing but the file itself is left in the folder.
        Assert.Equal(["t.safetensors"], dir.Listing());
    }

    [Fact]
    public void WritesAlignedDeterministicHeaderWithScalarShapes()
    {
        using var dir = new TempDir();
        var a = new SafetensorsTensor("a", [], [1f]);
        var b = new SafetensorsTensor("b", [2], [2f, 3f], SafetensorsDType.BF16);
        var c = new SafetensorsTensor("c", [1, 1], [4f], SafetensorsDType.F16);
        SafetensorsWriter.Write(dir.File("1.safetensors"), [c, a, b]);
        SafetensorsWriter.Write(dir.File("2.safetensors"), [b, c, a]);
        byte[] one = File.ReadAllBytes(dir.File("1.safetensors"));
        Assert.Equal(one, File.ReadAllBytes(dir.File("2.safetensors")));

        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(one);
        Assert.Equal(0ul, n % 8);
        string header = Encoding.UTF8.GetString(one, 8, (int)n);
        Assert.StartsWith("{\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},\"b\":", header);
        Assert.EndsWith("}", header.TrimEnd(' '));
        Assert.InRange(header.Length - header.TrimEnd(' ').Length, 0, 7);   // only space padding, less than 8
        Assert.Equal(8 + (long)n + 4 + 4 + 2, one.Length);
    }

    [Fact]
    public void ReadsHandBuiltF8AndIntegerTensorsFromSpacePaddedHeader()
    {
        using var dir = new TempDir();
        string header =
            "{\"__metadata__\":{\"k\":\"v\"}," +
            "\"f8\":{\"dtype\":\"F8_E4M3\",\"shape\":[2,3],\"data_offsets\":[0,6]}," +
            "\"i32\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[6,14]}," +
            "\"i64\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[14,22]}," +
            "\"u8\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[22,24]}," +
            "\"flag\":{\"dtype\":\"BOOL\",\"shape\":[3],\"data_offsets\":[24,27]}}" + new string(' ', 13);
        var data = new List<byte> { 0x38, 0x7E, 0x01, 0xB8, 0x00, 0x3C };
        data.AddRange(BitConverter.GetBytes(-7)); data.AddRange(BitConverter.GetBytes(123456));
        data.AddRange(BitConverter.GetBytes(-5_000_000_000L));
        data.AddRange(new byte[] { 0, 255 });
        data.AddRange(new byte[] { 0, 1, 2 });
        string path = RawSafetensors.Write(dir, "hand.safetensors", RawSafetensors.Build(header, data.ToArray()));

        using var file = SafetensorsFile.Open(path);
        Assert.Equal("v", file.Metadata["k"]);
        Assert.Equal(SafetensorsDType.F8_E4M3, file["f8"].DType);
        Assert.Equal([1f, 448f, 0.001953125f, -1f, 0f, 1.5f], file.ReadFloats("f8"));
        Assert.Equal([-7f, 123456f], file.ReadFloats("i32"));
        Assert.Equal([-5e9f], file.ReadFloats("i64"));
        Assert.Equal([0f, 255f], file.ReadFloats("u8"));
        Assert.Equal([0f, 1f, 1f], file.ReadFloats("flag"));
        Assert.Equal(new byte[] { 0x38, 0x7E, 0x01, 0xB8, 0x00, 0x3C }, file.RawBytes("f8").ToArray());
    }

    [Fact]
    public void UnalignedF32AndBF16DataDecodes()
    {
        // A 1-byte tensor first pushes the next ones off 4-byte alignment within the mapping.
        using var dir = new TempDir();
        var data = new List<byte> { 9 };
        data.AddRange(RawSafetensors.F32(1.5f, -2f));
        data.AddRange(BitConverter.GetBytes((ushort)0x3F80)); data.AddRange(BitConverter.GetBytes((ushort)0xC040));
        string header = "{\"u\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}," +
                        "\"f\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[1,9]}," +
                        "\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[9,13]}}";
        string path = RawSafetensors.Write(dir, "u.safetensors", RawSafetensors.Build(header, data.ToArray()));
        using var file = SafetensorsFile.Open(path);
        Assert.Equal([1.5f, -2f], file.ReadFloats("f"));
        Assert.Equal([1f, -3f], file.ReadFloats("b"));
    }

    [Fact]
    public void LookupAndDestinationErrorsNameFileAndTensor()
    {
        using var dir = new TempDir();
        string path = dir.File("x.safetensors");
        SafetensorsWriter.Write(path, [new SafetensorsTensor("w", [2], [1f, 2f])]);
        using var file = SafetensorsFile.Open(path);
        Assert.True(file.Contains("w"));
        Assert.False(file.Contains("nope"));
        var missing = Assert.Throws<KeyNotFoundException>(() => file["nope"]);
        Assert.Contains(path, missing.Message);
        Assert.Contains("'nope'", missing.Message);
        Assert.Throws<KeyNotFoundException>(() => file.ReadFloats("nope"));
        var wrong = Assert.Throws<ArgumentException>(() => file.ReadFloats("w", new float[3]));
        Assert.Contains(path, wrong.Message);
        file.Dispose();
        Assert.Throws<ObjectDisposedException>(() => file.RawBytes("w").Length);
    }

    [Fact]
    public void WriterRejectsF8AndInconsistentTensors()
    {
        using var dir = new TempDir();
        string path = dir.File("w.safetensors");
        var f8 = Assert.Throws<NotSupportedException>(() =>
            SafetensorsWriter.Write(path, [new SafetensorsTensor("q", [1], [1f], SafetensorsDType.F8_E4M3)]));
        Assert.Contains("F8_E4M3", f8.Message);
        Assert.Contains("'q'", f8.Message);
        Assert.Throws<NotSupportedException>(() =>
            SafetensorsWriter.Write(path, [new SafetensorsTensor("i", [1], [1f], SafetensorsDType.I32)]));
        Assert.Throws<ArgumentException>(() => SafetensorsWriter.Write(path, [new SafetensorsTensor("s", [2, 2], [1f])]));
        Assert.Throws<ArgumentException>(() => SafetensorsWriter.Write(path, [new SafetensorsTensor("n", [-1], [])]));
        Assert.Throws<ArgumentException>(() =>
            SafetensorsWriter.Write(path, [new SafetensorsTensor("d", [1], [1f]), new SafetensorsTensor("d", [1], [2f])]));
        Assert.Throws<ArgumentException>(() => SafetensorsWriter.Write(path, [new SafetensorsTensor("__metadata__", [1], [1f])]));
        Assert.Empty(dir.Listing());
    }

    private static IEnumerable<SafetensorsTensor> ThrowsAfterOne()
    {
        yield return new SafetensorsTensor("new", [1], [42f]);
        throw new InvalidOperationException("producer failed");
    }

    [Fact]
    public void FailedWriteLeavesOldFileIntactAndNoTempFiles()
    {
        using var dir = new TempDir();
        string path = dir.File("model.safetensors");
        SafetensorsWriter.Write(path, [new SafetensorsTensor("old", [2], [1f, 2f])], new Dictionary<string, string> { ["v"] = "1" });
        byte[] before = File.ReadAllBytes(path);

        var e = Assert.Throws<InvalidOperationException>(() => SafetensorsWriter.Write(path, ThrowsAfterOne()));
        Assert.Equal("producer failed", e.Message);
        Assert.Equal(before, File.ReadAllBytes(path));
        Assert.Equal(["model.safetensors"], dir.Listing());

        // A validation failure after some tensors were accepted behaves the same.
        Assert.Throws<NotSupportedException>(() => SafetensorsWriter.Write(path,
            [new SafetensorsTensor("a", [1], [1f]), new SafetensorsTensor("b", [1], [1f], SafetensorsDType.F8_E4M3)]));
        Assert.Equal(before, File.ReadAllBytes(path));
        Assert.Equal(["model.safetensors"], dir.Listing());

        // And a successful write replaces it, even while the old version is still mapped by a reader.
        using (var old = SafetensorsFile.Open(path))
        {
            SafetensorsWriter.Write(path, [new SafetensorsTensor("new", [1], [7f])]);
            Assert.Equal([1f, 2f], old.ReadFloats("old"));
        }
        using var updated = SafetensorsFile.Open(path);
        Assert.Equal([7f], updated.ReadFloats("new"));
        Assert.Equal(["model.safetensors"], dir.Listing());
    }
}
