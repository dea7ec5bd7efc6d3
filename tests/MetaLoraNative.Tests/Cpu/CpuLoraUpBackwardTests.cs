using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Tests.Testing;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cpu;

/// <summary>
/// IBackend.LoraUpBackward on the CPU (CpuBackend.Gemm.cs), the oracle of kernels/dev/lora/02_up_backward.cu: against
/// the two GemmSlice products it stands for (dU += dyᵀ·a, dmid = dy·u) in fp64, on blocks that are real column windows
/// of wider dy, a and dmid (and row windows, as a batch group's rows are), r2 1..4, shapes off every tile width.
/// </summary>
public sealed class CpuLoraUpBackwardTests(ITestOutputHelper output) : CpuOpTests(output)
{
    /// <summary>
    /// One case on one backend: dy a block (rows [row0, row0 + n), columns [s, s + rows)) of a (row0 + n + 2, s + rows + 3)
    /// matrix, a columns [o, o + r2) of an (.., o + r2 + 1) one, dmid the same window of another, dU pre-filled (the +=
    /// must keep it), the rest of dmid's tensor filled too (it must stay as it was).
    /// </summary>
    sealed record Case(Tensor Dy, Tensor U, Tensor A, Tensor DU, Tensor Dmid, MatrixSlice DyS, MatrixSlice AS, MatrixSlice DmidS) : IDisposable
    {
        public void Dispose() { Dy.Dispose(); U.Dispose(); A.Dispose(); DU.Dispose(); Dmid.Dispose(); }
    }

    static Case Make(IBackend be, int n, int rows, int r2, int row0, int s, int o, int seed)
    {
        var rand = new TestData(seed);
        int dyCols = s + rows + 3, mCols = o + r2 + 1, allRows = row0 + n + 2;
        var dy = be.Upload(rand.Normal(allRows * dyCols), allRows, dyCols);
        var u = be.Upload(rand.Normal(rows * r2), rows, r2);
        var a = be.Upload(rand.Normal(allRows * mCols), allRows, mCols);
        var dU = be.Upload(rand.Normal(rows * r2), rows, r2);
        var dmid = be.Upload(rand.Normal(allRows * mCols), allRows, mCols);
        return new Case(dy, u, a, dU, dmid, new MatrixSlice(dy, row0, n, s, rows), new MatrixSlice(a, row0, n, o, r2),
                        new MatrixSlice(dmid, row0, n, o, r2));
    }

    public static TheoryData<int, int, int, int, int, int> Shapes => new()
    {
        // n, rows, r2, row0, s (dy's column window), o (a's and dmid's)
        { 1, 1, 1, 0, 0, 0 },
        { 7, 13, 1, 0, 3, 2 },
        { 65, 70, 2, 5, 9, 1 },
        { 130, 37, 3, 1, 0, 4 },
        { 33, 1031, 4, 2, 17, 3 },
        { 64, 1024, 4, 0, 8, 0 },
        { 129, 2053, 1, 3, 1, 5 },
    };

    [Theory]
    [MemberData(nameof(Shapes))]
    public void EqualsTheTwoGemmsItReplaces(int n, int rows, int r2, int row0, int s, int o)
    {
        using var op = Make(_be, n, rows, r2, row0, s, o, 1000 + n + rows + r2);
        using var gemms = Make(_be, n, rows, r2, row0, s, o, 1000 + n + rows + r2);
        _be.LoraUpBackward(op.DyS, op.U, op.AS, op.DU, op.DmidS);
        _be.GemmSlice(gemms.DyS, true, gemms.AS, false, gemms.DU, 1f, 1f);   // dU += dyᵀ·a
        _be.GemmSlice(gemms.DyS, false, gemms.U, false, gemms.DmidS);       // dmid = dy·u
        Close(Down(gemms.DU), Down(op.DU), Tight, "dU");
        Close(Down(gemms.Dmid), Down(op.Dmid), Tight, "dmid (the whole tensor: outside the window untouched)");
        Close(Down(gemms.A), Down(op.A), 0, "a unchanged");
        Close(Down(gemms.Dy), Down(op.Dy), 0, "dy unchanged");
        // and the window was written: dmid's block differs from what was there before
        using var before = Make(_be, n, rows, r2, row0, s, o, 1000 + n + rows + r2);
        Assert.NotEqual(Down(before.Dmid), Down(op.Dmid));
        Assert.NotEqual(Down(before.DU), Down(op.DU));
    }

    [Theory]
    [InlineData(9, 40, 1)]
    [InlineData(70, 300, 4)]
    public void WithoutADmidOnlyAndDUIsNotTouched(int n, int rows, int r2)
    {
        using var op = Make(_be, n, rows, r2, 1, 2, 1, 7);
        using var gemms = Make(_be, n, rows, r2, 1, 2, 1, 7);
        _be.LoraUpBackward(op.DyS, op.U, null, null, op.DmidS);
        _be.GemmSlice(gemms.DyS, false, gemms.U, false, gemms.DmidS);
        Close(Down(gemms.Dmid), Down(op.Dmid), Tight, "dmid");
        Close(Down(gemms.DU), Down(op.DU), 0, "dU untouched");
    }

    [Fact]
    public void CountsTheTwoGemmsOfTheDefaultCudaPath()
    {
        using var be = CpuBackend.F64();
        using var c = Make(be, 5, 8, 2, 0, 1, 0, 3);
        var counters = be.Counters!;
        var before = counters.Snapshot();
        be.LoraUpBackward(c.DyS, c.U, c.AS, c.DU, c.DmidS);
        var mid = counters.Snapshot();
        be.LoraUpBackward(c.DyS, c.U, null, null, c.DmidS);
        var after = counters.Snapshot();
        long Gemms(IReadOnlyDictionary<string, Engine.Benchmarks.LaunchCounters.Counts> x, IReadOnlyDictionary<string, Engine.Benchmarks.LaunchCounters.Counts> y) =>
            Engine.Benchmarks.LaunchCounters.Sum(Engine.Benchmarks.LaunchCounters.Between(x, y).Values).GemmCount;
        Assert.Equal(2, Gemms(before, mid));
        Assert.Equal(1, Gemms(mid, after));
    }

    [Fact]
    public void RefusesMismatchedShapes()
    {
        using var c = Make(_be, 6, 10, 2, 0, 0, 0, 5);
        using var u3 = _be.Zeros(10, 3);
        Assert.Throws<ArgumentException>(() => _be.LoraUpBackward(c.DyS, u3, c.AS, c.DU, c.DmidS));                   // r2 of u vs dmid
        Assert.Throws<ArgumentException>(() => _be.LoraUpBackward(c.DyS, c.U, c.AS, null, c.DmidS));                  // a without dU
        Assert.Throws<ArgumentException>(() => _be.LoraUpBackward(c.DyS, c.U, c.AS.RowsOf(0, 5), c.DU, c.DmidS));     // a's rows
        Assert.Throws<ArgumentException>(() => _be.LoraUpBackward(c.DyS.ColumnsOf(0, 9), c.U, c.AS, c.DU, c.DmidS)); // dy's columns vs u's rows
    }

    [Fact]
    public void Fp32EngineMatchesFp64() => Fp32MatchesFp64("LoraUpBackward", (be, rand) =>
    {
        using var c = Make(be, 77, 300, 3, 2, 5, 1, 11);
        be.LoraUpBackward(c.DyS, c.U, c.AS, c.DU, c.DmidS);
        return [be.DownloadDouble(c.DU), be.DownloadDouble(c.Dmid)];
    });
}
