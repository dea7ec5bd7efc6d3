using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Kernels;

/// <summary>
/// The memsets IBackend.Empty takes out of a steady flux-dev Stage-2 step at 1024² (batch 1, 512 text tokens, 494
/// targets in 304 modules, r1 16, r2 1, recomputation off), counted on the shape-only backend against the same step
/// with every Empty counted as the Zeros it was (<see cref="GemmRoutingTests.ShapeBackend.EmptyAsZeros"/>). The
/// expected drop is derived from the sites, times the blocks and modules they run in:
/// - every single block: the backward's dx (a copy of dy now, not a memset and an add);
/// - every double block: dx1 = dOut per stream (a copy), or with residual-norm at B 1 the joint d-attention buffer;
/// - gelu: the single block's cat and dlin1 (filled by strided "=" copies and the strided GELU);
/// - qkv: the joint q, k, v of every block and each stream's d qkv (with gelu too, the single block's fused op writes
///   d qkv straight into dlin1's columns: no d qkv tensor there, Empty or Zeros);
/// - the fused LoRA: per module dmid, G and A (grouped: dmid only, A and G are kept from step to step).
/// docs/PERF.md ("Uninitialised allocation") quotes the printed figures.
/// </summary>
public class UninitialisedAllocationCountTests(ITestOutputHelper output)
{
    const int Resolution = 1024, TextTokens = 512;

    public static TheoryData<int, string> Cases()
    {
        var data = new TheoryData<int, string>();
        for (int f = 0; f <= (int)Fusions.All; f++)
            foreach (var path in new[] { "stacked", "fused", "grouped" })
                data.Add(f, path);
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void EmptyTakesOutTheMemsetsOfEveryFullyWrittenBuffer(int fusionBits, string path)
    {
        var f = (Fusions)fusionBits;
        var lora = path == "stacked" ? LoraPath.Stacked : LoraPath.Fused;
        bool grouped = path == "grouped";
        var (before, _, modules) = GemmRoutingTests.Stage2Step(Resolution, lora, grouped, steps: 2, fusions: f, emptyAsZeros: true);
        var (after, _, _) = GemmRoutingTests.Stage2Step(Resolution, lora, grouped, steps: 2, fusions: f);

        var c = FluxConfig.FluxDev;
        int D = c.Depth, S = c.DepthSingleBlocks;
        long C = c.HiddenSize, m = c.MlpHiddenDim, N = Resolution * Resolution / 256 + TextTokens;
        bool residualNorm = f.HasFlag(Fusions.ResidualNorm), gelu = f.HasFlag(Fusions.GeluEpilogue), qkv = f.HasFlag(Fusions.QkvNormRope);
        // sites × blocks: single dx; double dx1 per stream or the joint buffer; gelu cat, dlin1; qkv joint q, k, v, d qkv
        int model = S + (residualNorm ? D : 2 * D) + (gelu ? 2 * S : 0) + (qkv ? 3 * (D + S) + 2 * D + (gelu ? 0 : S) : 0);
        int loraSites = lora == LoraPath.Stacked ? 0 : grouped ? modules : 3 * modules;
        // bf16 bytes of the model's sites: E = N·C·2 (a double block's two streams, or a single block's joint sequence)
        long E = N * C * 2;
        long modelBytes = S * E + D * E + (gelu ? S * N * (C + m) * 2 + S * N * (3 * C + m) * 2 : 0) + (qkv ? (D + S) * 3 * E + (D + (gelu ? 0 : S)) * 3 * E : 0);

        int memsets = before.Fills - after.Fills;
        long bytes = before.FillBytes - after.FillBytes;
        output.WriteLine($"flux-dev {Resolution}², {path} LoRA, fusions {FusionSettings.Format(f)}: memsets {before.Fills} → {after.Fills} " +
                         $"(−{memsets}: model {model}, LoRA {loraSites}), {before.FillBytes / 1e9:F2} → {after.FillBytes / 1e9:F2} GB " +
                         $"(−{bytes / 1e9:F2} GB: model {modelBytes / 1e9:F2}, LoRA {(bytes - modelBytes) / 1e6:F1} MB)");

        Assert.Equal(model + loraSites, memsets);
        if (lora == LoraPath.Stacked) Assert.Equal(modelBytes, bytes);
        else Assert.True(bytes > modelBytes, $"{bytes} B of memsets removed, the model's sites alone {modelBytes} B");
        // Empty is an allocation as Zeros was; the products and layout copies are the same
        Assert.Equal(before.Allocations, after.Allocations);
        Assert.Equal(before.Products, after.Products);
        Assert.Equal(before.LayoutOps, after.LayoutOps);
    }
}
