using MetaLoraNative.Engine.Flux;

namespace MetaLoraNative.Tests.Model;

/// <summary>The deterministic generator must give the values tools/reference documents, bit for bit.</summary>
public class RandomWeightsTests
{
    [Theory]
    [InlineData("img_in.weight", 0UL, 0x18fcf03602c9bb54UL, new[] { 0x3dd06126u, 0x3d4cd8a0u, 0x3b837940u, 0xbc1dde30u })]
    [InlineData("double_blocks.0.img_attn.norm.query_norm.scale", 42UL, 0xca901d2d26e8b3d5UL, new[] { 0x3f869e67u, 0x3f8197f2u, 0x3f73b0f9u, 0x3f896348u })]
    [InlineData("txt_in.bias", 7UL, 0x75a705817c44fb89UL, new[] { 0xbc359d0fu, 0xbc73e5a3u, 0x3c86a6ebu, 0xbc40b4b5u })]
    public void GeneratorMatchesTheReferenceCheckValues(string name, ulong seed, ulong key, uint[] bits)
    {
        Assert.Equal(key, RandomWeights.Fnv1a64(name) ^ (seed * 0x9E3779B97F4A7C15UL));
        var shape = FluxConfig.FluxDev.TensorShapes().Single(t => t.Name == name).Shape;
        var values = new float[4];
        // only the first values are needed: fill a 4-element prefix with the tensor's rule
        int[] prefixShape = shape.Length == 2 ? [1, shape[1]] : [shape[0]];
        var full = RandomWeights.Tensor(name, prefixShape, seed);
        Array.Copy(full, values, 4);
        Assert.Equal(bits, values.Select(BitConverter.SingleToUInt32Bits).ToArray());
    }
}
