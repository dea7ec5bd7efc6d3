using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cuda;

/// <summary>The Objective group on the GPU (Ops/CudaBackend.Objective.cs, kernels/objective.cu) against the fp64 oracle. Skips without a GPU.</summary>
[Collection(CudaCollection.Name)]
public class CudaObjectiveTests(ITestOutputHelper output)
{
    public static TheoryData<string> Checks() => Parity.Checks("Objective");

    [SkippableTheory]
    [MemberData(nameof(Checks))]
    public void MatchesTheOracle(string check) => Parity.Run(check, output);
}
