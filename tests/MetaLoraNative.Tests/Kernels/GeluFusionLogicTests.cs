using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Kernels;
using Xunit.Abstractions;
using static MetaLoraNative.Kernels.Native.CublasLt;

namespace MetaLoraNative.Tests.Kernels;

/// <summary>
/// What of the GELU fusions needs no GPU: the cuBLASLt epilogue decision (GeluEpilogue.Choose: which epilogue, the
/// aux ld, the refusals), a lane-level emulation of the strided kernels' indexing (kernels/dev/gelu/02_strided.cu)
/// over the launcher's row chunks (GeluStrided), and the products a flux-dev Stage-2 step issues with the fusion on.
/// </summary>
public sealed class GeluFusionLogicTests(ITestOutputHelper output)
{
    /// <summary>A row-major product as CudaBackend.Describe sees whole, fresh (256-byte aligned) bf16 tensors.</summary>
    static GemmProblem Whole(long m, long n, long k, bool transB, int sizeC = 2) =>
        new(m, n, k, false, transB, k, transB ? k : n, n, 2, 2, sizeC, 256, 256, 256);

    // ---------------------------------------------------------------- the epilogue decision

    [Theory]
    [InlineData(4096)]   // the image stream at 1024²
    [InlineData(512)]    // the text stream
    [InlineData(8192)]   // the image stream, B = 2
    public void FluxDevMlpProductsTakeTheGeluEpilogues(long tokens)
    {
        const int C = 3072, Mlp = 12288;
        // mlp.0: x (tokens, C) · W0ᵀ (C → mlp) + b: GELU_AUX_BIAS, pre as the aux matrix with ld = mlp
        var forward = GeluEpilogue.Choose(GeluEpilogueKind.Forward, Whole(tokens, Mlp, C, transB: true), bias: true);
        Assert.Equal(new GeluEpilogueSetup(CUBLASLT_EPILOGUE_GELU_AUX_BIAS, Mlp), forward.Setup);
        var noBias = GeluEpilogue.Choose(GeluEpilogueKind.Forward, Whole(tokens, Mlp, C, transB: true), bias: false);
        Assert.Equal(new GeluEpilogueSetup(CUBLASLT_EPILOGUE_GELU_AUX, Mlp), noBias.Setup);
        // mlp.2's input gradient: dy (tokens, C) · W2 (C, mlp), not transposed: DGELU reading pre with ld = mlp
        var backward = GeluEpilogue.Choose(GeluEpilogueKind.Backward, Whole(tokens, Mlp, C, transB: false), bias: false);
        Assert.Equal(new GeluEpilogueSetup(CUBLASLT_EPILOGUE_DGELU, Mlp), backward.Setup);
        output.WriteLine($"{tokens} tokens: {forward.Reason}; {backward.Reason}");
    }

    [Fact]
    public void TheEpilogueValuesAreCublasLtsBitFields()
    {
        // cublasLtEpilogue_t: GELU = 32, AUX = 128, BIAS = 4, DGELU = 64 | 128
        Assert.Equal(32 | 128, CUBLASLT_EPILOGUE_GELU_AUX);
        Assert.Equal(CUBLASLT_EPILOGUE_GELU_AUX | CUBLASLT_EPILOGUE_BIAS, CUBLASLT_EPILOGUE_GELU_AUX_BIAS);
        Assert.Equal(64 | 128, CUBLASLT_EPILOGUE_DGELU);
        Assert.Equal(11, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER);
        Assert.Equal(12, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD);
    }

    [Fact]
    public void ProductsOffCublasLtOrOffTheAuxRulesFallBackToTheUnfusedOps()
    {
        // one row (the modulation-like GEMV), a skinny LoRA-like product, an ld off the 16-byte rule: our kernels
        foreach (var p in new[] { Whole(1, 3072, 3072, true), Whole(4096, 16, 3072, true), Whole(4096, 1004, 3072, true) })
        {
            var d = GeluEpilogue.Choose(GeluEpilogueKind.Forward, p, bias: true);
            Assert.Null(d.Setup);
            Assert.Contains("routed to", d.Reason);
            Assert.NotEqual(GemmRoute.CublasLt, GemmRouting.Route(p).Route);
        }
        // an fp32 output: the aux matrix would be fp32
        var f32 = GeluEpilogue.Choose(GeluEpilogueKind.Forward, Whole(256, 512, 256, true, sizeC: 4), bias: false);
        Assert.Null(f32.Setup);
        Assert.Contains("fp32", f32.Reason);
        // DGELU has no bias input
        var dBias = GeluEpilogue.Choose(GeluEpilogueKind.Backward, Whole(256, 512, 256, false), bias: true);
        Assert.Null(dBias.Setup);
        Assert.Contains("bias", dBias.Reason);
    }

    // ---------------------------------------------------------------- the strided kernels' indexing, emulated

    /// <summary>
    /// Every thread of every launch as kernels/dev/gelu/02_strided.cu computes its indices (32-bit unsigned, the
    /// launcher's grid of <see cref="CudaBackend"/>'s Grid1D, grid-stride), over <see cref="GeluStrided.Chunks"/>:
    /// each element of the output block is written exactly once, nothing else, from the matching input element,
    /// and no index of a launch passes the limit. A small limit forces several chunks.
    /// </summary>
    [Theory]
    [InlineData(37, 24, 40, 64, 24, true, 500L)]
    [InlineData(37, 24, 40, 64, 24, false, 500L)]
    [InlineData(5, 13, 13, 29, 20, false, long.MaxValue)]
    [InlineData(64, 8, 8, 32, 16, true, 100L)]
    [InlineData(3, 40, 48, 40, 56, true, (long)int.MaxValue)]
    public void StridedKernelIndexingCoversTheBlockOnce(int rows, int cols, int ldOut, int ldX, int ldDy, bool vec, long limit)
    {
        long maxLd = Math.Max(ldOut, Math.Max(ldX, ldDy));
        var chunks = GeluStrided.Chunks(rows, cols, maxLd, Math.Min(limit, int.MaxValue));
        Assert.Equal(rows, chunks.Sum(c => c.Rows));
        var writes = new Dictionary<long, long>();   // output element → the x element it read
        foreach (var chunk in chunks)
        {
            long work = vec ? (long)chunk.Rows * cols / 8 : (long)chunk.Rows * cols;
            uint blocks = (uint)Math.Min((work + GeluStrided.Block - 1) / GeluStrided.Block, 1L << 16), stride = blocks * GeluStrided.Block;
            uint perRow = (uint)cols >> 3, n = vec ? (uint)chunk.Rows * perRow : (uint)chunk.Rows * (uint)cols;
            for (uint t = 0; t < stride; t++)
            for (uint v = t; v < n; v += stride)
            {
                uint r, c;
                if (vec) { r = v / perRow; c = (v - r * perRow) << 3; }
                else { r = v / (uint)cols; c = v - r * (uint)cols; }
                int width = vec ? 8 : 1;
                foreach (int ld in new[] { ldOut, ldX, ldDy })
                {
                    ulong last = (ulong)r * (uint)ld + c + (ulong)width - 1;
                    Assert.True(last < (ulong)Math.Min(limit, int.MaxValue), $"index {last} past the limit {limit}");
                    Assert.Equal(last, (ulong)(r * (uint)ld + c + (uint)width - 1));   // the 32-bit product did not wrap
                }
                for (int k = 0; k < width; k++)
                {
                    long o = (chunk.Row + r) * ldOut + c + k, x = (chunk.Row + r) * ldX + c + k;
                    Assert.True(writes.TryAdd(o, x), $"output element {o} written twice");
                }
            }
        }
        Assert.Equal((long)rows * cols, writes.Count);
        foreach (var (o, x) in writes)
        {
            long r = o / ldOut, c = o % ldOut;
            Assert.True(c < cols, $"element {o} outside the block's columns");
            Assert.Equal(r * ldX + c, x);
        }
    }

    [Fact]
    public void TheVectorFormNeedsSixteenByteRows()
    {
        Assert.True(GeluStrided.Vectorised(12288, [21504, 15360], [0x7f0000000000UL + 9216 * 2, 0x7f0000000000UL + 3072 * 2]));
        Assert.False(GeluStrided.Vectorised(12, [16, 16], [0, 0]));                  // cols off the multiple of 8
        Assert.False(GeluStrided.Vectorised(16, [20, 16], [0, 0]));                  // an ld off it
        Assert.False(GeluStrided.Vectorised(16, [16, 16], [0, 2]));                  // a block starting off 16 bytes
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(2, 1)]
    [InlineData(32, 2)]
    public void FluxDevSingleBlockSlicesNeedChunksOnlyPastTwoGigaElements(int batch, int expected)
    {
        // linear1's output (B·4608, 3C + mlp = 21504): the widest ld of the single block's slices
        var chunks = GeluStrided.Chunks(batch * 4608L, 12288, 21504);
        Assert.Equal(expected, chunks.Count);
        Assert.All(chunks, c => Assert.True((c.Rows - 1L) * 21504 + 12288 <= int.MaxValue));
    }

    // ---------------------------------------------------------------- a flux-dev Stage-2 step with the fusion

    /// <summary>
    /// A flux-dev Stage-2 step at 1024² on the shape-only backend, Fusions.GeluEpilogue against none: the frozen
    /// products are the same problems (mlp.0's forward and mlp.2's input gradient become the fused ops), every fused
    /// one takes the cuBLASLt epilogue, and the single blocks' GELU runs on slices.
    /// </summary>
    [Fact]
    public void FluxDevStage2StepIssuesTheFusedMlpProducts()
    {
        var (none, _, _) = GemmRoutingTests.Stage2Step(1024, LoraPath.Fused, fusions: Fusions.None);
        var (gelu, _, _) = GemmRoutingTests.Stage2Step(1024, LoraPath.Fused, fusions: Fusions.GeluEpilogue);
        var c = FluxConfig.FluxDev;
        Assert.Equal(none.Products.Where(p => p.Frozen).Select(p => p.Problem), gelu.Products.Where(p => p.Frozen).Select(p => p.Problem));
        var forward = gelu.Products.Where(p => p.Op == "linear_gelu").ToList();
        var backward = gelu.Products.Where(p => p.Op == "linear_backward_gelu").ToList();
        Assert.Equal(2 * c.Depth, forward.Count);
        Assert.Equal(2 * c.Depth, backward.Count);
        Assert.All(forward, p => Assert.Equal(CUBLASLT_EPILOGUE_GELU_AUX_BIAS, GeluEpilogue.Choose(GeluEpilogueKind.Forward, p.Problem, p.Bias).Setup?.Epilogue));
        Assert.All(backward, p => Assert.Equal(CUBLASLT_EPILOGUE_DGELU, GeluEpilogue.Choose(GeluEpilogueKind.Backward, p.Problem, p.Bias).Setup?.Epilogue));
        // a LoRA on mlp.0 and mlp.2: the delta and the LoRA dx are accumulated into (beta = 1)
        Assert.All(forward.Concat(backward), p => Assert.True(p.Accumulate, $"{p.Op} {p.Problem} without its LoRA term"));
        Assert.Equal(2 * c.DepthSingleBlocks, gelu.GeluSlices);
        Assert.Equal(0, none.GeluSlices);
        // per single block: the Narrow of the MLP input and the Concat of cat become one AddNarrow, and the backward's
        // Narrow of d act and Concat of d lin1 another
        Assert.Equal(none.LayoutOps - 2 * c.DepthSingleBlocks, gelu.LayoutOps);
        output.WriteLine($"layout copies {none.LayoutOps} → {gelu.LayoutOps} ({none.LayoutBytes / 1e9:F2} → {gelu.LayoutBytes / 1e9:F2} GB), " +
                         $"memsets {none.Fills} → {gelu.Fills} ({none.FillBytes / 1e9:F2} → {gelu.FillBytes / 1e9:F2} GB)");
    }
}
