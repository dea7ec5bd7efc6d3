using MetaLoraNative.Engine;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Kernels.Verification;

namespace MetaLoraNative.Tests.Kernels;

/// <summary>
/// Empty and CopyNarrow on the bf16 emulation (the CUDA backend's storage rules): Empty keeps the CPU's poison, and
/// CopyNarrow stores as the GPU's slice_copy does: src read in its own precision, rounded to bf16 only when dst is bf16.
/// </summary>
public class Bf16EmulationEmptyTests
{
    static readonly float[] Values = [1.00390625f + 1e-4f, -3.14159f, 2.71828f, 1e-3f, 7.77777f, -0.33333f];

    [Fact]
    public void EmptyIsPoisonedInBothPrecisions()
    {
        using var emu = new Bf16EmulationBackend();
        using var compute = emu.Empty(2, 3);
        using var master = emu.Empty([2, 3], Precision.Master);
        Assert.All(emu.Download(compute), v => Assert.True(float.IsNaN(v)));
        Assert.All(emu.Download(master), v => Assert.True(float.IsNaN(v)));
    }

    [Fact]
    public void CopyNarrowRoundsOnlyIntoBf16()
    {
        using var emu = new Bf16EmulationBackend();
        using var src = emu.Upload(Values, [2, 3], Precision.Master);         // fp32, unrounded
        using var intoBf16 = emu.Empty(2, 5);
        using var intoF32 = emu.Empty([2, 5], Precision.Master);
        using var rest = emu.Zeros(2, 2);
        foreach (var dst in new[] { intoBf16, intoF32 })
        {
            emu.CopyNarrow(dst, src, 1, 2);
            emu.CopyNarrow(dst, rest, 1, 0);
        }
        var b = emu.Download(intoBf16);
        var f = emu.Download(intoF32);
        for (int r = 0; r < 2; r++)
        for (int j = 0; j < 3; j++)
        {
            float v = Values[r * 3 + j];
            Assert.Equal(HalfPrecision.RoundToBFloat16(v), b[r * 5 + 2 + j]);
            Assert.Equal(v, f[r * 5 + 2 + j]);
        }
        Assert.All(b.Concat(f), v => Assert.True(float.IsFinite(v)));
    }
}
