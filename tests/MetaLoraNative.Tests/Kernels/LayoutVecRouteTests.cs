using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Kernels;

/// <summary>
/// Which of a flux-dev Stage-2 step's layout copies version 2 of the layout kernels (METALORA_ELEMENTWISE=vec16) would
/// take: every slice copy the step issues (Narrow, AddNarrow, CopyNarrow, a Concat's parts), counted on the shape-only
/// backend with the host's route rule (<see cref="Kernels.ElementwiseVec.Slice"/>) applied to its (outer, dim, inner)
/// view and byte offsets. docs/PERF.md's vec16 section quotes the printed figures.
/// </summary>
public class LayoutVecRouteTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData(1024, Fusions.None)]
    [InlineData(1024, Fusions.All)]
    [InlineData(512, Fusions.None)]
    public void EveryLayoutCopyOfAFluxDevStepTakesTheSixteenByteRoute(int resolution, Fusions fusions)
    {
        var (be, _, _) = GemmRoutingTests.Stage2Step(resolution, LoraPath.Fused, fusions: fusions);
        output.WriteLine($"flux-dev {resolution}², fused LoRA, fusions {FusionSettings.Format(fusions)}: {be.LayoutOps} layout ops, " +
                         $"{be.SliceCopies} slice copies ({be.SliceCopyBytes / 1e9:F2} GB), of them {be.VecSliceCopies} on the 16-byte route " +
                         $"({be.VecSliceCopyBytes / 1e9:F2} GB)");
        Assert.True(be.SliceCopies >= be.LayoutOps, "a layout op is at least one slice copy");
        Assert.Equal(be.LayoutBytes, be.SliceCopyBytes);
        // Why all of them: the rule needs the moved row, both offsets and both strides in multiples of 8 elements
        // and 16-byte aligned starts; every extent a FLUX.1-dev copy cuts along (the widths, the head dim, the token
        // counts of either stream, the modulation chunks) is a multiple of 8, so no copy falls back.
        var c = FluxConfig.FluxDev;
        int imgTokens = resolution * resolution / 256, txtTokens = 512;
        int[] extents = [c.HiddenSize, c.MlpHiddenDim, c.HiddenSize / c.NumHeads, c.ContextInDim, c.InChannels, imgTokens, txtTokens];
        Assert.All(extents, e => Assert.Equal(0, e % 8));
        Assert.Equal(be.SliceCopies, be.VecSliceCopies);
        Assert.Equal(be.SliceCopyBytes, be.VecSliceCopyBytes);
    }

    [Fact]
    public void ACopyAlongAnOddWidthFallsBack()
    {
        // the count applies the rule to each copy: rows of 12 elements are off the 8-element grid, one run of 160 is not
        var be = new GemmRoutingTests.ShapeBackend();
        using var x = be.Zeros(1, 16, 20);
        using var narrowed = be.Narrow(x, -1, 4, 12);   // 12 columns of 20: rows of 12, offset 4, strides 20 and 12
        using var aligned = be.Narrow(x, 1, 8, 8);      // 8 rows of 20 columns from row 8: one contiguous run of 160
        Assert.Equal(2, be.SliceCopies);
        Assert.Equal(1, be.VecSliceCopies);
    }
}
