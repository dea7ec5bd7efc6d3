using MetaLoraNative.Engine.IO;

namespace MetaLoraNative.Tests.IO;

public class SafetensorsCollectionTests
{
    private const string Shard1 = "diffusion_pytorch_model-00001-of-00002.safetensors";
    private const string Shard2 = "diffusion_pytorch_model-00002-of-00002.safetensors";
    private const string Index = "diffusion_pytorch_model.safetensors.index.json";

    /// <summary>A fake two-shard diffusers transformer folder: index json plus shard files.</summary>
    private static void WriteShards(TempDir dir, string? weightMapOverride = null)
    {
        SafetensorsWriter.Write(dir.File(Shard1),
            [new SafetensorsTensor("x_embedder.weight", [2, 2], [1f, 2f, 3f, 4f], SafetensorsDType.BF16),
             new SafetensorsTensor("x_embedder.bias", [2], [0.5f, -0.5f])],
            new Dictionary<string, string> { ["format"] = "pt" });
        SafetensorsWriter.Write(dir.File(Shard2),
            [new SafetensorsTensor("proj_out.weight", [1, 3], [7f, 8f, 9f], SafetensorsDType.F16)]);
        string weightMap = weightMapOverride ??
            $"\"x_embedder.weight\":\"{Shard1}\",\"x_embedder.bias\":\"{Shard1}\",\"proj_out.weight\":\"{Shard2}\"";
        File.WriteAllText(dir.File(Index), $"{{\"metadata\":{{\"total_size\":26}},\"weight_map\":{{{weightMap}}}}}");
    }

    [Fact]
    public void OpensShardedLayoutFromIndexOrFolder()
    {
        using var dir = new TempDir();
        WriteShards(dir);
        foreach (string path in new[] { dir.File(Index), dir.FullName })
        {
            using var c = SafetensorsCollection.Open(path);
            Assert.Equal(["proj_out.weight", "x_embedder.bias", "x_embedder.weight"], c.Names.Order(StringComparer.Ordinal));
            Assert.Equal([dir.File(Shard1), dir.File(Shard2)], c.Files);
            Assert.Equal("pt", c.Metadata["format"]);
            Assert.Equal(SafetensorsDType.F16, c.Entry("proj_out.weight").DType);
            Assert.Equal([1, 3], c.Entry("proj_out.weight").Shape);
            Assert.Equal([1f, 2f, 3f, 4f], c.ReadFloats("x_embedder.weight"));
            Assert.Equal([0.5f, -0.5f], c.ReadFloats("x_embedder.bias"));
            Assert.Equal([7f, 8f, 9f], c.ReadFloats("proj_out.weight"));
            Assert.True(c.Contains("proj_out.weight"));
            var e = Assert.Throws<KeyNotFoundException>(() => c.Entry("absent"));
            Assert.Contains("'absent'", e.Message);
            Assert.Contains(path, e.Message);
        }
    }

    [Fact]
    public void OpensSingleFileOrFolderWithOneFile()
    {
        using var dir = new TempDir();
        string path = dir.File("model.safetensors");
        SafetensorsWriter.Write(path, [new SafetensorsTensor("w", [2], [1f, 2f])], new Dictionary<string, string> { ["a"] = "b" });
        foreach (string p in new[] { path, dir.FullName })
        {
            using var c = SafetensorsCollection.Open(p);
            Assert.Equal([path], c.Files);
            Assert.Equal(["w"], c.Names);
            Assert.Equal("b", c.Metadata["a"]);
            Assert.Equal([1f, 2f], c.ReadFloats("w"));
        }
    }

    [Fact]
    public void AMissingShardIsAnErrorNamingTheIndexAndTheShard()
    {
        using var dir = new TempDir();
        WriteShards(dir);
        File.Delete(dir.File(Shard2));
        var e = Assert.Throws<SafetensorsFormatException>(() => SafetensorsCollection.Open(dir.FullName).Dispose());
        Assert.Equal(dir.File(Index), e.FilePath);
        Assert.Contains(dir.File(Index), e.Message);
        Assert.Contains($"shard file '{Shard2}'", e.Message);
        Assert.Contains("does not exist", e.Message);
    }

    [Fact]
    public void ANameMappedToAShardThatLacksItIsAnError()
    {
        using var dir = new TempDir();
        WriteShards(dir, $"\"x_embedder.weight\":\"{Shard1}\",\"proj_out.weight\":\"{Shard1}\"");
        var e = Assert.Throws<SafetensorsFormatException>(() => SafetensorsCollection.Open(dir.File(Index)).Dispose());
        Assert.Contains(dir.File(Index), e.Message);
        Assert.Contains("'proj_out.weight'", e.Message);
        Assert.Contains($"shard '{Shard1}', which does not contain it", e.Message);
    }

    [Fact]
    public void BrokenShardReportsTheShard()
    {
        using var dir = new TempDir();
        WriteShards(dir);
        File.WriteAllBytes(dir.File(Shard2), [1, 2, 3]);
        var e = Assert.Throws<SafetensorsFormatException>(() => SafetensorsCollection.Open(dir.File(Index)).Dispose());
        Assert.Equal(dir.File(Shard2), e.FilePath);
        Assert.Contains("truncated", e.Message);
    }

    [Theory]
    [InlineData("{\"weight_map\": [1]}", "no \"weight_map\" object")]
    [InlineData("{\"metadata\": {}}", "no \"weight_map\" object")]
    [InlineData("{\"weight_map\": {}}", "weight_map is empty")]
    [InlineData("{\"weight_map\": {\"a\": 3}}", "not a file name string")]
    [InlineData("{\"weight_map\": {\"a\": \"../model.safetensors\"}}", "not a plain file name")]
    [InlineData("{\"weight_map\": {\"a\": \"/etc/passwd\"}}", "not a plain file name")]
    [InlineData("{\"weight_map\": ", "not valid JSON")]
    public void AMalformedIndexIsAnErrorNamingTheFault(string json, string fault)
    {
        using var dir = new TempDir();
        string index = dir.File("model.safetensors.index.json");
        File.WriteAllText(index, json);
        var e = Assert.Throws<SafetensorsFormatException>(() => SafetensorsCollection.Open(index).Dispose());
        Assert.Contains(index, e.Message);
        Assert.Contains(fault, e.Message);
    }

    [Fact]
    public void AFolderWithNoneOrSeveralCheckpointsIsAnError()
    {
        using var dir = new TempDir();
        var empty = Assert.Throws<SafetensorsFormatException>(() => SafetensorsCollection.Open(dir.FullName));
        Assert.Contains(dir.FullName, empty.Message);
        Assert.Contains("no .safetensors file", empty.Message);

        SafetensorsWriter.Write(dir.File("a.safetensors"), [new SafetensorsTensor("w", [1], [1f])]);
        SafetensorsWriter.Write(dir.File("b.safetensors"), [new SafetensorsTensor("w", [1], [1f])]);
        var two = Assert.Throws<SafetensorsFormatException>(() => SafetensorsCollection.Open(dir.FullName));
        Assert.Contains("2 .safetensors files", two.Message);

        Assert.Throws<FileNotFoundException>(() => SafetensorsCollection.Open(dir.File("nothing-here")));
    }
}
