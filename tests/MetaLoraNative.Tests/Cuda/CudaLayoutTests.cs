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
}
