using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cuda;

/// <summary>The Norm group on the GPU (Ops/CudaBackend.Norm.cs, kernels/norm.cu) against the fp64 oracle. Skips without a GPU.</summary>
[Collection(CudaCollection.Name)]
public class CudaNormTests(ITestOutputHelper output)
{
    public static TheoryData<string> Checks() => Parity.Checks("Norm");

    [SkippableTheory]
    [MemberData(nameof(Checks))]
    public void MatchesTheOracle(string check) => Parity.Run(check, output);
}
