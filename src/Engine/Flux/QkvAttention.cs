namespace MetaLoraNative.Engine.Flux;

/// <summary>
/// The attention core shared by both block kinds: QK RMSNorm per stream (BFL's QKNorm), RoPE on the joint sequence,
/// softmax attention. Streams are joined text first, as in BFL's reference. Shapes: B batch, H heads, L tokens,
/// D head dim.
/// </summary>
public static class QkvAttention
{
    /// <summary>What <see cref="Split"/> keeps for the backward of one stream's q/k norm.</summary>
    public sealed class Stream : Activations
    {
        public required Tensor Q { get; init; }        // (B, H, L, D) before the norm
        public required Tensor K { get; init; }        // (B, H, L, D) before the norm
        public required Tensor V { get; init; }        // (B, H, L, D)
        public required Tensor QNorm { get; init; }    // (B, H, L, D) after the norm
        public required Tensor KNorm { get; init; }    // (B, H, L, D) after the norm
        public required Tensor QRstd { get; init; }    // (B·H·L) 1 / rms of each q row
        public required Tensor KRstd { get; init; }    // (B·H·L)
        public required Tensor QScale { get; init; }   // (D) query_norm.scale: borrowed (frozen weight)
        public required Tensor KScale { get; init; }   // (D) key_norm.scale: borrowed (frozen weight)

        protected override IEnumerable<IDisposable?> Owned() => [Q, K, V, QNorm, KNorm, QRstd, KRstd];
    }

    /// <summary>qkv (B, L, 3C) → per-head q, k (normalised) and v.</summary>
    public static Stream Split(Tensor qkv, int heads, Tensor queryScale, Tensor keyScale)
    {
        var be = qkv.Backend;
        var (q, k, v) = be.SplitQkv(qkv, heads);
        var qNorm = be.RmsNorm(q, queryScale, FluxConfig.NormEps, out var qRstd);
        var kNorm = be.RmsNorm(k, keyScale, FluxConfig.NormEps, out var kRstd);
        return new Stream
        {
            Q = q, K = k, V = v, QNorm = qNorm, KNorm = kNorm, QRstd = qRstd, KRstd = kRstd,
            QScale = queryScale, KScale = keyScale,
        };
    }

    /// <summary>dq, dk (after the norm) and dv → d qkv (B, L, 3C).</summary>
    public static Tensor SplitBackward(Stream s, Tensor dqNorm, Tensor dkNorm, Tensor dv)
    {
        var be = dv.Backend;
        using var dq = be.RmsNormBackward(dqNorm, s.Q, s.QScale, s.QRstd);
        using var dk = be.RmsNormBackward(dkNorm, s.K, s.KScale, s.KRstd);
        return be.MergeQkv(dq, dk, dv);
    }

    // ---------------------------------------------------------------- the fused form (Fusions.QkvNormRope)
    // One op per stream writes its q, k (normalised and roped) and v straight into the joint tensors, and its backward
    // reads the joint gradients at the stream's tokens and writes d qkv: no SplitQkv, RmsNorm, Concat, ApplyRope,
    // Narrow or MergeQkv, and per stream the record keeps qkv and two rstd instead of Q, K, V, QNorm, KNorm.

    /// <summary>What <see cref="SplitInto"/> keeps for the backward of one stream.</summary>
    public sealed class FusedStream : Activations
    {
        public required Tensor Qkv { get; init; }     // (B, L, 3C) the stream's qkv, re-read by the backward (q, k before the norm)
        public required Tensor QRstd { get; init; }   // (B, H, L) 1 / rms of each q row
        public required Tensor KRstd { get; init; }   // (B, H, L)
        public required QkNorm Norm { get; init; }    // query_norm, key_norm scales: borrowed (frozen weights)
        public required int Start { get; init; }      // the stream's first token in the joint sequence

        protected override IEnumerable<IDisposable?> Owned() => [Qkv, QRstd, KRstd];
    }

    /// <summary>
    /// The joint q, k, v (B, H, L_joint, D) the streams write into; the caller owns them. Uninitialised (Empty): the
    /// streams' token ranges cover the joint sequence, each written with "=" before the attention reads any.
    /// </summary>
    public static QkvJoint NewJoint(IBackend be, int batch, int heads, int length, int headDim) =>
        new(be.Empty(batch, heads, length, headDim), be.Empty(batch, heads, length, headDim), be.Empty(batch, heads, length, headDim));

    /// <summary>
    /// qkv (B, L, 3C) → tokens [start, start + L) of the joint q, k (normalised, then roped with pe's rows) and v.
    /// The record takes qkv (the backward reads it again).
    /// </summary>
    public static FusedStream SplitInto(Tensor qkv, QkNorm norm, Tensor pe, QkvJoint joint, int start)
    {
        var (qRstd, kRstd) = qkv.Backend.QkvNormRope(qkv, norm, pe, joint, start);
        return new FusedStream { Qkv = qkv, QRstd = qRstd, KRstd = kRstd, Norm = norm, Start = start };
    }

    /// <summary>Joint dq, dk (w.r.t. the roped q, k) and dv → this stream's d qkv (B, L, 3C).</summary>
    public static Tensor SplitIntoBackward(FusedStream s, QkvJoint grads, Tensor pe)
    {
        var dQkv = s.Qkv.Backend.Empty(s.Qkv.Shape);                           // (B, L, 3C), all of it written (=)
        SplitIntoBackward(s, grads, pe, dQkv);
        return dQkv;
    }

    /// <summary>
    /// As above, d qkv written (=) into a block of a wider matrix: the single block's dlin1 columns [0, 3C), so no
    /// d qkv tensor and no copy into dlin1.
    /// </summary>
    public static void SplitIntoBackward(FusedStream s, QkvJoint grads, Tensor pe, MatrixSlice dQkv) =>
        s.Qkv.Backend.QkvNormRopeBackward(grads, s.Start, s.Qkv, s.Norm, pe, s.QRstd, s.KRstd, dQkv);

    /// <summary>
    /// The attention of the fused form, on q, k already roped: output (B, L, H·D), owned by <paramref name="saved"/>,
    /// which takes q and k (as QRope, KRope); v stays the caller's.
    /// </summary>
    public static Tensor Attend(QkvJoint roped, out Joint saved)
    {
        var output = roped.Q.Backend.Attention(roped.Q, roped.K, roped.V, out var lse);
        saved = new Joint { QRope = roped.Q, KRope = roped.K, V = roped.V, Output = output, Lse = lse };
        return output;
    }

    /// <summary>Backward of <see cref="Attend"/>: d output → dq, dk w.r.t. the roped q, k, and dv, all (B, H, L, D).</summary>
    public static QkvJoint AttendBackward(Joint s, Tensor dOut)
    {
        var (dq, dk, dv) = dOut.Backend.AttentionBackward(dOut, s.QRope, s.KRope, s.V, s.Output, s.Lse);
        return new QkvJoint(dq, dk, dv);
    }

    /// <summary>What <see cref="Forward"/> keeps for the attention backward.</summary>
    public sealed class Joint : Activations
    {
        public required Tensor QRope { get; init; }    // (B, H, L, D) q after RoPE
        public required Tensor KRope { get; init; }    // (B, H, L, D) k after RoPE
        public required Tensor V { get; init; }        // (B, H, L, D): borrowed (the caller's v)
        public required Tensor Output { get; init; }   // (B, L, H·D): also the forward's return value
        public required Tensor Lse { get; init; }      // (B, H, L) log-sum-exp of each softmax row

        protected override IEnumerable<IDisposable?> Owned() => [QRope, KRope, Output, Lse];
    }

    /// <summary>
    /// q, k, v (B, H, L, D) of the joint sequence, pe the RoPE table → attention output (B, L, H·D). The output is
    /// owned by <paramref name="saved"/> (the backward reads it): the caller must not dispose it.
    /// </summary>
    public static Tensor Forward(Tensor q, Tensor k, Tensor v, Tensor pe, out Joint saved)
    {
        var be = q.Backend;
        var qRope = be.ApplyRope(q, pe);
        var kRope = be.ApplyRope(k, pe);
        var output = be.Attention(qRope, kRope, v, out var lse);
        saved = new Joint { QRope = qRope, KRope = kRope, V = v, Output = output, Lse = lse };
        return output;
    }

    /// <summary>d output (B, L, H·D) → dq, dk (before RoPE), dv, all (B, H, L, D).</summary>
    public static (Tensor Dq, Tensor Dk, Tensor Dv) Backward(Joint s, Tensor dOut, Tensor pe)
    {
        var be = dOut.Backend;
        var (dqRope, dkRope, dv) = be.AttentionBackward(dOut, s.QRope, s.KRope, s.V, s.Output, s.Lse);
        var dq = be.ApplyRopeBackward(dqRope, pe);
        var dk = be.ApplyRopeBackward(dkRope, pe);
        dqRope.Dispose();
        dkRope.Dispose();
        return (dq, dk, dv);
    }
}
