using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Kernels.Verification;
using MetaLoraNative.Tests.Testing;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Cpu;

/// <summary>
/// The GELU fusions on the CPU (Fusions.GeluEpilogue): LinearGelu / LinearBackwardGelu (Gemm group) against the
/// unfused sequence of existing ops and finite differences, and the strided GeluTanhSlice / GeluTanhBackwardSlice
/// (Elementwise group) against the whole-tensor ops on narrowed copies.
/// </summary>
public sealed class CpuGeluFusionTests(ITestOutputHelper output) : CpuOpTests(output)
{
    // (rows, d_in, d_out) of the products: 2 × 5 tokens, 7 → 12
    const int Bt = 2, Lt = 5, In = 7, Out = 12;

    // ---------------------------------------------------------------- forward against the unfused sequence

    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    [InlineData(true, true)]
    public void LinearGeluEqualsLinearThenDeltaThenGelu(bool bias, bool delta)
    {
        using var x = Up(_rand.Normal(Bt * Lt * In), Bt, Lt, In);
        using var w = Up(_rand.Normal(Out * In, 0.5), Out, In);
        using var b = bias ? Up(_rand.Normal(Out), Out) : null;
        using var c0 = delta ? Up(_rand.Normal(Bt * Lt * Out), Bt, Lt, Out) : null;
        var (pre, act) = _be.LinearGelu(x, w, b, c0);
        using var _p = pre;
        using var _a = act;

        using var y = _be.Linear(x, w, b);
        if (c0 != null) _be.AddInPlace(y, c0);
        using var g = _be.GeluTanh(y);
        Assert.Equal(y.Shape, pre.Shape);
        Close(Down(y), Down(pre), Tight, "pre");
        Close(Down(g), Down(act), Tight, "act");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void LinearBackwardGeluEqualsLinearBackwardThenDeltaThenGeluBackward(bool delta)
    {
        using var dy = Up(_rand.Normal(Bt * Lt * Out), Bt, Lt, Out);
        using var w = Up(_rand.Normal(Out * In, 0.5), Out, In);
        using var pre = Up(_rand.Normal(Bt * Lt * In, 2), Bt, Lt, In);
        using var c0 = delta ? Up(_rand.Normal(Bt * Lt * In), Bt, Lt, In) : null;
        using var dPre = _be.LinearBackwardGelu(dy, w, pre, c0);

        using var dAct = _be.LinearBackward(dy, w);
        if (c0 != null) _be.AddInPlace(dAct, c0);
        using var expected = _be.GeluTanhBackward(pre, dAct);
        Close(Down(expected), Down(dPre), Tight, "dPre");
    }

    [Fact]
    public void LinearGeluRefusesAMisshapedDeltaOrPre()
    {
        using var x = Up(_rand.Normal(Bt * Lt * In), Bt, Lt, In);
        using var w = Up(_rand.Normal(Out * In), Out, In);
        using var bad = Up(_rand.Normal(Bt * Lt * In), Bt, Lt, In);
        Assert.Contains("c0", Assert.Throws<ArgumentException>(() => _be.LinearGelu(x, w, null, bad)).Message);
        using var dy = Up(_rand.Normal(Bt * Lt * Out), Bt, Lt, Out);
        Assert.Contains("pre", Assert.Throws<ArgumentException>(() => _be.LinearBackwardGelu(dy, w, dy, null)).Message);
    }

    // ---------------------------------------------------------------- finite differences (fp64)

    /// <summary>L = Σ act ∘ r: d x = (r ⊙ gelu'(pre))·W, d c0 = r ⊙ gelu'(pre), with and without bias and c0.</summary>
    [Theory]
    [InlineData(false, false)]
    [InlineData(true, true)]
    [InlineData(false, true)]
    public void LinearGeluGradientsMatchFiniteDifferences(bool bias, bool delta)
    {
        var xv = _rand.Normal(Bt * Lt * In);
        var wv = _rand.Normal(Out * In, 0.5);
        var cv = _rand.Normal(Bt * Lt * Out);
        var r = _rand.Normal(Bt * Lt * Out);
        using var w = Up(wv, Out, In);
        using var b = bias ? Up(_rand.Normal(Out), Out) : null;
        using var x = Up(xv, Bt, Lt, In);
        using var c0 = delta ? Up(cv, Bt, Lt, Out) : null;
        using var rt = Up(r, Bt, Lt, Out);
        var (pre, act) = _be.LinearGelu(x, w, b, c0);
        using var _p = pre;
        using var _a = act;
        using var dPre = _be.GeluTanhBackward(pre, rt);
        using var dx = _be.LinearBackward(dPre, w);
        Check("LinearGelu dx", xv, [Bt, Lt, In], t => _be.LinearGelu(t, w, b, c0).Act, r, Down(dx));
        if (delta) Check("LinearGelu dc0", cv, [Bt, Lt, Out], t => _be.LinearGelu(x, w, b, t).Act, r, Down(dPre));
    }

    /// <summary>
    /// LinearBackwardGelu is the gradient of L(pre) = Σ (gelu(pre)·Wᵀ + gelu(pre)·Vᵀ) ∘ r w.r.t. pre, with c0 = r·V the
    /// second linear's (a LoRA's) part of d act; without V, c0 is null.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void LinearBackwardGeluMatchesFiniteDifferences(bool delta)
    {
        var pv = _rand.Normal(Bt * Lt * In, 2);
        var r = _rand.Normal(Bt * Lt * Out);
        using var w = Up(_rand.Normal(Out * In, 0.5), Out, In);
        using var v = Up(_rand.Normal(Out * In, 0.5), Out, In);
        using var b = Up(_rand.Normal(Out), Out);
        using var rt = Up(r, Bt, Lt, Out);
        using var pre = Up(pv, Bt, Lt, In);
        using var c0 = delta ? _be.LinearBackward(rt, v) : null;
        using var dPre = _be.LinearBackwardGelu(rt, w, pre, c0);
        Tensor Forward(Tensor p)
        {
            using var act = _be.GeluTanh(p);
            var y = _be.Linear(act, w, b);
            if (delta)
            {
                using var lora = _be.Linear(act, v, null);
                _be.AddInPlace(y, lora);
            }
            return y;
        }
        Check("LinearBackwardGelu dpre", pv, [Bt, Lt, In], Forward, r, Down(dPre));
    }

    // ---------------------------------------------------------------- the strided forms

    // a (B·L, 3C + mlp)-like source and a (B·L, C + mlp)-like destination: the single block's shapes in miniature
    const int Rows = 6, Cq = 5, Mlp = 8, C1 = 3;

    [Fact]
    public void GeluTanhSliceWritesGeluOfTheBlockAndNothingElse()
    {
        var lin1 = _rand.Normal(Rows * (3 * Cq + Mlp), 2);
        var before = _rand.Normal(Rows * (C1 + Mlp));
        using var src = Up(lin1, Rows, 3 * Cq + Mlp);
        using var dst = Up(before, Rows, C1 + Mlp);
        _be.GeluTanhSlice(MatrixSlice.ColumnsOf(src, 3 * Cq, Mlp), MatrixSlice.ColumnsOf(dst, C1, Mlp));

        using var narrowed = _be.Narrow(src, -1, 3 * Cq, Mlp);
        var g = Down(_be.GeluTanh(narrowed));
        var got = Down(dst);
        for (int r = 0; r < Rows; r++)
        for (int j = 0; j < C1 + Mlp; j++)
        {
            double expected = j < C1 ? before[r * (C1 + Mlp) + j] : g[r * Mlp + j - C1];
            Assert.Equal(expected, got[r * (C1 + Mlp) + j]);
        }
        Assert.Equal(lin1, Down(src));
    }

    [Fact]
    public void GeluTanhBackwardSliceEqualsTheWholeTensorBackwardOnNarrowedCopies()
    {
        var lin1 = _rand.Normal(Rows * (3 * Cq + Mlp), 2);
        var dcat = _rand.Normal(Rows * (C1 + Mlp));
        using var x = Up(lin1, Rows, 3 * Cq + Mlp);
        using var dy = Up(dcat, Rows, C1 + Mlp);
        using var dx = _be.Zeros(Rows, 3 * Cq + Mlp);
        _be.GeluTanhBackwardSlice(MatrixSlice.ColumnsOf(x, 3 * Cq, Mlp), MatrixSlice.ColumnsOf(dy, C1, Mlp), MatrixSlice.ColumnsOf(dx, 3 * Cq, Mlp));

        using var xn = _be.Narrow(x, -1, 3 * Cq, Mlp);
        using var dyn = _be.Narrow(dy, -1, C1, Mlp);
        using var expected = _be.GeluTanhBackward(xn, dyn);
        using var zeros = _be.Zeros(Rows, 3 * Cq);
        using var whole = _be.Concat(-1, zeros, expected);
        Assert.Equal(Down(whole), Down(dx));
    }

    /// <summary>L = Σ gelu(block of x) ∘ r through the strided forward; the strided backward gives dL/dx's block.</summary>
    [Fact]
    public void GeluTanhSliceBackwardMatchesFiniteDifferences()
    {
        var xv = _rand.Normal(Rows * (3 * Cq + Mlp), 2);
        var r = _rand.Normal(Rows * Mlp);
        using var x = Up(xv, Rows, 3 * Cq + Mlp);
        using var rWide = Up([.. Enumerable.Range(0, Rows).SelectMany(i => new double[C1].Concat(r.Skip(i * Mlp).Take(Mlp)))], Rows, C1 + Mlp);
        using var dx = _be.Zeros(Rows, 3 * Cq + Mlp);
        _be.GeluTanhBackwardSlice(MatrixSlice.ColumnsOf(x, 3 * Cq, Mlp), MatrixSlice.ColumnsOf(rWide, C1, Mlp), MatrixSlice.ColumnsOf(dx, 3 * Cq, Mlp));
        Tensor Forward(Tensor t)
        {
            var y = _be.Zeros(Rows, Mlp);
            _be.GeluTanhSlice(MatrixSlice.ColumnsOf(t, 3 * Cq, Mlp), y);
            return y;
        }
        // columns outside the block get a zero gradient, which the finite differences see too
        Check("GeluTanhSlice dx", xv, [Rows, 3 * Cq + Mlp], Forward, r, Down(dx));
    }

    [Fact]
    public void StridedGeluRefusesBlocksOfDifferentShapes()
    {
        using var a = _be.Zeros(4, 8);
        using var b = _be.Zeros(4, 8);
        Assert.Throws<ArgumentException>(() => _be.GeluTanhSlice(MatrixSlice.ColumnsOf(a, 0, 4), MatrixSlice.ColumnsOf(b, 0, 3)));
        Assert.Throws<ArgumentException>(() => _be.GeluTanhBackwardSlice(MatrixSlice.ColumnsOf(a, 0, 4), MatrixSlice.ColumnsOf(b, 4, 4),
                                                                         MatrixSlice.ColumnsOf(b, 5, 4)));
    }

    // ---------------------------------------------------------------- fp32 vs fp64

    [Fact]
    public void LinearGeluFp32MatchesFp64() => Fp32MatchesFp64("LinearGelu(Backward)", (be, r) =>
    {
        var x = be.Upload(r.Normal(B * L * C), B, L, C);
        var w = be.Upload(r.Normal(2 * C * C, 0.1), 2 * C, C);
        var bias = be.Upload(r.Normal(2 * C), 2 * C);
        var c0 = be.Upload(r.Normal(B * L * 2 * C), B, L, 2 * C);
        var (pre, act) = be.LinearGelu(x, w, bias, c0);
        var dy = be.Upload(r.Normal(B * L * C), B, L, C);
        var w2 = be.Upload(r.Normal(2 * C * C, 0.1), C, 2 * C);
        var dPre = be.LinearBackwardGelu(dy, w2, pre, c0);
        return [be.DownloadDouble(pre), be.DownloadDouble(act), be.DownloadDouble(dPre)];
    });

    [Fact]
    public void StridedGeluFp32MatchesFp64() => Fp32MatchesFp64("GeluTanh(Backward)Slice", (be, r) =>
    {
        var x = be.Upload(r.Normal(B * L * 4 * C, 2), B * L, 4 * C);
        var dy = be.Upload(r.Normal(B * L * 2 * C), B * L, 2 * C);
        var y = be.Zeros(B * L, 2 * C);
        var dx = be.Zeros(B * L, 4 * C);
        be.GeluTanhSlice(MatrixSlice.ColumnsOf(x, 3 * C, C), MatrixSlice.ColumnsOf(y, C, C));
        be.GeluTanhBackwardSlice(MatrixSlice.ColumnsOf(x, 3 * C, C), MatrixSlice.ColumnsOf(dy, C, C), MatrixSlice.ColumnsOf(dx, 3 * C, C));
        return [be.DownloadDouble(y), be.DownloadDouble(dx)];
    });

    // ---------------------------------------------------------------- bf16 emulation

    /// <summary>
    /// On the bf16 emulation the fused product rounds pre once (the fp32 accumulator holds c0 and the bias), the
    /// unfused sequence rounds after the product and again after adding c0: each is held against the fp64 oracle,
    /// and the fused error may not exceed twice the unfused one (the house tolerance rule).
    /// </summary>
    [Fact]
    public void Bf16EmulationLinearGeluIsNoLessAccurateThanTheUnfusedSequence()
    {
        using var emu = new Bf16EmulationBackend();
        var xv = _rand.Normal(Bt * Lt * 64);
        var wv = _rand.Normal(96 * 64, 0.2);
        var bv = _rand.Normal(96);
        var cv = _rand.Normal(Bt * Lt * 96);
        var dyv = _rand.Normal(Bt * Lt * 64);
        var w2v = _rand.Normal(64 * 96, 0.2);
        // the oracle on the bf16-rounded inputs both emulated forms read
        double[] R(double[] v) => ParityContext.RoundBf16(v);
        using var x = Up(R(xv), Bt, Lt, 64);
        using var w = Up(R(wv), 96, 64);
        using var b = Up(R(bv), 96);
        using var c0 = Up(R(cv), Bt, Lt, 96);
        using var dy = Up(R(dyv), Bt, Lt, 64);
        using var w2 = Up(R(w2v), 64, 96);
        var (pre, act) = _be.LinearGelu(x, w, b, c0);
        using var dPre = _be.LinearBackwardGelu(dy, w2, pre, c0);

        Tensor E(double[] v, params int[] shape) => emu.Upload(Array.ConvertAll(v, d => (float)d), shape);
        using var ex = E(xv, Bt, Lt, 64);
        using var ew = E(wv, 96, 64);
        using var eb = E(bv, 96);
        using var ec = E(cv, Bt, Lt, 96);
        using var edy = E(dyv, Bt, Lt, 64);
        using var ew2 = E(w2v, 64, 96);
        var (fPre, fAct) = emu.LinearGelu(ex, ew, eb, ec);
        using var fdPre = emu.LinearBackwardGelu(edy, ew2, fPre, ec);
        using var uPre = emu.Linear(ex, ew, eb);
        emu.AddInPlace(uPre, ec);
        using var uAct = emu.GeluTanh(uPre);
        using var uAct2 = emu.LinearBackward(edy, ew2);
        emu.AddInPlace(uAct2, ec);
        using var udPre = emu.GeluTanhBackward(fPre, uAct2);   // the same pre, so only the backward's own rounding differs

        static double Err(double[] a, double[] o) => a.Zip(o, (p, q) => Math.Abs(p - q)).Max() / o.Max(Math.Abs);
        foreach (var (name, fused, unfused, oracle) in new[]
                 {
                     ("pre", fPre, uPre, pre), ("act", fAct, uAct, act), ("dPre", fdPre, udPre, dPre),
                 })
        {
            var o = Down(oracle);
            double ef = Err(emu.DownloadDouble(fused), o), eu = Err(emu.DownloadDouble(unfused), o);
            Output.WriteLine($"{name}: fused {ef:E2}, unfused {eu:E2} against fp64");
            Assert.True(ef <= 2 * eu + 1e-7, $"{name}: fused bf16 error {ef:E2} against unfused {eu:E2}");
            Assert.True(ef < 1e-2, $"{name}: fused bf16 error {ef:E2}");
        }
        pre.Dispose(); act.Dispose(); fPre.Dispose(); fAct.Dispose();
    }

    [Fact]
    public void Bf16EmulationStridedGeluEqualsTheWholeTensorOps()
    {
        using var emu = new Bf16EmulationBackend();
        var xv = Array.ConvertAll(_rand.Normal(Rows * (3 * Cq + Mlp), 2), d => (float)d);
        var dyv = Array.ConvertAll(_rand.Normal(Rows * (C1 + Mlp)), d => (float)d);
        using var x = emu.Upload(xv, Rows, 3 * Cq + Mlp);
        using var dy = emu.Upload(dyv, Rows, C1 + Mlp);
        using var y = emu.Zeros(Rows, Mlp);
        using var dx = emu.Zeros(Rows, Mlp);
        emu.GeluTanhSlice(MatrixSlice.ColumnsOf(x, 3 * Cq, Mlp), y);
        emu.GeluTanhBackwardSlice(MatrixSlice.ColumnsOf(x, 3 * Cq, Mlp), MatrixSlice.ColumnsOf(dy, C1, Mlp), dx);
        using var xn = emu.Narrow(x, -1, 3 * Cq, Mlp);
        using var dyn = emu.Narrow(dy, -1, C1, Mlp);
        using var g = emu.GeluTanh(xn);
        using var gb = emu.GeluTanhBackward(xn, dyn);
        Assert.Equal(emu.Download(g), emu.Download(y));
        Assert.Equal(emu.Download(gb), emu.Download(dx));
    }
}
