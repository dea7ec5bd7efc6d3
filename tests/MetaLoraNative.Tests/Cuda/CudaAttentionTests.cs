using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cuda;

/// <summary>
/// The Attention group on the GPU (Ops/CudaBackend.Attention.cs, kernels/attention.cu) against the fp64 oracle; the
/// playground's version 2 (kernels/dev/attention) under the same checks; and both versions timed at FLUX.1-dev's
/// size with their outputs checked. Skips without a GPU.
/// </summary>
[Collection(CudaCollection.Name)]
public class CudaAttentionTests(ITestOutputHelper output)
{
    public static TheoryData<string> Checks() => Parity.Checks("Attention");

    [SkippableTheory]
    [MemberData(nameof(Checks))]
    public void MatchesTheOracle(string check) => Parity.Run(check, output);

    public static TheoryData<string> DevChecks() => Parity.DevChecks("Attention");

    [SkippableTheory]
    [MemberData(nameof(DevChecks))]
    public void PlaygroundVersionsMatchTheOracle(string check) => Parity.Run(check, output);

    [SkippableTheory]
    [InlineData("attention scalar")]
    [InlineData("attention tc")]
    [InlineData("attention p3")]
    public void AtFluxSizeComputesTheKnownOutputs(string bench) => Parity.Bench(bench, output);
}
