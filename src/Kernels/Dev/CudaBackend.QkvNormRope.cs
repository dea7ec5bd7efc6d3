using System.Runtime.InteropServices;
using MetaLoraNative.Engine;

namespace MetaLoraNative.Kernels;

// qkv_norm_rope version 2 from the kernel playground (kernels/dev/qkv_norm_rope/02_fused.cu): one stream's
// split-qkv + QK RMSNorm + RoPE into the joint q, k, v, and its backward. Version 1 is the engine's unfused sequence
// (SplitQkv, RmsNorm, Concat, ApplyRope and their backwards), which the model runs unless its Fusions ask for
// QkvNormRope (METALORA_FUSE=qkv), so this op needs no switch of its own: it runs only when the model opts in.
// Checked by `metalora check cuda --dev` (CudaParity.Dev, QkvNormRopeChecks.cs); promotion moves the kernels into
// kernels/attention.cu and these launches into Ops/CudaBackend.Attention.cs.
public sealed partial class CudaBackend
{
    const string QkvNormRopeFile = "dev/qkv_norm_rope/02_fused.cu";
    internal const int QkvNormRopeWarps = 8;   // QNR_WARPS: one warp per (token, head) pair

    /// <summary>Mirrors QkvNormRopeParams in 02_fused.cu (shapes there).</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct QkvNormRopeParams
    {
        public ulong Qkv, DQkv, Q, K, V, Wq, Wk, Pe, QRstd, KRstd;
        public int B, H, L, D, LJ, Start, PeBatch;
        public int Ld, LdD;
        public int Vec;
        public float Eps;
    }

    /// <summary>Pointer of a slice's first element (bf16 tensors only).</summary>
    static ulong SlicePtr(CudaTensor t, MatrixSlice s) => t.Ptr + (ulong)(s.Offset * t.ElementSize);

    static bool Aligned16(ulong p) => p % 16 == 0;

    /// <summary>
    /// The parameter block of one call: the 32-bit index rule (every operand's element count below 2³¹) checked,
    /// and vec set when every pointer and row stride allows 16-byte chunks.
    /// </summary>
    static QkvNormRopeParams QkvParams(string op, QkvGeometry g, ulong qkv, long qkvElements, int ld, ulong dqkv, long dqkvElements, int ldD,
                                       CudaTensor q, CudaTensor k, CudaTensor v, CudaTensor wq, CudaTensor wk, CudaTensor pe, float eps)
    {
        foreach (var n in new[] { qkvElements, dqkvElements, q.Length, pe.Length })
            Shapes.Require(n < int.MaxValue, $"{op}: an operand of {n} elements exceeds the kernel's 32-bit indexing");
        Shapes.Require((long)g.B * g.L * g.H < int.MaxValue, $"{op}: {g.B}·{g.L}·{g.H} (token, head) pairs exceed 32-bit indexing");
        foreach (var t in new[] { q, k, v })
            Shapes.Require(t.Precision == Precision.Compute, $"{op}: the joint q, k, v must be bf16 (Compute), got {t}");
        bool vec = g.D % 8 == 0 && g.D <= 256 && ld % 8 == 0 && ldD % 8 == 0 && Aligned16(qkv) && Aligned16(dqkv) &&
                   Aligned16(q.Ptr) && Aligned16(k.Ptr) && Aligned16(v.Ptr) && Aligned16(wq.Ptr) && Aligned16(wk.Ptr) && Aligned16(pe.Ptr);
        return new QkvNormRopeParams
        {
            Qkv = qkv, DQkv = dqkv, Q = q.Ptr, K = k.Ptr, V = v.Ptr, Wq = wq.Ptr, Wk = wk.Ptr, Pe = pe.Ptr,
            B = g.B, H = g.H, L = g.L, D = g.D, LJ = g.LJoint, Start = g.Start, PeBatch = g.PeBatch,
            Ld = ld, LdD = ldD, Vec = vec ? 1 : 0, Eps = eps,
        };
    }

    void LaunchQkvNormRope(string kernel, in QkvNormRopeParams p)
    {
        long pairs = (long)p.B * p.L * p.H;
        if (pairs > 0)
            LaunchParams(QkvNormRopeFile, kernel, (CeilDiv(pairs, QkvNormRopeWarps), 1, 1), (QkvNormRopeWarps * 32, 1, 1), p);
    }

    public (Tensor QRstd, Tensor KRstd) QkvNormRope(MatrixSlice qkv, QkNorm norm, Tensor pe, QkvJoint joint, int start)
    {
        const string op = "qkv_norm_rope";
        using var _ = Op(op);
        var g = QkvGeometry.Of(op, qkv, norm, pe, joint, start);
        using var bx = Bf16(qkv.Tensor, "qkv");
        using var wq = Bf16(norm.QueryScale, "queryScale");
        using var wk = Bf16(norm.KeyScale, "keyScale");
        using var fpe = F32(pe, "pe");
        var qr = Alloc([g.B, g.H, g.L], Precision.Master);
        var kr = Alloc([g.B, g.H, g.L], Precision.Master);
        // the forward writes no d qkv: null, with qkv's row stride so the 16-byte rule reads only qkv's
        var p = QkvParams(op, g, SlicePtr(bx.Tensor, qkv), qkv.Tensor.Length, qkv.Tensor.Cols, 0, 0, qkv.Tensor.Cols,
                          T(joint.Q, "q"), T(joint.K, "k"), T(joint.V, "v"), wq.Tensor, wk.Tensor, fpe.Tensor, norm.Eps);
        p.QRstd = qr.Ptr;
        p.KRstd = kr.Ptr;
        LaunchQkvNormRope("qkv_norm_rope_forward", p);
        return (qr, kr);
    }

    public void QkvNormRopeBackward(QkvJoint grads, int start, MatrixSlice qkv, QkNorm norm, Tensor pe, Tensor qRstd, Tensor kRstd, MatrixSlice dQkv)
    {
        const string op = "qkv_norm_rope_backward";
        using var _ = Op(op);
        var g = QkvGeometry.Of(op, qkv, norm, pe, grads, start);
        dQkv.Check(op, "dQkv");
        Shapes.Require(dQkv.Rows == qkv.Rows && dQkv.Columns == qkv.Columns, $"{op}: dQkv {dQkv} must match qkv {qkv}");
        Shapes.Require(qRstd.Length == (long)g.B * g.H * g.L && kRstd.Length == qRstd.Length, $"{op}: rstd {qRstd}, {kRstd} for ({g.B}, {g.H}, {g.L})");
        var dx = T(dQkv.Tensor, "dQkv");
        Shapes.Require(dx.Precision == Precision.Compute, $"{op}: dQkv must be bf16 (Compute), got {dx}");
        using var bx = Bf16(qkv.Tensor, "qkv");
        using var gq = Bf16(grads.Q, "dq");
        using var gk = Bf16(grads.K, "dk");
        using var gv = Bf16(grads.V, "dv");
        using var wq = Bf16(norm.QueryScale, "queryScale");
        using var wk = Bf16(norm.KeyScale, "keyScale");
        using var fpe = F32(pe, "pe");
        using var rq = F32(qRstd, "qRstd");
        using var rk = F32(kRstd, "kRstd");
        var p = QkvParams(op, g, SlicePtr(bx.Tensor, qkv), qkv.Tensor.Length, qkv.Tensor.Cols, SlicePtr(dx, dQkv), dQkv.Tensor.Length, dQkv.Tensor.Cols,
                          gq.Tensor, gk.Tensor, gv.Tensor, wq.Tensor, wk.Tensor, fpe.Tensor, norm.Eps);
        p.QRstd = rq.Tensor.Ptr;
        p.KRstd = rk.Tensor.Ptr;
        LaunchQkvNormRope("qkv_norm_rope_backward", p);
    }
}
