using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cuda;

/// <summary>The Conditioning group on the GPU (Ops/CudaBackend.Conditioning.cs, kernels/conditioning.cu) against the fp64 oracle. Skips without a GPU.</summary>
[Collection(CudaCollection.Name)]
public class CudaConditioningTests(ITestOutputHelper output)
{
    public static TheoryData<string> Checks() => Parity.Checks("Conditioning");

    [SkippableTheory]
    [MemberData(nameof(Checks))]
    public void MatchesTheOracle(string check) => Parity.Run(check, output);

    public static TheoryData<string> DevChecks() => Parity.DevChecks("Conditioning");

    /// <summary>The 16-byte gated residual kernels, version 2 (kernels/dev/*/02_vec16.cu): CudaParity.Dev's checks of this group.</summary>
    [SkippableTheory]
    [MemberData(nameof(DevChecks))]
    public void PlaygroundVersionsMatchTheOracle(string check) => Parity.Run(check, output);
}
