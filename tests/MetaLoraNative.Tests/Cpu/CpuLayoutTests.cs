using MetaLoraNative.Engine;
using MetaLoraNative.Tests.Testing;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cpu;

/// <summary>The Layout group on the CPU (CpuBackend.Layout.cs): narrow, add-narrow, concat, the qkv split and merge.</summary>
public sealed class CpuLayoutTests(ITestOutputHelper output) : CpuOpTests(output)
{
    // ---------------------------------------------------------------- forward

    [Fact]
    public void SplitQkvFollowsBflLayout()
    {
        // qkv (1, 1, 3·2·1): channels are [q_h0, q_h1, k_h0, k_h1, v_h0, v_h1].
        var (q, k, v) = _be.SplitQkv(Up([1, 2, 3, 4, 5, 6], 1, 1, 6), 2);
        Assert.Equal(new[] { 1, 2, 1, 1 }, q.Shape);
        Assert.Equal(new double[] { 1, 2 }, _be.DownloadDouble(q));
        Assert.Equal(new double[] { 3, 4 }, _be.DownloadDouble(k));
        Assert.Equal(new double[] { 5, 6 }, _be.DownloadDouble(v));
        Assert.Equal(new double[] { 1, 2, 3, 4, 5, 6 }, _be.DownloadDouble(_be.MergeQkv(q, k, v)));
    }

    [Fact]
    public void ConcatAndNarrowAreInverse()
    {
        var a = Up([1, 2, 3, 4], 2, 2);
        var b = Up([5, 6], 2, 1);
        using var c = _be.Concat(-1, a, b);
        Assert.Equal(new double[] { 1, 2, 5, 3, 4, 6 }, _be.DownloadDouble(c));
        Assert.Equal(new double[] { 2, 5, 4, 6 }, _be.DownloadDouble(_be.Narrow(c, 1, 1, 2)));
    }

    // ---------------------------------------------------------------- backward (finite differences)

    [Theory]
    [InlineData(0, 1, 1)]
    [InlineData(1, 1, 3)]
    [InlineData(-1, 2, 2)]
    public void AddNarrowIsTheBackwardOfNarrow(int axis, int start, int length)
    {
        int[] xs = [2, 5, 4];
        var x = _rand.Normal(40);
        int[] ys = (int[])xs.Clone();
        ys[axis < 0 ? axis + 3 : axis] = length;
        var r = _rand.Normal(TestData.Numel(ys));
        using var rt = Up(r, ys);
        using var dx = _be.Zeros(xs);
        _be.AddNarrow(dx, rt, axis, start);
        Check($"Narrow(axis {axis}) dx", x, xs, t => _be.Narrow(t, axis, start, length), r, Down(dx));
    }

    [Fact]
    public void NarrowIsTheBackwardOfConcat()
    {
        var p0 = _rand.Normal(12);
        var p1 = _rand.Normal(24);
        var r = _rand.Normal(36);
        using var t0 = Up(p0, 2, 2, 3);
        using var t1 = Up(p1, 2, 4, 3);
        using var rt = Up(r, 2, 6, 3);
        using var d0 = _be.Narrow(rt, 1, 0, 2);
        using var d1 = _be.Narrow(rt, 1, 2, 4);
        Check("Concat d(part 0)", p0, [2, 2, 3], t => _be.Concat(1, t, t1), r, Down(d0));
        Check("Concat d(part 1)", p1, [2, 4, 3], t => _be.Concat(1, t0, t), r, Down(d1));
    }

    [Fact]
    public void MergeQkvIsTheBackwardOfSplitQkvAndViceVersa()
    {
        const int B = 2, L = 3, H = 2, D = 4;
        int[] qkvShape = [B, L, 3 * H * D], headShape = [B, H, L, D];
        var x = _rand.Normal(B * L * 3 * H * D);
        var rq = _rand.Normal(B * H * L * D);
        var rk = _rand.Normal(B * H * L * D);
        var rv = _rand.Normal(B * H * L * D);
        using var rqt = Up(rq, headShape);
        using var rkt = Up(rk, headShape);
        using var rvt = Up(rv, headShape);
        using var merged = _be.MergeQkv(rqt, rkt, rvt);
        double Split(double[] v)
        {
            using var t = Up(v, qkvShape);
            var (q, k, vv) = _be.SplitQkv(t, H);
            using (q) using (k) using (vv)
                return Dot(Down(q), rq) + Dot(Down(k), rk) + Dot(Down(vv), rv);
        }
        GradCheck.Check("SplitQkv dqkv", Split, x, Down(merged), Output);

        // MergeQkv's own gradient with respect to dq is the Q part of SplitQkv(R).
        var dq = _rand.Normal(B * H * L * D);
        var r = _rand.Normal(B * L * 3 * H * D);
        using var rt = Up(r, qkvShape);
        var (sq, sk, sv) = _be.SplitQkv(rt, H);
        sk.Dispose();
        sv.Dispose();
        using var dkt = Up(rk, headShape);
        using var dvt = Up(rv, headShape);
        Check("MergeQkv d(dq)", dq, headShape, t => _be.MergeQkv(t, dkt, dvt), r, Down(sq));
        sq.Dispose();
    }

    // ---------------------------------------------------------------- fp32 vs fp64

    [Fact]
    public void NarrowAddNarrowConcatFp32MatchesFp64() => Fp32MatchesFp64("Narrow/AddNarrow/Concat", (be, r) =>
    {
        var x = be.Upload(r.Normal(B * L * C), B, L, C);
        var n = be.Narrow(x, 2, 5, 40);
        be.AddNarrow(x, be.Upload(r.Normal(B * L * 40), B, L, 40), 2, 10);
        return [be.DownloadDouble(n), be.DownloadDouble(x), be.DownloadDouble(be.Concat(1, x, n.Reshape(B, -1, C)))];
    });

    [Fact]
    public void SplitQkvMergeQkvFp32MatchesFp64() => Fp32MatchesFp64("SplitQkv/MergeQkv", (be, r) =>
    {
        var (q, k, v) = be.SplitQkv(be.Upload(r.Normal(B * L * 3 * H * D), B, L, 3 * H * D), H);
        return [be.DownloadDouble(q), be.DownloadDouble(be.MergeQkv(v, q, k))];
    });
}
