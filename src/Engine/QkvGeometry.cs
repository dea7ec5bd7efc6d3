namespace MetaLoraNative.Engine;

/// <summary>
/// The shapes of one <see cref="IBackend.QkvNormRope"/> call (and its backward), checked once for every backend:
/// B batch, H heads, D head dim, L this stream's tokens (qkv.Rows / B), LJoint the joint tensors' tokens, start the
/// stream's first joint token, PeBatch 1 when one RoPE table serves every sample.
/// </summary>
public readonly record struct QkvGeometry(int B, int H, int L, int D, int LJoint, int Start, int PeBatch)
{
    /// <summary>Row (in units of D) of token l of sample b, head h, in a joint (B, H, L_joint, D) tensor.</summary>
    public int JointRow(int b, int h, int l) => (b * H + h) * LJoint + Start + l;

    /// <summary>Row (in units of D/2 pairs · 2 = D values) of pe for token l of sample b.</summary>
    public int PeRow(int b, int l) => (PeBatch == 1 ? 0 : b) * LJoint + Start + l;

    public static QkvGeometry Of(string op, MatrixSlice qkv, QkNorm norm, Tensor pe, QkvJoint joint, int start)
    {
        ArgumentNullException.ThrowIfNull(qkv.Tensor, "qkv");
        ArgumentNullException.ThrowIfNull(joint.Q, "q");
        ArgumentNullException.ThrowIfNull(joint.K, "k");
        ArgumentNullException.ThrowIfNull(joint.V, "v");
        qkv.Check(op, "qkv");
        var q = joint.Q;
        if (q.Rank != 4 || !q.Shape.AsSpan().SequenceEqual(joint.K.Shape) || !q.Shape.AsSpan().SequenceEqual(joint.V.Shape) || q.Shape[3] % 2 != 0)
            throw new ArgumentException($"{op}: q {Shapes.Format(q.Shape)}, k {Shapes.Format(joint.K.Shape)}, v {Shapes.Format(joint.V.Shape)} " +
                                        "must all be (B, H, L_joint, D) with D even");
        int B = q.Shape[0], H = q.Shape[1], LJ = q.Shape[2], D = q.Shape[3];
        if (qkv.Columns != 3 * H * D || B == 0 || qkv.Rows % B != 0)
            throw new ArgumentException($"{op}: qkv {qkv} must be B·L rows of 3·H·D = {3 * H * D} columns for B = {B}");
        int L = checked((int)(qkv.Rows / B));
        if (start < 0 || start + L > LJ)
            throw new ArgumentException($"{op}: tokens [{start}, {start + L}) lie outside the joint sequence of {LJ}");
        if (norm.QueryScale is null || norm.KeyScale is null || norm.QueryScale.Length != D || norm.KeyScale.Length != D)
            throw new ArgumentException($"{op}: query and key scales must have D = {D} elements");
        if (pe is null || pe.Rank != 4 || pe.Shape[1] != LJ || pe.Shape[2] != D / 2 || pe.Shape[3] != 2 || (pe.Shape[0] != B && pe.Shape[0] != 1))
            throw new ArgumentException($"{op}: pe {(pe is null ? "null" : Shapes.Format(pe.Shape))} must be (B, L_joint, D/2, 2) = ({B}, {LJ}, {D / 2}, 2)");
        return new QkvGeometry(B, H, L, D, LJ, start, pe.Shape[0]);
    }
}
