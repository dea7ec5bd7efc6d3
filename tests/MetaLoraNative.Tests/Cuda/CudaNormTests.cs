using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cuda;

/// <summary>
/// The Norm group on the GPU (Ops/CudaBackend.Norm.cs, kernels/norm.cu) against the fp64 oracle, and the playground's
/// fused residual-norm (version 2) under its checks and its bench. Skips without a GPU.
/// </summary>
[Collection(CudaCollection.Name)]
public class CudaNormTests(ITestOutputHelper output)
{
    public static TheoryData<string> Checks() => Parity.Checks("Norm");

    [SkippableTheory]
    [MemberData(nameof(Checks))]
    public void MatchesTheOracle(string check) => Parity.Run(check, output);

    public static TheoryData<string> DevChecks() => Parity.DevChecks("Norm");

    /// <summary>The playground's fused gated residual + LayerNorm-modulate (kernels/dev/residual_norm), op and whole model.</summary>
    [SkippableTheory]
    [MemberData(nameof(DevChecks))]
    public void PlaygroundVersionsMatchTheOracle(string check) => Parity.Run(check, output);

    [SkippableTheory]
    [InlineData("residual-norm v1")]
    [InlineData("residual-norm v2")]
    public void AtFluxSizeComputesTheKnownOutputs(string bench) => Parity.Bench(bench, output);
}
