using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cuda;

/// <summary>The whole tiny model and a short Stage 2 run on the GPU (ModelParity.cs) against the fp64 oracle, baseline the bf16 emulation. Skips without a GPU.</summary>
[Collection(CudaCollection.Name)]
public class CudaModelTests(ITestOutputHelper output)
{
    public static TheoryData<string> Checks() => Parity.Checks("Model");

    [SkippableTheory]
    [MemberData(nameof(Checks))]
    public void MatchesTheOracle(string check) => Parity.Run(check, output);

    public static TheoryData<string> DevChecks() => Parity.DevChecks("Model");

    /// <summary>The GELU fusions (kernels/dev/gelu, the cuBLASLt GELU epilogues): CudaParity.Dev's checks of this group.</summary>
    [SkippableTheory]
    [MemberData(nameof(DevChecks))]
    public void PlaygroundVersionsMatchTheOracle(string check) => Parity.Run(check, output);
}
