using System.Text.Json;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Tests.Testing;

namespace MetaLoraNative.Tests.Model;

/// <summary>BFL and diffusers checkpoints load to the same weights; bad checkpoints fail with the tensor's name.</summary>
public sealed class CheckpointLayoutTests() : TempFolderTest("ckpt")
{
    /// <summary>Writes tiny random weights as a 2-shard diffusers transformer (split per the name table) under dir.</summary>
    internal static string WriteDiffusers(string dir, FluxConfig c, ulong seed)
    {
        var bfl = c.TensorShapes().ToDictionary(t => t.Name, t => (t.Shape, Data: RandomWeights.Tensor(t.Name, t.Shape, seed)));
        var parts = new List<SafetensorsTensor>();
        foreach (var rule in FluxNames.Rules(c))
            foreach (var suffix in rule.IsScale ? [""] : new[] { ".weight", ".bias" })
            {
                var (shape, data) = bfl[rule.Bfl + suffix];
                string Name(string d) => rule.IsScale ? d : d + suffix;
                int rowWidth = shape.Length == 2 ? shape[1] : 1;
                switch (rule.Join)
                {
                    case NameJoin.Direct:
                        parts.Add(new(Name(rule.Diffusers[0]), shape, data));
                        break;
                    case NameJoin.SwapHalves:
                        int half = data.Length / 2;
                        parts.Add(new(Name(rule.Diffusers[0]), shape, [.. data[half..], .. data[..half]]));
                        break;
                    default:
                        int row = 0;
                        for (int k = 0; k < rule.Diffusers.Length; k++)
                        {
                            int rows = rule.RowSizes![k];
                            int[] s = shape.Length == 2 ? [rows, shape[1]] : [rows];
                            parts.Add(new(Name(rule.Diffusers[k]), s, data[(row * rowWidth)..((row + rows) * rowWidth)]));
                            row += rows;
                        }
                        break;
                }
            }
        string folder = Path.Combine(dir, "transformer");
        Directory.CreateDirectory(folder);
        var shards = new[] { "diffusion_pytorch_model-00001-of-00002.safetensors", "diffusion_pytorch_model-00002-of-00002.safetensors" };
        var map = new Dictionary<string, string>();
        for (int s = 0; s < 2; s++)
        {
            var mine = parts.Where((_, i) => i % 2 == s).ToList();
            SafetensorsWriter.Write(Path.Combine(folder, shards[s]), mine, s == 0 ? c.ToMetadata() : null);
            foreach (var t in mine) map[t.Name] = shards[s];
        }
        File.WriteAllText(Path.Combine(folder, "diffusion_pytorch_model.safetensors.index.json"),
            "{\"metadata\": {}, \"weight_map\": {" + string.Join(",", map.Select(kv => $"\"{kv.Key}\": \"{kv.Value}\"")) + "}}");
        return folder;
    }

    [Fact]
    public void DiffusersAndBflLayoutsLoadToTheSameWeights()
    {
        using var be = CpuBackend.F32();
        var c = FluxConfig.Tiny;
        string folder = WriteDiffusers(dir, c, 8);
        using var fromDiffusers = FluxLoader.Load(folder, be);
        using var random = FluxWeights.Random(c, be, 8);
        string bflPath = Path.Combine(dir, "flux-bfl.safetensors");
        FluxLoader.Save(random, bflPath);
        using var fromBfl = FluxLoader.Load(bflPath, be);
        Assert.Equal("tiny", fromDiffusers.Config.Name);
        foreach (var (name, _) in c.TensorShapes())
        {
            Assert.Equal(be.Download(random[name]), be.Download(fromDiffusers[name]));
            Assert.Equal(be.Download(random[name]), be.Download(fromBfl[name]));
        }
    }

    [Fact]
    public void AWrongShapeFailsAtLoadNamingTheTensor()
    {
        using var be = CpuBackend.F32();
        var c = FluxConfig.Micro;
        var tensors = c.TensorShapes().Select(t => t.Name == "double_blocks.0.img_mlp.2.bias"
            ? new SafetensorsTensor(t.Name, [t.Shape[0] + 1], new float[t.Shape[0] + 1])
            : new SafetensorsTensor(t.Name, t.Shape, new float[Engine.Shapes.Numel(t.Shape)])).ToList();
        string path = Path.Combine(dir, "bad.safetensors");
        SafetensorsWriter.Write(path, tensors, c.ToMetadata());
        var e = Assert.Throws<InvalidDataException>(() => FluxLoader.Load(path, be));
        Assert.Contains("double_blocks.0.img_mlp.2.bias", e.Message);
        Assert.Contains(path, e.Message);
    }

    [Fact]
    public void AskingForAnotherModelThanTheFileHoldsFails()
    {
        using var be = CpuBackend.F32();
        using var w = FluxWeights.Random(FluxConfig.Micro, be, 1);
        string path = Path.Combine(dir, "micro.safetensors");
        FluxLoader.Save(w, path);
        var e = Assert.Throws<InvalidDataException>(() => FluxLoader.Load(path, be, FluxConfig.FluxDev));
        Assert.Contains("flux-dev", e.Message);
    }
}
