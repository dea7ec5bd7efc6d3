using MetaLoraNative.Engine;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cpu;

/// <summary>The Attention group on the CPU (CpuBackend.Attention.cs): the RoPE table and rotation, softmax attention.</summary>
public sealed class CpuAttentionTests(ITestOutputHelper output) : CpuOpTests(output)
{
    // ---------------------------------------------------------------- forward

    [Fact]
    public void AttentionMatchesNaiveSoftmaxAttention()
    {
        const int B = 2, H = 3, L = 5, D = 4;
        var q = _rand.Normal(B * H * L * D);
        var k = _rand.Normal(B * H * L * D);
        var v = _rand.Normal(B * H * L * D);
        using var o = _be.Attention(Up(q, B, H, L, D), Up(k, B, H, L, D), Up(v, B, H, L, D), out var lse);
        var expected = new double[B * L * H * D];
        var expectedLse = new double[B * H * L];
        for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
        for (int i = 0; i < L; i++)
        {
            int qi = ((b * H + h) * L + i) * D;
            var w = new double[L];
            double z = 0;
            for (int j = 0; j < L; j++)
            {
                int kj = ((b * H + h) * L + j) * D;
                double s = 0;
                for (int d = 0; d < D; d++) s += q[qi + d] * k[kj + d];
                w[j] = Math.Exp(s / Math.Sqrt(D)); // no max subtraction: the naive formula
                z += w[j];
            }
            expectedLse[(b * H + h) * L + i] = Math.Log(z);
            for (int d = 0; d < D; d++)
            {
                double acc = 0;
                for (int j = 0; j < L; j++) acc += w[j] / z * v[((b * H + h) * L + j) * D + d];
                expected[(b * L + i) * H * D + h * D + d] = acc; // "B H L D -> B L (H D)"
            }
        }
        Close(expected, _be.DownloadDouble(o), Tight, "out");
        Close(expectedLse, _be.DownloadDouble(lse), Tight, "lse");
    }

    [Fact]
    public void RopeTableMatchesTheDirectFormulaForFluxAxes()
    {
        int[] axes = [16, 56, 56];
        const int B = 1, L = 6;
        var ids = new double[B * L * 3];
        for (int l = 0; l < L; l++) { ids[l * 3 + 1] = l / 3; ids[l * 3 + 2] = l % 3 + 0.5 * l; }
        using var pe = _be.RopeTable(Up(ids, B, L, 3), axes, 10000f);
        Assert.Equal(new[] { B, L, 64, 2 }, pe.Shape);
        var got = _be.DownloadDouble(pe);
        for (int l = 0; l < L; l++)
        {
            int p = 0;
            for (int axis = 0; axis < 3; axis++)
            for (int k = 0; k < axes[axis] / 2; k++, p++)
            {
                double angle = ids[l * 3 + axis] / Math.Pow(10000, 2.0 * k / axes[axis]);
                Assert.Equal(Math.Cos(angle), got[(l * 64 + p) * 2], 12);
                Assert.Equal(Math.Sin(angle), got[(l * 64 + p) * 2 + 1], 12);
            }
        }
    }

    [Fact]
    public void ApplyRopeRotatesAdjacentPairs()
    {
        // One pair at angle π/2 (theta^0 = 1, id = π/2): (x0, x1) → (−x1, x0); the second pair has id 0.
        using var pe = _be.RopeTable(Up([Math.PI / 2, 0], 1, 1, 2), [2, 2], 10000f);
        using var y = _be.ApplyRope(Up([3, 5, 7, 11], 1, 1, 1, 4), pe);
        Close([-5, 3, 7, 11], _be.DownloadDouble(y), Tight, "y");
        using var back = _be.ApplyRopeBackward(y, pe);
        Close([3, 5, 7, 11], _be.DownloadDouble(back), Tight, "inverse");
    }

    // ---------------------------------------------------------------- backward (finite differences)

    [Fact]
    public void ApplyRopeBackwardIsTheTransposeRotation()
    {
        const int B = 2, H = 2, L = 3, D = 8;
        using var ids = Up(_rand.Uniform(B * L * 2, 0, 6), B, L, 2);
        using var pe = _be.RopeTable(ids, [4, 4], 10000f);
        var x = _rand.Normal(B * H * L * D);
        var r = _rand.Normal(B * H * L * D);
        using var rt = Up(r, B, H, L, D);
        using var dx = _be.ApplyRopeBackward(rt, pe);
        Check("ApplyRope dx", x, [B, H, L, D], t => _be.ApplyRope(t, pe), r, Down(dx));
    }

    [Fact]
    public void AttentionBackwardGivesDqDkAndDv()
    {
        const int B = 2, H = 2, L = 4, D = 8;
        int[] s = [B, H, L, D];
        var q = _rand.Normal(B * H * L * D);
        var k = _rand.Normal(B * H * L * D);
        var v = _rand.Normal(B * H * L * D);
        var r = _rand.Normal(B * L * H * D);
        using var qt = Up(q, s);
        using var kt = Up(k, s);
        using var vt = Up(v, s);
        using var rt = Up(r, B, L, H * D);
        using var o = _be.Attention(qt, kt, vt, out var lse);
        var (dq, dk, dv) = _be.AttentionBackward(rt, qt, kt, vt, o, lse);
        Check("Attention dq", q, s, t => _be.Attention(t, kt, vt, out _), r, Down(dq));
        Check("Attention dk", k, s, t => _be.Attention(qt, t, vt, out _), r, Down(dk));
        Check("Attention dv", v, s, t => _be.Attention(qt, kt, t, out _), r, Down(dv));
        lse.Dispose(); dq.Dispose(); dk.Dispose(); dv.Dispose();
    }

    // ---------------------------------------------------------------- fp32 vs fp64

    [Fact]
    public void RopeTableApplyRopeFp32MatchesFp64() => Fp32MatchesFp64("RopeTable/ApplyRope", (be, r) =>
    {
        var ids = new double[B * L * 3];
        for (int i = 0; i < B * L; i++) { ids[i * 3 + 1] = i % L / 8; ids[i * 3 + 2] = i % 8; }
        var pe = be.RopeTable(be.Upload(ids, B, L, 3), [4, 14, 14], 10000f);
        var x = be.Upload(r.Normal(B * H * L * D), B, H, L, D);
        var y = be.ApplyRope(x, pe);
        return [be.DownloadDouble(pe), be.DownloadDouble(y), be.DownloadDouble(be.ApplyRopeBackward(y, pe))];
    });

    [Fact]
    public void AttentionFp32MatchesFp64() => Fp32MatchesFp64("Attention", (be, r) =>
    {
        var q = be.Upload(r.Normal(B * H * L * D), B, H, L, D);
        var k = be.Upload(r.Normal(B * H * L * D), B, H, L, D);
        var v = be.Upload(r.Normal(B * H * L * D), B, H, L, D);
        var o = be.Attention(q, k, v, out var lse);
        var (dq, dk, dv) = be.AttentionBackward(be.Upload(r.Normal(B * L * H * D), B, L, H * D), q, k, v, o, lse);
        return [be.DownloadDouble(o), be.DownloadDouble(lse), be.DownloadDouble(dq), be.DownloadDouble(dk), be.DownloadDouble(dv)];
    });
}
