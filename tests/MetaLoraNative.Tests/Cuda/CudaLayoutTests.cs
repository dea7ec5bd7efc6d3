using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cuda;

/// <summary>The Layout group on the GPU (Ops/CudaBackend.Layout.cs, kernels/layout.cu) against the fp64 oracle. Skips without a GPU.</summary>
[Collection(CudaCollection.Name)]
public class CudaLayoutTests(ITestOutputHelper output)
{
    public static TheoryData<string> Checks() => Parity.Checks("Layout");

    [SkippableTheory]
    [MemberData(nameof(Checks))]
    public void MatchesTheOracle(string check) => Parity.Run(check, output);

    public static TheoryData<string> DevChecks() => Parity.DevChecks("Layout");

    /// <summary>The 16-byte layout kernels, version 2 (kernels/dev/*/02_vec16.cu): CudaParity.Dev's checks of this group.</summary>
    [SkippableTheory]
    [MemberData(nameof(DevChecks))]
    public void PlaygroundVersionsMatchTheOracle(string check) => Parity.Run(check, output);
}
