using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cuda;

/// <summary>
/// The benches of the grouped GEMM, the GELU fusions, qkv_norm_rope and the W8A8 product (KernelBenches.Dev), each
/// with its version 1, at FLUX.1-dev's sizes: the timed calls must have computed the closed-form outputs (their
/// closed forms are held on the CPU by Kernels/KernelBenchClosedFormTests). Skips without a GPU.
/// </summary>
[Collection(CudaCollection.Name)]
public class CudaDevBenchTests(ITestOutputHelper output)
{
    [SkippableTheory]
    [InlineData("gemm group v1")]
    [InlineData("gemm group g2")]
    [InlineData("gelu-epilogue v1")]
    [InlineData("gelu-epilogue v2")]
    [InlineData("gelu strided v1")]
    [InlineData("gelu strided v2")]
    [InlineData("qkv_norm_rope v1")]
    [InlineData("qkv_norm_rope v2")]
    [InlineData("linear w8a16")]
    [InlineData("linear w8a8")]
    public void AtFluxSizeComputesTheKnownOutputs(string bench) => Parity.Bench(bench, output);
}
