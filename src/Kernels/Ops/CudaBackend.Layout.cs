using MetaLoraNative.Engine;

namespace MetaLoraNative.Kernels;

// Layout (layout.cu): narrow, add-narrow, copy-narrow and concat through one strided slice copy; FLUX's qkv split and
// merge. With ElementwiseVec16 on, each first tries version 2's 16-byte kernel (Dev/CudaBackend.ElementwiseVec.cs).
public sealed partial class CudaBackend
{
    void SliceCopy(CudaTensor dst, int dstStart, CudaTensor src, int srcStart, int axis, int len, bool accumulate)
    {
        var (outer, srcDim, inner) = Shapes.AroundAxis(src.Shape, axis);
        int dstDim = dst.Shape[axis];
        long n = outer * len * inner;
        if (n == 0 || TrySliceCopyVec(dst, dstStart, src, srcStart, outer, inner, dstDim, srcDim, len, accumulate)) return;
        Launch1D("layout.cu", "slice_copy", n, dst.Ptr, dst.Dt, src.Ptr, src.Dt, outer, inner,
            dstDim, dstStart, srcDim, srcStart, len, accumulate ? 1 : 0);
    }

    public Tensor Narrow(Tensor x, int axis, int start, int length)
    {
        using var _ = Op("narrow");
        var cx = T(x, "x");
        axis = Shapes.Axis(axis, cx.Rank, "narrow");
        Shapes.Require(start >= 0 && length >= 0 && start + length <= cx.Shape[axis],
            $"narrow: [{start}, {start + length}) of axis {axis} in {cx}");
        int[] shape = (int[])cx.Shape.Clone();
        shape[axis] = length;
        var y = Alloc(shape);
        SliceCopy(y, 0, cx, start, axis, length, false);
        return y;
    }

    public void AddNarrow(Tensor dst, Tensor src, int axis, int start)
    {
        using var _ = Op("add_narrow");
        var (d, s, ax) = SliceOperands("add_narrow", dst, src, axis, start);
        SliceCopy(d, start, s, 0, ax, s.Shape[ax], true);
    }

    /// <summary>dst's slice [start, start + src.Dim(axis)) along axis = src: slice_copy with accumulate 0.</summary>
    public void CopyNarrow(Tensor dst, Tensor src, int axis, int start)
    {
        using var _ = Op("copy_narrow");
        var (d, s, ax) = SliceOperands("copy_narrow", dst, src, axis, start);
        SliceCopy(d, start, s, 0, ax, s.Shape[ax], false);
    }

    (CudaTensor Dst, CudaTensor Src, int Axis) SliceOperands(string op, Tensor dst, Tensor src, int axis, int start)
    {
        var d = T(dst, "dst");
        var s = T(src, "src");
        axis = Shapes.Axis(axis, d.Rank, op);
        Shapes.Require(s.Rank == d.Rank && start >= 0 && start + s.Shape[axis] <= d.Shape[axis],
            $"{op}: {s} at {start} of axis {axis} in {d}");
        for (int i = 0; i < d.Rank; i++)
            Shapes.Require(i == axis || d.Shape[i] == s.Shape[i], $"{op}: {s} does not fit {d} off axis {axis}");
        return (d, s, axis);
    }

    public Tensor Concat(int axis, params Tensor[] parts)
    {
        using var _ = Op("concat");
        Shapes.Require(parts.Length > 0, "concat: no parts");
        var cs = parts.Select(p => T(p, "part")).ToArray();
        axis = Shapes.Axis(axis, cs[0].Rank, "concat");
        int[] shape = (int[])cs[0].Shape.Clone();
        shape[axis] = 0;
        foreach (var p in cs)
        {
            Shapes.Require(p.Rank == shape.Length, $"concat: rank of {p}");
            for (int i = 0; i < shape.Length; i++)
                Shapes.Require(i == axis || p.Shape[i] == shape[i], $"concat: {p} differs off axis {axis} from {cs[0]}");
            shape[axis] += p.Shape[axis];
        }
        var y = Alloc(shape);
        int at = 0;
        foreach (var p in cs)
        {
            SliceCopy(y, at, p, 0, axis, p.Shape[axis], false);
            at += p.Shape[axis];
        }
        return y;
    }

    public (Tensor Q, Tensor K, Tensor V) SplitQkv(Tensor qkv, int heads)
    {
        using var _ = Op("split_qkv");
        using var b = Bf16(qkv, "qkv");
        var x = b.Tensor;
        Shapes.Require(x.Rank == 3 && x.Shape[2] % (3 * heads) == 0, $"split_qkv: {x} with {heads} heads");
        int B = x.Shape[0], L = x.Shape[1], H = heads, D = x.Shape[2] / (3 * heads);
        var q = Alloc([B, H, L, D]);
        var k = Alloc([B, H, L, D]);
        var v = Alloc([B, H, L, D]);
        if (!TryQkvVec("split_qkv", x, q, k, v, B, L, H, D))
            Launch1D("layout.cu", "split_qkv", x.Length, q.Ptr, k.Ptr, v.Ptr, x.Ptr, B, L, H, D);
        return (q, k, v);
    }

    public Tensor MergeQkv(Tensor dq, Tensor dk, Tensor dv)
    {
        using var _ = Op("merge_qkv");
        Shapes.SameShape(dq, dk, "merge_qkv");
        Shapes.SameShape(dq, dv, "merge_qkv");
        Shapes.Require(dq.Rank == 4, $"merge_qkv: {dq} is not (B, H, L, D)");
        using var q = Bf16(dq, "dq");
        using var k = Bf16(dk, "dk");
        using var v = Bf16(dv, "dv");
        int B = dq.Shape[0], H = dq.Shape[1], L = dq.Shape[2], D = dq.Shape[3];
        var qkv = Alloc([B, L, 3 * H * D]);
        if (!TryQkvVec("merge_qkv", qkv, q.Tensor, k.Tensor, v.Tensor, B, L, H, D))
            Launch1D("layout.cu", "merge_qkv", qkv.Length, qkv.Ptr, q.Ptr, k.Ptr, v.Ptr, B, L, H, D);
        return qkv;
    }
}
