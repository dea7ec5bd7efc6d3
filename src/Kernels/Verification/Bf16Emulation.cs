using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Quantization;

namespace MetaLoraNative.Kernels.Verification;

/// <summary>
/// The fp32 CPU engine with the CUDA backend's storage rules: every Compute tensor is rounded to bf16 when it is
/// uploaded and whenever an op writes it, Master tensors stay fp32, and the operands the GPU converts to bf16
/// before a kernel (an fp32 input of a non-elementwise op, the fp32 side of a mixed GEMM) are rounded first.
/// Accumulation stays fp32/fp64 as on the GPU. It is the "honest bf16 implementation" whose error against the
/// fp64 oracle sets the tolerance of the whole-model checks (see <see cref="CudaParity"/>).
///
/// The statistics the GPU keeps in fp32 (LayerNorm stats, RMSNorm rstd, attention lse) and the RoPE table are not
/// rounded. Slow (a host round trip per op): meant for the tiny model only.
/// </summary>
public sealed class Bf16EmulationBackend : IBackend
{
    readonly IBackend inner;

    public Bf16EmulationBackend() : this(CpuBackend.F32()) { }
    public Bf16EmulationBackend(IBackend inner) => this.inner = inner;

    public string Name => "cpu-f32-bf16emu";

    sealed class EmuTensor(Bf16EmulationBackend owner, Tensor inner, Precision precision) : Tensor(inner.Shape)
    {
        public Tensor Inner { get; } = inner;
        public Precision Precision { get; } = precision;
        public override IBackend Backend => owner;
        public override Tensor Reshape(params int[] shape) => new EmuTensor(owner, Inner.Reshape(shape), Precision);
        public override Tensor Slice(long offset, params int[] shape) => new EmuTensor(owner, Inner.Slice(offset, shape), Precision);
        public override void Dispose()
        {
            Inner.Dispose();
            base.Dispose();
        }
    }

    static EmuTensor E(Tensor t) => t as EmuTensor ?? throw new ArgumentException($"{t} does not belong to the bf16 emulation backend");
    static Tensor I(Tensor t) => E(t).Inner;

    /// <summary>Rounds an inner tensor to bf16 in place.</summary>
    void RoundInPlace(Tensor inner)
    {
        var v = this.inner.Download(inner);
        for (int i = 0; i < v.Length; i++) v[i] = HalfPrecision.RoundToBFloat16(v[i]);
        using var r = this.inner.Upload(v, inner.Shape);
        this.inner.Copy(r, inner);
    }

    /// <summary>Wraps an op's result as a bf16 Compute tensor.</summary>
    Tensor Out(Tensor inner)
    {
        RoundInPlace(inner);
        return new EmuTensor(this, inner, Precision.Compute);
    }

    /// <summary>Wraps a result the GPU keeps in fp32.</summary>
    Tensor OutF32(Tensor inner) => new EmuTensor(this, inner, Precision.Master);

    /// <summary>The operand a kernel reads: a Master tensor goes through a bf16 temporary, as on the GPU.</summary>
    Borrowed<Tensor> Bf16(Tensor t)
    {
        var e = E(t);
        if (e.Precision == Precision.Compute) return Borrowed<Tensor>.Of(e.Inner);
        var v = inner.Download(e.Inner);
        for (int i = 0; i < v.Length; i++) v[i] = HalfPrecision.RoundToBFloat16(v[i]);
        return Borrowed<Tensor>.Owned(inner.Upload(v, e.Shape));
    }

    // ---------------------------------------------------------------- Memory

    public Tensor Zeros(params int[] shape) => new EmuTensor(this, inner.Zeros(shape), Precision.Compute);
    public Tensor Zeros(int[] shape, Precision precision) => new EmuTensor(this, inner.Zeros(shape, precision), precision);
    public Tensor Empty(params int[] shape) => new EmuTensor(this, inner.Empty(shape), Precision.Compute);
    public Tensor Empty(int[] shape, Precision precision) => new EmuTensor(this, inner.Empty(shape, precision), precision);
    public Tensor Upload(ReadOnlySpan<float> values, params int[] shape) => Upload(values, shape, Precision.Compute);

    public Tensor Upload(ReadOnlySpan<float> values, int[] shape, Precision precision)
    {
        var t = new EmuTensor(this, inner.Upload(values, shape), precision);
        if (precision == Precision.Compute) RoundInPlace(t.Inner);
        return t;
    }

    public Tensor Upload(ReadOnlySpan<double> values, params int[] shape) => Out(inner.Upload(values, shape));
    public float[] Download(Tensor t) => inner.Download(I(t));
    public double[] DownloadDouble(Tensor t) => inner.DownloadDouble(I(t));

    public void Copy(Tensor src, Tensor dst)
    {
        inner.Copy(I(src), I(dst));
        if (E(dst).Precision == Precision.Compute) RoundInPlace(I(dst));
    }

    public void Fill(Tensor t, float value)
    {
        inner.Fill(I(t), value);
        if (E(t).Precision == Precision.Compute) RoundInPlace(I(t));
    }

    // ---------------------------------------------------------------- Gemm

    public void Gemm(Tensor a, bool transA, Tensor b, bool transB, Tensor c, float alpha = 1f, float beta = 0f) =>
        GemmSlice(a, transA, b, transB, c, alpha, beta);

    public void GemmSlice(MatrixSlice a, bool transA, MatrixSlice b, bool transB, MatrixSlice c, float alpha = 1f, float beta = 0f)
    {
        bool allMaster = E(a.Tensor).Precision == Precision.Master && E(b.Tensor).Precision == Precision.Master && E(c.Tensor).Precision == Precision.Master;
        var ic = c with { Tensor = I(c.Tensor) };
        if (allMaster) { inner.GemmSlice(a with { Tensor = I(a.Tensor) }, transA, b with { Tensor = I(b.Tensor) }, transB, ic, alpha, beta); return; }
        using var ra = Bf16(a.Tensor);
        using var rb = Bf16(b.Tensor);
        inner.GemmSlice(a with { Tensor = ra.Tensor }, transA, b with { Tensor = rb.Tensor }, transB, ic, alpha, beta);
        if (E(c.Tensor).Precision == Precision.Compute) RoundInPlace(ic.Tensor);   // the rest of c is bf16 already
    }

    /// <summary>The entries one by one, each stored as GemmSlice stores it (the grouped kernel reads and writes fp32 entries as they are).</summary>
    public void GemmGroup(IReadOnlyList<GemmEntry> entries)
    {
        foreach (var e in entries) GemmSlice(e.A, e.TransA, e.B, e.TransB, e.C, e.Alpha, e.Beta);
    }

    /// <summary>As the CUDA backend runs it by default: the two GEMMs, each stored as GemmSlice stores it.</summary>
    public void LoraUpBackward(MatrixSlice dy, Tensor u, MatrixSlice? a, Tensor? dU, MatrixSlice dmid)
    {
        if (a is { } aa && dU != null) GemmSlice(dy, true, aa, false, dU, 1f, 1f);   // dU += dyᵀ·a
        GemmSlice(dy, false, u, false, dmid);                                       // dmid = dy·u
    }

    public Tensor Linear(Tensor x, Tensor w, Tensor? bias)
    {
        using var rx = Bf16(x);
        using var rw = Bf16(w);
        using Borrowed<Tensor>? rb = bias == null ? null : Bf16(bias);
        return Out(inner.Linear(rx.Tensor, rw.Tensor, rb?.Tensor));
    }

    public Tensor LinearBackward(Tensor dy, Tensor w)
    {
        using var rdy = Bf16(dy);
        using var rw = Bf16(w);
        return Out(inner.LinearBackward(rdy.Tensor, rw.Tensor));
    }

    /// <summary>As the GELU epilogue: pre and act from the fp32 accumulator (c0 and the bias added there), each rounded once to bf16.</summary>
    public (Tensor Pre, Tensor Act) LinearGelu(Tensor x, Tensor w, Tensor? bias, Tensor? c0)
    {
        using var rx = Bf16(x);
        using var rw = Bf16(w);
        using Borrowed<Tensor>? rb = bias == null ? null : Bf16(bias);
        using Borrowed<Tensor>? rc = c0 == null ? null : Bf16(c0);
        var (pre, act) = inner.LinearGelu(rx.Tensor, rw.Tensor, rb?.Tensor, rc?.Tensor);
        return (Out(pre), Out(act));
    }

    /// <summary>As the DGELU epilogue: (dy·W + c0) in fp32 times gelu'(pre) of the bf16 pre, rounded once.</summary>
    public Tensor LinearBackwardGelu(Tensor dy, Tensor w, Tensor pre, Tensor? c0)
    {
        using var rdy = Bf16(dy);
        using var rw = Bf16(w);
        using var rp = Bf16(pre);
        using Borrowed<Tensor>? rc = c0 == null ? null : Bf16(c0);
        return Out(inner.LinearBackwardGelu(rdy.Tensor, rw.Tensor, rp.Tensor, rc?.Tensor));
    }

    // ---------------------------------------------------------------- Elementwise (fp32 inputs read directly)

    public void AddInPlace(Tensor acc, Tensor x, float alpha = 1f)
    {
        inner.AddInPlace(I(acc), I(x), alpha);
        if (E(acc).Precision == Precision.Compute) RoundInPlace(I(acc));
    }

    public void ScaleInPlace(Tensor t, float alpha)
    {
        inner.ScaleInPlace(I(t), alpha);
        if (E(t).Precision == Precision.Compute) RoundInPlace(I(t));
    }

    Tensor Unary(Tensor x, Func<Tensor, Tensor> op)
    {
        using var rx = Bf16(x);
        return Out(op(rx.Tensor));
    }

    Tensor Binary(Tensor x, Tensor y, Func<Tensor, Tensor, Tensor> op)
    {
        using var rx = Bf16(x);
        using var ry = Bf16(y);
        return Out(op(rx.Tensor, ry.Tensor));
    }

    public Tensor Silu(Tensor x) => Unary(x, inner.Silu);
    public Tensor GeluTanh(Tensor x) => Unary(x, inner.GeluTanh);
    public Tensor GeluTanhBackward(Tensor x, Tensor dy) => Binary(x, dy, inner.GeluTanhBackward);

    // the strided forms read bf16 blocks and write a bf16 block (the rest of the output is bf16 already)
    public void GeluTanhSlice(MatrixSlice x, MatrixSlice y)
    {
        using var rx = Bf16(x.Tensor);
        inner.GeluTanhSlice(x with { Tensor = rx.Tensor }, y with { Tensor = I(y.Tensor) });
        if (E(y.Tensor).Precision == Precision.Compute) RoundInPlace(I(y.Tensor));
    }

    public void GeluTanhBackwardSlice(MatrixSlice x, MatrixSlice dy, MatrixSlice dx)
    {
        using var rx = Bf16(x.Tensor);
        using var rdy = Bf16(dy.Tensor);
        inner.GeluTanhBackwardSlice(x with { Tensor = rx.Tensor }, dy with { Tensor = rdy.Tensor }, dx with { Tensor = I(dx.Tensor) });
        if (E(dx.Tensor).Precision == Precision.Compute) RoundInPlace(I(dx.Tensor));
    }

    // ---------------------------------------------------------------- Layout

    public Tensor Narrow(Tensor x, int axis, int start, int length) => Unary(x, v => inner.Narrow(v, axis, start, length));

    public void AddNarrow(Tensor dst, Tensor src, int axis, int start)
    {
        using var rs = Bf16(src);
        inner.AddNarrow(I(dst), rs.Tensor, axis, start);
        if (E(dst).Precision == Precision.Compute) RoundInPlace(I(dst));
    }

    /// <summary>As the GPU's slice_copy: src read in its precision, the slice rounded as it is stored (as Copy).</summary>
    public void CopyNarrow(Tensor dst, Tensor src, int axis, int start)
    {
        inner.CopyNarrow(I(dst), I(src), axis, start);
        if (E(dst).Precision == Precision.Compute) RoundInPlace(I(dst));
    }

    public Tensor Concat(int axis, params Tensor[] parts)
    {
        var ops = parts.Select(Bf16).ToArray();
        try { return Out(inner.Concat(axis, ops.Select(o => o.Tensor).ToArray())); }
        finally { foreach (var o in ops) o.Dispose(); }
    }

    public (Tensor Q, Tensor K, Tensor V) SplitQkv(Tensor qkv, int heads)
    {
        using var r = Bf16(qkv);
        var (q, k, v) = inner.SplitQkv(r.Tensor, heads);
        return (Out(q), Out(k), Out(v));
    }

    public Tensor MergeQkv(Tensor dq, Tensor dk, Tensor dv)
    {
        using var q = Bf16(dq);
        using var k = Bf16(dk);
        using var v = Bf16(dv);
        return Out(inner.MergeQkv(q.Tensor, k.Tensor, v.Tensor));
    }

    // ---------------------------------------------------------------- Norm

    public Tensor LayerNormModulate(Tensor x, Tensor shift, Tensor scale, float eps, out Tensor stats)
    {
        using var rx = Bf16(x);
        using var rsh = Bf16(shift);
        using var rsc = Bf16(scale);
        var y = Out(inner.LayerNormModulate(rx.Tensor, rsh.Tensor, rsc.Tensor, eps, out var s));
        stats = OutF32(s);
        return y;
    }

    public (Tensor Dx, Tensor DShift, Tensor DScale) LayerNormModulateBackward(Tensor dy, Tensor x, Tensor scale, Tensor stats)
    {
        using var rdy = Bf16(dy);
        using var rx = Bf16(x);
        using var rsc = Bf16(scale);
        var (dx, dsh, dsc) = inner.LayerNormModulateBackward(rdy.Tensor, rx.Tensor, rsc.Tensor, I(stats));
        return (Out(dx), Out(dsh), Out(dsc));
    }

    /// <summary>As the fused kernel: x1 rounded to bf16 as it is stored, and the statistics taken over the stored x1.</summary>
    public (Tensor X1, Tensor Modulated) ResidualLayerNormModulate(Tensor x, Tensor gate, Tensor y, Tensor shift, Tensor scale,
                                                                   float eps, out Tensor stats)
    {
        using var rx = Bf16(x);
        using var rg = Bf16(gate);
        using var ry = Bf16(y);
        using var rsh = Bf16(shift);
        using var rsc = Bf16(scale);
        var x1 = Out(inner.GatedResidual(rx.Tensor, rg.Tensor, ry.Tensor));
        var m = Out(inner.LayerNormModulate(I(x1), rsh.Tensor, rsc.Tensor, eps, out var s));
        stats = OutF32(s);
        return (x1, m);
    }

    /// <summary>As the fused kernel: dx1 is rounded only where it is stored; dy and dgate use it unrounded.</summary>
    public (Tensor Dx1, Tensor Dy, Tensor DGate, Tensor DShift, Tensor DScale) ResidualLayerNormModulateBackward(
        Tensor dModulated, Tensor dOut, Tensor x1, Tensor scale, Tensor stats, Tensor gate, Tensor y)
    {
        using var rdm = Bf16(dModulated);
        using var rdo = Bf16(dOut);
        using var rx1 = Bf16(x1);
        using var rsc = Bf16(scale);
        using var rg = Bf16(gate);
        using var ry = Bf16(y);
        var (dx1, dy, dg, dsh, dsc) = inner.ResidualLayerNormModulateBackward(rdm.Tensor, rdo.Tensor, rx1.Tensor, rsc.Tensor, I(stats),
                                                                               rg.Tensor, ry.Tensor);
        return (Out(dx1), Out(dy), Out(dg), Out(dsh), Out(dsc));
    }

    public Tensor RmsNorm(Tensor x, Tensor weight, float eps, out Tensor rstd)
    {
        using var rx = Bf16(x);
        using var rw = Bf16(weight);
        var y = Out(inner.RmsNorm(rx.Tensor, rw.Tensor, eps, out var r));
        rstd = OutF32(r);
        return y;
    }

    public Tensor RmsNormBackward(Tensor dy, Tensor x, Tensor weight, Tensor rstd)
    {
        using var rdy = Bf16(dy);
        using var rx = Bf16(x);
        using var rw = Bf16(weight);
        return Out(inner.RmsNormBackward(rdy.Tensor, rx.Tensor, rw.Tensor, I(rstd)));
    }

    // ---------------------------------------------------------------- Attention

    public Tensor RopeTable(Tensor ids, int[] axesDim, float theta) => OutF32(inner.RopeTable(I(ids), axesDim, theta));
    public Tensor ApplyRope(Tensor x, Tensor pe) => Unary(x, v => inner.ApplyRope(v, I(pe)));
    public Tensor ApplyRopeBackward(Tensor dy, Tensor pe) => Unary(dy, v => inner.ApplyRopeBackward(v, I(pe)));

    public Tensor Attention(Tensor q, Tensor k, Tensor v, out Tensor lse)
    {
        using var rq = Bf16(q);
        using var rk = Bf16(k);
        using var rv = Bf16(v);
        var o = Out(inner.Attention(rq.Tensor, rk.Tensor, rv.Tensor, out var l));
        lse = OutF32(l);
        return o;
    }

    public (Tensor Dq, Tensor Dk, Tensor Dv) AttentionBackward(Tensor dOut, Tensor q, Tensor k, Tensor v, Tensor output, Tensor lse)
    {
        using var rd = Bf16(dOut);
        using var rq = Bf16(q);
        using var rk = Bf16(k);
        using var rv = Bf16(v);
        using var ro = Bf16(output);
        var (dq, dk, dv) = inner.AttentionBackward(rd.Tensor, rq.Tensor, rk.Tensor, rv.Tensor, ro.Tensor, I(lse));
        return (Out(dq), Out(dk), Out(dv));
    }

    public (Tensor QRstd, Tensor KRstd) QkvNormRope(MatrixSlice qkv, QkNorm norm, Tensor pe, QkvJoint joint, int start)
    {
        using var rx = Bf16(qkv.Tensor);
        using var rq = Bf16(norm.QueryScale);
        using var rk = Bf16(norm.KeyScale);
        var (qr, kr) = inner.QkvNormRope(qkv with { Tensor = rx.Tensor }, norm with { QueryScale = rq.Tensor, KeyScale = rk.Tensor }, I(pe),
                                         new QkvJoint(I(joint.Q), I(joint.K), I(joint.V)), start);
        // the kernel stores q, k, v once, in bf16 (rounding the rows it did not write leaves them as they were)
        foreach (var t in new[] { joint.Q, joint.K, joint.V })
            if (E(t).Precision == Precision.Compute) RoundInPlace(I(t));
        return (OutF32(qr), OutF32(kr));
    }

    public void QkvNormRopeBackward(QkvJoint grads, int start, MatrixSlice qkv, QkNorm norm, Tensor pe, Tensor qRstd, Tensor kRstd, MatrixSlice dQkv)
    {
        using var gq = Bf16(grads.Q);
        using var gk = Bf16(grads.K);
        using var gv = Bf16(grads.V);
        using var rx = Bf16(qkv.Tensor);
        using var rq = Bf16(norm.QueryScale);
        using var rk = Bf16(norm.KeyScale);
        inner.QkvNormRopeBackward(new QkvJoint(gq.Tensor, gk.Tensor, gv.Tensor), start, qkv with { Tensor = rx.Tensor },
                                  norm with { QueryScale = rq.Tensor, KeyScale = rk.Tensor }, I(pe), I(qRstd), I(kRstd), dQkv with { Tensor = I(dQkv.Tensor) });
        if (E(dQkv.Tensor).Precision == Precision.Compute) RoundInPlace(I(dQkv.Tensor));   // the rest of dQkv is bf16 already
    }

    // ---------------------------------------------------------------- Conditioning

    public Tensor TimestepEmbedding(Tensor t, int dim, float timeFactor = 1000f, float maxPeriod = 10000f) =>
        Unary(t, v => inner.TimestepEmbedding(v, dim, timeFactor, maxPeriod));

    public Tensor GatedResidual(Tensor x, Tensor gate, Tensor y)
    {
        using var rx = Bf16(x);
        using var rg = Bf16(gate);
        using var ry = Bf16(y);
        return Out(inner.GatedResidual(rx.Tensor, rg.Tensor, ry.Tensor));
    }

    public (Tensor Dy, Tensor DGate) GatedResidualBackward(Tensor dOut, Tensor gate, Tensor y)
    {
        using var rd = Bf16(dOut);
        using var rg = Bf16(gate);
        using var ry = Bf16(y);
        var (dy, dg) = inner.GatedResidualBackward(rd.Tensor, rg.Tensor, ry.Tensor);
        return (Out(dy), Out(dg));
    }

    // ---------------------------------------------------------------- Objective (fp32 read directly)

    public double MseLoss(Tensor pred, Tensor target, out Tensor dPred)
    {
        double loss = inner.MseLoss(I(pred), I(target), out var d);
        dPred = Out(d);
        return loss;
    }

    public double SumSquares(Tensor t) => inner.SumSquares(I(t));

    public void AdamW(Tensor param, Tensor grad, Tensor m, Tensor v, in AdamWStep step) =>
        inner.AdamW(I(param), I(grad), I(m), I(v), step);

    // the step's scalars are the inner engine's (fp64 there and on the GPU)
    public StepScalars NewStepScalars() => inner.NewStepScalars();

    public void MseLoss(Tensor pred, Tensor target, out Tensor dPred, StepScalars scalars)
    {
        inner.MseLoss(I(pred), I(target), out var d, scalars);
        dPred = Out(d);
    }

    public void ClipScale(IReadOnlyList<Tensor> grads, float maxNorm, StepScalars scalars) =>
        inner.ClipScale([.. grads.Select(I)], maxNorm, scalars);

    public void AdamW(IReadOnlyList<AdamWTensors> tensors, in AdamWStep step, StepScalars scalars) =>
        inner.AdamW([.. tensors.Select(t => new AdamWTensors(I(t.Param), I(t.Grad), I(t.M), I(t.V), t.Step))], step, scalars);

    public void ReadBack(StepScalars scalars) => inner.ReadBack(scalars);

    // ---------------------------------------------------------------- Quant (decoded to bf16, then the bf16 GEMM)

    sealed class EmuQuantized(Bf16EmulationBackend owner, QuantizedWeight inner) : QuantizedWeight(inner.Rows, inner.Cols)
    {
        public QuantizedWeight Inner { get; } = inner;
        public override IBackend Backend => owner;
        public override void Dispose()
        {
            Inner.Dispose();
            base.Dispose();
        }
    }

    static QuantizedWeight Q(QuantizedWeight w) => (w as EmuQuantized ?? throw new ArgumentException($"{w} does not belong to the bf16 emulation backend")).Inner;

    public QuantizedWeight UploadQuantized(ReadOnlySpan<byte> codes, ReadOnlySpan<float> scale, int rows, int cols) =>
        new EmuQuantized(this, inner.UploadQuantized(codes, scale, rows, cols));

    /// <summary>The GPU's scratch: scale · e4m3 in fp32, rounded to bf16.</summary>
    public Tensor Dequantize(QuantizedWeight w) => Out(inner.Dequantize(Q(w)));

    public Tensor LinearQuantized(Tensor x, QuantizedWeight w, Tensor? bias)
    {
        using var weight = Dequantize(w);
        return Linear(x, weight, bias);
    }

    /// <summary>The GPU's W8A8 product: x as bf16, quantised as the device does, the exact sum, the output rounded to bf16.</summary>
    public Tensor LinearQuantizedW8A8(Tensor x, QuantizedWeight w, Tensor? bias)
    {
        using var rx = Bf16(x);
        using Borrowed<Tensor>? rb = bias == null ? null : Bf16(bias);
        return Out(inner.LinearQuantizedW8A8(rx.Tensor, Q(w), rb?.Tensor));
    }

    public Tensor LinearQuantizedBackward(Tensor dy, QuantizedWeight w)
    {
        using var weight = Dequantize(w);
        return LinearBackward(dy, weight);
    }

    public void Dispose() => inner.Dispose();
}
