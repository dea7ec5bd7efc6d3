using MetaLoraNative.Engine.Backends.Cpu;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cpu;

/// <summary>The Memory group on the CPU (CpuBackend.Memory.cs): upload, download, copy, fill and reshaped views.</summary>
public sealed class CpuMemoryTests(ITestOutputHelper output) : CpuOpTests(output)
{
    [Fact]
    public void ReshapeSharesStorage()
    {
        using var t = _be.Zeros(2, 3);
        var r = t.Reshape(3, -1);
        Assert.Equal(new[] { 3, 2 }, r.Shape);
        _be.Fill(r, 4f);
        Assert.All(_be.DownloadDouble(t), v => Assert.Equal(4.0, v));
    }

    [Fact]
    public void UploadKeepsFp64ExactlyOnTheOracleAndRoundsOnceOnFp32()
    {
        double[] v = [0.1, 1.0 / 3, -2.5e-9, 12345.678901234];
        using var exact = _be.Upload(v, 2, 2);
        Assert.Equal(v, Down(exact));
        using var f32 = CpuBackend.F32();
        using var rounded = f32.Upload(v, 4);
        Assert.Equal(v.Select(x => (double)(float)x).ToArray(), f32.DownloadDouble(rounded));
        Assert.Equal(v.Select(x => (float)x).ToArray(), f32.Download(rounded));
    }

    [Fact]
    public void CopyKeepsValuesAcrossShapesAndFillSetsEveryElement()
    {
        using var src = Up([1, 2, 3, 4, 5, 6], 2, 3);
        using var dst = _be.Zeros(3, 2);
        _be.Copy(src, dst);
        Assert.Equal(new double[] { 1, 2, 3, 4, 5, 6 }, Down(dst));
        _be.Fill(dst, -0.75f);
        Assert.All(Down(dst), x => Assert.Equal(-0.75, x));
        Assert.Equal(new double[] { 1, 2, 3, 4, 5, 6 }, Down(src));   // the copy does not alias its source
        var ex = Assert.Throws<ArgumentException>(() => _be.Copy(src, _be.Zeros(5)));
        Assert.Contains("Copy", ex.Message);
        Assert.Contains("(2, 3)", ex.Message);
        var up = Assert.Throws<ArgumentException>(() => _be.Upload(new double[5], 2, 3));
        Assert.Contains("Upload", up.Message);
    }
}
