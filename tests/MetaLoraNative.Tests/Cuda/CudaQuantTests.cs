using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cuda;

/// <summary>The Quant group on the GPU (Ops/CudaBackend.Quant.cs, quant.cu) against the fp64 oracle. Skips without a GPU.</summary>
public class CudaQuantTests(ITestOutputHelper output)
{
    public static TheoryData<string> Checks() => Parity.Checks("Quant");

    [SkippableTheory]
    [MemberData(nameof(Checks))]
    public void MatchesTheOracle(string check) => Parity.Run(check, output);
}
