using MetaLoraNative.Engine;

namespace MetaLoraNative.Kernels.Verification;

// Layout: narrow, add_narrow, copy_narrow and concat on every axis; the qkv split and merge.
public static partial class CudaParity
{
    static IEnumerable<ParityCheck> LayoutChecks() =>
    [
        new("layout", "narrow, add_narrow, copy_narrow, concat on every axis; qkv split and merge", Layout),
    ];

    static void Layout(ParityContext p)
    {
        var (gx, cx) = p.Both(Rand(2 * 9 * 14, 1), 2, 9, 14);
        for (int axis = 0; axis < 3; axis++)
        {
            int len = gx.Shape[axis] / 2, start = gx.Shape[axis] - len;
            using var gn = p.Gpu.Narrow(gx, axis, start, len);
            using var cn = p.Cpu.Narrow(cx, axis, start, len);
            p.Bf16($"narrow axis {axis}", gn, cn);
            using var gd = p.Gpu.Zeros(gx.Shape);
            using var cd = p.Cpu.Zeros(cx.Shape);
            p.Gpu.AddNarrow(gd, gn, axis, start);
            p.Cpu.AddNarrow(cd, cn, axis, start);
            p.Gpu.AddNarrow(gd, gn, axis, 0);
            p.Cpu.AddNarrow(cd, cn, axis, 0);
            p.Bf16($"add_narrow axis {axis}", gd, cd);
            // copy_narrow (=) onto a filled tensor: the slice replaced, the rest kept; and into an fp32 (Master) one
            using var gCopied = p.Gpu.Zeros(gx.Shape);
            using var cCopied = p.Cpu.Zeros(cx.Shape);
            p.Gpu.Copy(gx, gCopied);
            p.Cpu.Copy(cx, cCopied);
            p.Gpu.CopyNarrow(gCopied, gn, axis, 0);
            p.Cpu.CopyNarrow(cCopied, cn, axis, 0);
            p.Bf16($"copy_narrow axis {axis}", gCopied, cCopied);
            using var gCopiedF32 = p.Gpu.Empty(gn.Shape, Precision.Master);
            p.Gpu.CopyNarrow(gCopiedF32, gn, axis, 0);
            p.Exact($"copy_narrow axis {axis} into fp32", p.Gpu.Download(gCopiedF32), p.Gpu.Download(gn));
            using var gc = p.Gpu.Concat(axis, gx, gn, gx);
            using var cc = p.Cpu.Concat(axis, cx, cn, cx);
            p.Bf16($"concat axis {axis}", gc, cc);
        }

        const int B = 2, L = 7, H = 3, D = 10;
        var (gqkv, cqkv) = p.Both(Rand(B * L * 3 * H * D, 2), B, L, 3 * H * D);
        var (gq, gk, gv) = p.Gpu.SplitQkv(gqkv, H);
        var (cq, ck, cv) = p.Cpu.SplitQkv(cqkv, H);
        p.Bf16("split q", gq, cq);
        p.Bf16("split k", gk, ck);
        p.Bf16("split v", gv, cv);
        using var gm = p.Gpu.MergeQkv(gq, gk, gv);
        p.Exact("merge qkv round trip", p.Gpu.Download(gm), p.Gpu.Download(gqkv));
    }
}
