namespace MetaLoraNative.Engine.Flux;

/// <summary>
/// The attention core shared by both block kinds: QK RMSNorm per stream, RoPE on the joint sequence, softmax
/// attention. Streams are joined text first, as in BFL's reference.
/// </summary>
public static class QkvAttention
{
    /// <summary>Kept by <see cref="Split"/> for the backward of one stream's q/k norm.</summary>
    public sealed class Stream : Activations
    {
        public Tensor Q = null!, K = null!, V = null!;            // (B, H, L, D) before the norm
        public Tensor QNorm = null!, KNorm = null!;               // (B, H, L, D) after
        public Tensor QRstd = null!, KRstd = null!;               // (B·H·L)
        public Tensor QScale = null!, KScale = null!;             // (D), frozen

        internal void Set(Tensor q, Tensor k, Tensor v, Tensor qn, Tensor kn, Tensor qr, Tensor kr, Tensor qs, Tensor ks)
        {
            Q = Keep(q); K = Keep(k); V = Keep(v); QNorm = Keep(qn); KNorm = Keep(kn); QRstd = Keep(qr); KRstd = Keep(kr);
            QScale = qs; KScale = ks;
        }
    }

    /// <summary>qkv (B, L, 3C) → per-head q, k (normalised) and v.</summary>
    public static Stream Split(Tensor qkv, int heads, Tensor queryScale, Tensor keyScale)
    {
        var be = qkv.Backend;
        var (q, k, v) = be.SplitQkv(qkv, heads);
        var qn = be.RmsNorm(q, queryScale, FluxConfig.NormEps, out var qr);
        var kn = be.RmsNorm(k, keyScale, FluxConfig.NormEps, out var kr);
        var s = new Stream();
        s.Set(q, k, v, qn, kn, qr, kr, queryScale, keyScale);
        return s;
    }

    /// <summary>dq, dk (after the norm) and dv → d qkv (B, L, 3C).</summary>
    public static Tensor SplitBackward(Stream s, Tensor dqNorm, Tensor dkNorm, Tensor dv)
    {
        var be = dv.Backend;
        using var dq = be.RmsNormBackward(dqNorm, s.Q, s.QScale, s.QRstd);
        using var dk = be.RmsNormBackward(dkNorm, s.K, s.KScale, s.KRstd);
        return be.MergeQkv(dq, dk, dv);
    }

    public sealed class Joint : Activations
    {
        public Tensor QRope = null!, KRope = null!, V = null!, Output = null!, Lse = null!;
        internal void Set(Tensor qr, Tensor kr, Tensor v, Tensor o, Tensor lse)
        {
            QRope = Keep(qr); KRope = Keep(kr); V = v; Output = Keep(o); Lse = Keep(lse);
        }
    }

    /// <summary>q, k, v (B, H, L, D) of the joint sequence → attention output (B, L, H·D), owned by saved.</summary>
    public static Tensor Forward(Tensor q, Tensor k, Tensor v, Tensor pe, out Joint saved)
    {
        var be = q.Backend;
        var qr = be.ApplyRope(q, pe);
        var kr = be.ApplyRope(k, pe);
        var o = be.Attention(qr, kr, v, out var lse);
        saved = new Joint();
        // v stays the caller's; the rotated q, k, the output and lse belong to saved.
        saved.Set(qr, kr, v, o, lse);
        return o;
    }

    /// <summary>d output (B, L, H·D) → dq, dk (before RoPE), dv, all (B, H, L, D).</summary>
    public static (Tensor Dq, Tensor Dk, Tensor Dv) Backward(Joint s, Tensor dOut, Tensor pe)
    {
        var be = dOut.Backend;
        var (dqr, dkr, dv) = be.AttentionBackward(dOut, s.QRope, s.KRope, s.V, s.Output, s.Lse);
        var dq = be.ApplyRopeBackward(dqr, pe);
        var dk = be.ApplyRopeBackward(dkr, pe);
        dqr.Dispose();
        dkr.Dispose();
        return (dq, dk, dv);
    }
}
