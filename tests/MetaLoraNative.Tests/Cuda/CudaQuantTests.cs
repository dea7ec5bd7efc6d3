using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cuda;

/// <summary>The Quant group on the GPU (Ops/CudaBackend.Quant.cs, quant.cu) and the playground's W8A8 product against the fp64 oracle. Skips without a GPU.</summary>
public class CudaQuantTests(ITestOutputHelper output)
{
    public static TheoryData<string> Checks() => Parity.Checks("Quant");

    [SkippableTheory]
    [MemberData(nameof(Checks))]
    public void MatchesTheOracle(string check) => Parity.Run(check, output);

    public static TheoryData<string> DevChecks() => Parity.DevChecks("Quant");

    /// <summary>The W8A8 product of the playground (kernels/dev/quant) against the CPU emulation.</summary>
    [SkippableTheory]
    [MemberData(nameof(DevChecks))]
    public void PlaygroundVersionsMatchTheOracle(string check) => Parity.Run(check, output);
}
