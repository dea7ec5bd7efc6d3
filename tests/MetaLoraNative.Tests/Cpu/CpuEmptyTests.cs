using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Benchmarks;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Tests.Model;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cpu;

/// <summary>
/// Uninitialised allocation on the CPU (Memory group: Empty) and the "=" slice copy that fills such buffers (Layout
/// group: CopyNarrow). Empty is poisoned with NaN, so these tests also show that the poison reaches what the model
/// tests compare when anything reads an element before it is written.
/// </summary>
public sealed class CpuEmptyTests(ITestOutputHelper output) : CpuOpTests(output)
{
    // ---------------------------------------------------------------- Empty: the poison

    [Theory]
    [InlineData(false, Precision.Compute)]
    [InlineData(false, Precision.Master)]
    [InlineData(true, Precision.Compute)]
    [InlineData(true, Precision.Master)]
    public void EmptyIsNaNEverywhere(bool fp32, Precision precision)
    {
        using var be = fp32 ? CpuBackend.F32() : CpuBackend.F64();
        using var t = be.Empty([3, 5, 7], precision);
        Assert.Equal(new[] { 3, 5, 7 }, t.Shape);
        Assert.All(be.DownloadDouble(t), v => Assert.True(double.IsNaN(v)));
        using var u = be.Empty(4, 6);
        Assert.All(be.DownloadDouble(u), v => Assert.True(double.IsNaN(v)));
    }

    [Fact]
    public void EmptyCountsAsAnAllocationAndNoLaunch()
    {
        var before = _be.Counters!.Snapshot();
        using var z = _be.Zeros(8, 8);
        var afterZeros = _be.Counters.Snapshot();
        using var e = _be.Empty(8, 8);
        using var m = _be.Empty([8, 8], Precision.Master);
        var zeros = LaunchCounters.Sum(LaunchCounters.Between(before, afterZeros).Values);
        var empty = LaunchCounters.Sum(LaunchCounters.Between(afterZeros, _be.Counters.Snapshot()).Values);
        Assert.Equal(2 * zeros.Allocations, empty.Allocations);
        Assert.Equal(zeros.Launches, empty.Launches);
        Assert.Equal(0, empty.Launches);
    }

    [Fact]
    public void EmptyIsCountedByTheLedgerAsZerosIs()
    {
        var be = new CpuBackend<double>();
        long live = be.LiveBytes;
        var z = be.Zeros(10, 10);
        long zeros = be.LiveBytes - live;
        var e = be.Empty(10, 10);
        Assert.Equal(2 * zeros, be.LiveBytes - live);
        z.Dispose();
        e.Dispose();
        Assert.Equal(live, be.LiveBytes);
    }

    [Fact]
    public void TheZerosFormIsOnlyForTheComparisonThatNeedsIt()
    {
        Assert.False(new CpuBackend<double>().EmptyAsZeros);
        using var be = new CpuBackend<double> { EmptyAsZeros = true };
        using var t = be.Empty(4, 4);
        Assert.All(be.DownloadDouble(t), v => Assert.Equal(0.0, v));
    }

    /// <summary>A read before the write: an accumulating GEMM (beta 1) or an AddNarrow onto Empty gives NaN where it reads.</summary>
    [Fact]
    public void ReadingEmptyBeforeWritingItPropagatesNaN()
    {
        using var a = Up(_rand.Normal(12), 3, 4);
        using var b = Up(_rand.Normal(20), 4, 5);
        using var c = _be.Empty(3, 5);
        _be.Gemm(a, false, b, false, c, 1f, 1f);                             // c += a·b reads c
        Assert.All(Down(c), v => Assert.True(double.IsNaN(v)));

        using var d = _be.Empty(3, 5);
        _be.Gemm(a, false, b, false, d);                                     // beta 0: c is not read
        using var z = _be.Zeros(3, 5);
        _be.Gemm(a, false, b, false, z);
        Assert.All(Down(d), v => Assert.True(double.IsFinite(v)));
        Assert.Equal(Down(z), Down(d));

        using var part = Up(_rand.Normal(6), 3, 2);
        using var e = _be.Empty(3, 5);
        _be.AddNarrow(e, part, 1, 1);                                        // += onto the poison
        Assert.All(Down(e), v => Assert.True(double.IsNaN(v)));
    }

    /// <summary>
    /// One poisoned element in the tiny model's input: the loss and every LoRA gradient come out NaN (the attention
    /// mixes every token of the joint sequence), so a buffer read before it is written cannot pass the model tests,
    /// which require finite results equal to the reference's.
    /// </summary>
    [Fact]
    public void OneNaNReadByTheModelReachesTheLossAndEveryLoraGradient()
    {
        var c = FluxConfig.Tiny;
        using var w = FluxWeights.Random(c, _be, 7);
        var model = new FluxModel(w);
        using var adapter = ModelFixture.RandomAdapter(_be, c, LoraMode.Meta, 3, 2, identities: 1, seed: 31);
        var binding = new LoraBinding(adapter, [0], trainDown: false, trainIdentity: true);
        var (x, target) = ModelFixture.Batch(_be, c, 1, 3, 5, 7, 32);
        using var _t = target;
        var img = _be.DownloadDouble(x.Img);
        img[img.Length / 2] = double.NaN;
        using var poisoned = _be.Upload(img, x.Img.Shape);
        _be.Copy(poisoned, x.Img);
        using var _x = x;
        double loss;
        using (var y = model.Forward(x, binding, out var s, recompute: false))
        {
            loss = _be.MseLoss(y, target, out var dy);
            using (s) using (dy) model.Backward(s, dy, binding);
        }
        Assert.True(double.IsNaN(loss));
        var grads = binding.TrainableParameters().Select(p => _be.DownloadDouble(p.Grad)).ToList();
        Assert.NotEmpty(grads);
        Assert.All(grads, g => Assert.Contains(g, double.IsNaN));
    }

    // ---------------------------------------------------------------- CopyNarrow

    [Theory]
    [InlineData(0, 1)]
    [InlineData(1, 0)]
    [InlineData(1, 3)]
    [InlineData(2, 2)]
    [InlineData(-1, 5)]
    public void CopyNarrowWritesTheSliceAndLeavesTheRest(int axis, int start)
    {
        int[] ds = [3, 6, 7];
        int ax = axis < 0 ? axis + 3 : axis;
        int[] ss = (int[])ds.Clone();
        ss[ax] = ds[ax] - start - (ax == 0 ? 0 : 1);
        var dv = _rand.Normal(3 * 6 * 7);
        var sv = _rand.Normal(ss[0] * ss[1] * ss[2]);
        using var dst = Up(dv, ds);
        using var src = Up(sv, ss);
        _be.CopyNarrow(dst, src, axis, start);
        var got = Down(dst);
        // naive: every index of dst, from src inside the slice, unchanged outside it
        for (int i = 0; i < ds[0]; i++)
        for (int j = 0; j < ds[1]; j++)
        for (int k = 0; k < ds[2]; k++)
        {
            int[] at = [i, j, k];
            int di = (i * ds[1] + j) * ds[2] + k;
            bool inside = at[ax] >= start && at[ax] < start + ss[ax];
            if (!inside) { Assert.Equal(dv[di], got[di]); continue; }
            at[ax] -= start;
            Assert.Equal(sv[(at[0] * ss[1] + at[1]) * ss[2] + at[2]], got[di]);
        }
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    public void CopyNarrowOntoZerosIsAddNarrowOntoZeros(int axis)
    {
        int[] ds = [4, 5, 6];
        int[] ss = (int[])ds.Clone();
        ss[axis] = 2;
        using var src = Up(_rand.Normal(ss[0] * ss[1] * ss[2]), ss);
        using var copied = _be.Zeros(ds);
        using var added = _be.Zeros(ds);
        _be.CopyNarrow(copied, src, axis, 1);
        _be.AddNarrow(added, src, axis, 1);
        Assert.Equal(Down(added), Down(copied));
    }

    /// <summary>Empty, then slices covering every column: nothing of the poison is left (SingleBlock's cat and dlin1).</summary>
    [Fact]
    public void SlicesCoveringEmptyLeaveNoPoison()
    {
        using var left = Up(_rand.Normal(2 * 3 * 4), 2, 3, 4);
        using var right = Up(_rand.Normal(2 * 3 * 5), 2, 3, 5);
        using var cat = _be.Empty(2, 3, 9);
        _be.CopyNarrow(cat, left, -1, 0);
        _be.CopyNarrow(cat, right, -1, 4);
        using var concat = _be.Concat(-1, left, right);
        Assert.Equal(Down(concat), Down(cat));
    }

    [Fact]
    public void CopyNarrowRejectsASliceThatDoesNotFit()
    {
        using var dst = _be.Zeros(2, 4);
        using var wide = _be.Zeros(2, 3);
        using var other = _be.Zeros(3, 2);
        Assert.Throws<ArgumentException>(() => _be.CopyNarrow(dst, wide, 1, 2));     // [2, 5) past 4
        Assert.Throws<ArgumentException>(() => _be.CopyNarrow(dst, other, 1, 0));    // rows differ off the axis
        Assert.Throws<ArgumentException>(() => _be.CopyNarrow(dst, wide, 1, -1));
    }

    [Fact]
    public void CopyNarrowFp32MatchesFp64() =>
        Fp32MatchesFp64("CopyNarrow", (be, rand) =>
        {
            using var dst = be.Upload(rand.Normal(B * L * C), B, L, C);
            using var src = be.Upload(rand.Normal(B * 5 * C), B, 5, C);
            be.CopyNarrow(dst, src, 1, 7);
            return [be.DownloadDouble(dst)];
        });
}
