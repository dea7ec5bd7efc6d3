using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cuda;

/// <summary>The Elementwise group on the GPU (Ops/CudaBackend.Elementwise.cs, kernels/elementwise.cu) against the fp64 oracle. Skips without a GPU.</summary>
[Collection(CudaCollection.Name)]
public class CudaElementwiseTests(ITestOutputHelper output)
{
    public static TheoryData<string> Checks() => Parity.Checks("Elementwise");

    [SkippableTheory]
    [MemberData(nameof(Checks))]
    public void MatchesTheOracle(string check) => Parity.Run(check, output);

    public static TheoryData<string> DevChecks() => Parity.DevChecks("Elementwise");

    /// <summary>The GELU fusions (kernels/dev/gelu, the cuBLASLt GELU epilogues): CudaParity.Dev's checks of this group.</summary>
    [SkippableTheory]
    [MemberData(nameof(DevChecks))]
    public void PlaygroundVersionsMatchTheOracle(string check) => Parity.Run(check, output);
}
