using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cuda;

/// <summary>
/// The Gemm group on the GPU (Ops/CudaBackend.Gemm.cs, cuBLASLt) against the fp64 oracle, its argument checks, and
/// the Linear bench at FLUX.1-dev's size (its outputs checked). Skips without a GPU.
/// </summary>
[Collection(CudaCollection.Name)]
public class CudaGemmTests(ITestOutputHelper output)
{
    public static TheoryData<string> Checks() => Parity.Checks("Gemm");

    [SkippableTheory]
    [MemberData(nameof(Checks))]
    public void MatchesTheOracle(string check) => Parity.Run(check, output);

    public static TheoryData<string> DevChecks() => Parity.DevChecks("Gemm");

    /// <summary>The Gemm group's playground checks: GemmGroup version 2 (kernels/dev/gemm/02_grouped.cu: mixed entries and
    /// FLUX.1-dev's 494 targets) and the GELU fusions (kernels/dev/gelu, the cuBLASLt GELU epilogues).</summary>
    [SkippableTheory]
    [MemberData(nameof(DevChecks))]
    public void PlaygroundVersionsMatchTheOracle(string check) => Parity.Run(check, output);

    [SkippableFact]
    public void MismatchedShapesFailNamingTheOp()
    {
        using var gpu = Gpu.OpenOrSkip(output);
        using var a = gpu.Zeros(2, 3);
        using var b = gpu.Zeros(4, 5);
        var e = Assert.Throws<ArgumentException>(() => gpu.Gemm(a, false, b, false, a));
        Assert.Contains("gemm", e.Message);
    }

    [SkippableFact]
    public void LinearAtFluxSizeComputesTheKnownOutput() => Parity.Bench("linear", output);
}
