using System.Text;
using MetaLoraNative.Engine.IO;

namespace MetaLoraNative.Tests.IO;

/// <summary>One test per documented fault: each must be a SafetensorsFormatException naming the file and the fault.</summary>
public class SafetensorsErrorTests
{
    private const string Good = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";

    private static void AssertFault(byte[] bytes, params string[] faultWords)
    {
        using var dir = new TempDir();
        string path = RawSafetensors.Write(dir, "bad.safetensors", bytes);
        var e = Assert.Throws<SafetensorsFormatException>(() => SafetensorsFile.Open(path).Dispose());
        Assert.Equal(path, e.FilePath);
        Assert.Contains(path, e.Message);
        foreach (string word in faultWords) Assert.Contains(word, e.Message);
    }

    private static void AssertHeaderFault(string header, int dataBytes, params string[] faultWords) =>
        AssertFault(RawSafetensors.Build(header, new byte[dataBytes]), faultWords);

    private static string Entry(string name, string dtype, string shape, string offsets) =>
        $"\"{name}\":{{\"dtype\":{dtype},\"shape\":{shape},\"data_offsets\":{offsets}}}";

    [Fact]
    public void ValidBaseFileOpens()
    {
        using var dir = new TempDir();
        string path = RawSafetensors.Write(dir, "ok.safetensors", RawSafetensors.Build(Good, RawSafetensors.F32(1, 2)));
        using var f = SafetensorsFile.Open(path);
        Assert.Equal([1f, 2f], f.ReadFloats("w"));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(5)]
    public void FileShorterThanEightBytes(int length) => AssertFault(new byte[length], "truncated", $"{length} bytes");

    [Fact]
    public void HeaderLengthBeyondFile() =>
        AssertFault(RawSafetensors.Build(Good, new byte[8], headerLengthOverride: 1000), "header length 1000", "beyond the end");

    [Fact]
    public void HeaderLengthAbsurdlyLarge() =>
        AssertFault(RawSafetensors.Build(Good, new byte[8], headerLengthOverride: ulong.MaxValue), "header length 18446744073709551615", "absurdly large");

    [Fact]
    public void HeaderNotUtf8()
    {
        byte[] header = Encoding.UTF8.GetBytes(Good);
        header[2] = 0xFF; // the name "w" becomes a lone 0xFF, never valid in UTF-8
        AssertFault(RawSafetensors.Build(header, new byte[8]), "not valid UTF-8");
    }

    [Fact]
    public void HeaderNotJson() => AssertHeaderFault("{\"w\": {\"dtype\": ", 0, "not valid JSON");

    [Fact]
    public void HeaderJsonNotAnObject() => AssertHeaderFault("[1, 2, 3]", 0, "an array, not an object");

    [Fact]
    public void EntryNotAnObject() => AssertHeaderFault("{\"w\": 3}", 0, "'w'", "a number, not an object");

    [Theory]
    [InlineData("dtype", "{\"w\":{\"shape\":[2],\"data_offsets\":[0,8]}}")]
    [InlineData("shape", "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}")]
    [InlineData("data_offsets", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2]}}")]
    public void EntryMissingKey(string key, string header) => AssertHeaderFault(header, 8, "'w'", $"has no \"{key}\"");

    [Theory]
    [InlineData("\"F7\"", "unknown dtype 'F7'")]
    [InlineData("\"f32\"", "unknown dtype 'f32'")]   // case matters in the format
    [InlineData("\"1\"", "unknown dtype '1'")]       // numeric enum names must not parse
    [InlineData("32", "not a string")]
    public void UnknownDtype(string dtype, string fault) =>
        AssertHeaderFault("{" + Entry("w", dtype, "[2]", "[0,8]") + "}", 8, "'w'", fault);

    [Theory]
    [InlineData("[-2]")]
    [InlineData("[2.5]")]
    [InlineData("[\"2\"]")]
    [InlineData("[null]")]
    [InlineData("[1e400]")]
    public void ShapeDimensionNotNonNegativeInteger(string shape) =>
        AssertHeaderFault("{" + Entry("w", "\"F32\"", shape, "[0,8]") + "}", 8, "'w'", "shape dimension", "not a non-negative integer");

    [Fact]
    public void ShapeNotAnArray() => AssertHeaderFault("{" + Entry("w", "\"F32\"", "2", "[0,8]") + "}", 8, "'w'", "not an array");

    [Fact]
    public void ShapeDimensionAboveInt32() =>
        AssertHeaderFault("{" + Entry("w", "\"F32\"", "[4294967296]", "[0,8]") + "}", 8, "'w'", "larger than 2147483647");

    [Fact]
    public void NumelOverflow() =>
        AssertHeaderFault("{" + Entry("w", "\"F32\"", "[2147483647,2147483647,2147483647]", "[0,8]") + "}", 8, "'w'", "overflows");

    [Fact]
    public void ZeroDimensionIsNotAnOverflow()
    {
        using var dir = new TempDir();
        string header = "{" + Entry("w", "\"F32\"", "[2147483647,2147483647,2147483647,0]", "[0,0]") + "}";
        string path = RawSafetensors.Write(dir, "z.safetensors", RawSafetensors.Build(header, []));
        using var f = SafetensorsFile.Open(path);
        Assert.Empty(f.ReadFloats("w"));
    }

    [Theory]
    [InlineData("[0]")]
    [InlineData("[0,4,8]")]
    [InlineData("[-1,7]")]
    [InlineData("[0,\"8\"]")]
    [InlineData("[0,8.0]")]
    [InlineData("[0,99999999999999999999999]")]
    [InlineData("{\"begin\":0}")]
    public void OffsetsNotTwoNonNegativeIntegers(string offsets) =>
        AssertHeaderFault("{" + Entry("w", "\"F32\"", "[2]", offsets) + "}", 8, "'w'", "not two non-negative integers");

    [Fact]
    public void OffsetsBeginAfterEnd() =>
        AssertHeaderFault("{" + Entry("w", "\"F32\"", "[0]", "[8,0]") + "}", 8, "'w'", "[8, 0]", "begin after end");

    [Fact]
    public void OffsetsBeyondDataSection() =>
        AssertHeaderFault("{" + Entry("w", "\"F32\"", "[2]", "[4,12]") + "}", 8, "'w'", "beyond the data section of 8 bytes");

    [Fact]
    public void OverlappingTensorsNameBoth() =>
        AssertHeaderFault("{" + Entry("a", "\"F32\"", "[2]", "[0,8]") + "," + Entry("b", "\"F32\"", "[2]", "[4,12]") + "}", 12,
            "'a' [0, 8)", "'b' [4, 12)", "overlaps", "at data offset 4");

    // The reference safetensors library's rule: the tensors tile the data section exactly.
    [Fact]
    public void GapInDataSectionNamesItsOffset() =>
        AssertHeaderFault("{" + Entry("a", "\"F32\"", "[1]", "[0,4]") + "," + Entry("b", "\"F32\"", "[1]", "[8,12]") + "}", 12,
            "gap at offset 4", "[4, 8)", "'b'");

    [Fact]
    public void DataSectionNotStartingAtZeroIsAGap() =>
        AssertHeaderFault("{" + Entry("w", "\"F32\"", "[1]", "[4,8]") + "}", 8, "gap at offset 0", "[0, 4)");

    [Fact]
    public void TrailingBytesAfterTheLastTensor() =>
        AssertHeaderFault(Good, 11, "3 trailing bytes at offset 8", "belong to no tensor");

    [Fact]
    public void EmptyTensorsMaySitAnywhereInside()
    {
        using var dir = new TempDir();
        string header = "{" + Entry("w", "\"F32\"", "[2]", "[0,8]") + "," + Entry("e", "\"F32\"", "[0]", "[4,4]") + "}";
        string path = RawSafetensors.Write(dir, "e.safetensors", RawSafetensors.Build(header, RawSafetensors.F32(1, 2)));
        using var f = SafetensorsFile.Open(path);
        Assert.Equal([1f, 2f], f.ReadFloats("w"));
        Assert.Empty(f.ReadFloats("e"));
    }

    [Fact]
    public void ByteRangeNotShapeTimesDtypeSize() =>
        AssertHeaderFault("{" + Entry("w", "\"BF16\"", "[3]", "[0,8]") + "}", 8, "'w'", "spans 8 bytes", "needs 6");

    [Fact]
    public void MetadataValueNotString() =>
        AssertHeaderFault("{\"__metadata__\":{\"steps\":100}," + Good[1..], 8, "metadata value", "'steps'", "not a string");

    [Fact]
    public void MetadataNotObject() =>
        AssertHeaderFault("{\"__metadata__\":[\"x\"]," + Good[1..], 8, "__metadata__", "not an object");

    [Fact]
    public void DuplicateTensorNames() =>
        AssertHeaderFault("{" + Entry("w", "\"F32\"", "[1]", "[0,4]") + "," + Entry("w", "\"F32\"", "[1]", "[4,8]") + "}", 8,
            "duplicate tensor name 'w'");

    [Fact]
    public void MissingFileIsNotAFormatError()
    {
        using var dir = new TempDir();
        Assert.Throws<FileNotFoundException>(() => SafetensorsFile.Open(dir.File("absent.safetensors")));
    }
}
