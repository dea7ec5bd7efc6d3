using MetaLoraNative.Engine;
using static MetaLoraNative.Kernels.Native.CublasLt;

namespace MetaLoraNative.Kernels;

// The GELU fusions (Fusions.GeluEpilogue, METALORA_FUSE=gelu), neither verified on a GPU yet:
// - LinearGelu / LinearBackwardGelu as one cuBLASLt call with a GELU epilogue (GeluEpilogue decides; its header
//   says which epilogue, the aux ld and the refusals). When the epilogue is refused or no algorithm runs, the
//   engine's unfused sequence runs instead (Linear, axpy of c0, gelu_tanh_forward; or LinearBackward, axpy,
//   gelu_tanh_backward), which is also what UseGeluEpilogue = false forces (the parity checks compare the two).
// - GeluTanhSlice / GeluTanhBackwardSlice on blocks: kernels/dev/gelu/02_strided.cu.
// Only a model built with Fusions.GeluEpilogue calls these ops; the default model issues today's ops.
public sealed partial class CudaBackend
{
    const string GeluStridedFile = "dev/gelu/02_strided.cu";

    /// <summary>Whether LinearGelu / LinearBackwardGelu try the cuBLASLt GELU epilogue (true) or run the unfused sequence.</summary>
    public bool UseGeluEpilogue { get; set; } = true;

    /// <summary>How many GELU-fused products ran as one cuBLASLt call, and how many fell back (for the parity checks and benches).</summary>
    public (int Fused, int Unfused) GeluEpilogueCounts => (geluFused, geluUnfused);
    int geluFused, geluUnfused;

    public (Tensor Pre, Tensor Act) LinearGelu(Tensor x, Tensor w, Tensor? bias, Tensor? c0)
    {
        using var _ = Op("linear_gelu");
        var cx = T(x, "x");
        var cw = T(w, "w");
        Shapes.Require(cw.Rank == 2 && cw.Shape[1] == cx.Cols, $"linear_gelu: x {cx} against w {cw}");
        int[] shape = (int[])cx.Shape.Clone();
        shape[^1] = cw.Shape[0];
        if (bias != null) Shapes.Require(bias.Length == cw.Shape[0], $"linear_gelu: bias {bias} for d_out {cw.Shape[0]}");
        if (c0 != null) Shapes.Require(c0.Shape.SequenceEqual(shape), $"linear_gelu: c0 {c0} for an output of [{string.Join(", ", shape)}]");
        var pre = Alloc(shape);
        var act = Alloc(shape);
        if (UseGeluEpilogue && TryGeluEpilogue("linear_gelu", GeluEpilogueKind.Forward, Operand.Whole(cx), false, Operand.Whole(cw), true, c0, act, pre, bias))
            return (pre, act);
        // unfused: pre = x·Wᵀ + b, pre += c0, act = gelu(pre)
        geluUnfused++;
        Matmul("linear", Operand.Whole(cx), false, Operand.Whole(cw), true, Operand.Whole(pre), 1f, 0f, bias == null ? null : T(bias, "bias"));
        if (c0 != null) Axpy(pre, T(c0, "c0"));
        Launch1D("elementwise.cu", "gelu_tanh_forward", act.Length, act.Ptr, pre.Ptr, act.Length);
        return (pre, act);
    }

    public Tensor LinearBackwardGelu(Tensor dy, Tensor w, Tensor pre, Tensor? c0)
    {
        using var _ = Op("linear_backward_gelu");
        var cdy = T(dy, "dy");
        var cw = T(w, "w");
        Shapes.Require(cw.Rank == 2 && cw.Shape[0] == cdy.Cols, $"linear_backward_gelu: dy {cdy} against w {cw}");
        int[] shape = (int[])cdy.Shape.Clone();
        shape[^1] = cw.Shape[1];
        Shapes.Require(pre.Shape.SequenceEqual(shape), $"linear_backward_gelu: pre {pre} for an input gradient of [{string.Join(", ", shape)}]");
        if (c0 != null) Shapes.Require(c0.Shape.SequenceEqual(shape), $"linear_backward_gelu: c0 {c0} for an input gradient of [{string.Join(", ", shape)}]");
        using var bpre = Bf16(pre, "pre");
        var dPre = Alloc(shape);
        if (UseGeluEpilogue && TryGeluEpilogue("linear_backward_gelu", GeluEpilogueKind.Backward, Operand.Whole(cdy), false, Operand.Whole(cw), false, c0, dPre, bpre.Tensor, null))
            return dPre;
        // unfused: dAct = dy·W, dAct += c0, dPre = gelu'(pre)·dAct
        geluUnfused++;
        using var dAct = Alloc(shape);
        Matmul("linear_backward", Operand.Whole(cdy), false, Operand.Whole(cw), false, Operand.Whole(dAct), 1f, 0f, null);
        if (c0 != null) Axpy(dAct, T(c0, "c0"));
        Launch1D("elementwise.cu", "gelu_tanh_backward", dPre.Length, dPre.Ptr, bpre.Ptr, dAct.Ptr, dPre.Length);
        return dPre;
    }

    /// <summary>acc += x (the unfused fallback's c0 term).</summary>
    void Axpy(CudaTensor acc, CudaTensor x) =>
        Launch1D("elementwise.cu", "axpy_kernel", acc.Length, acc.Ptr, acc.Dt, x.Ptr, x.Dt, acc.Length, 1f);

    /// <summary>
    /// d = epilogue(op(a)·op(b) + c0 [+ bias]) with <paramref name="aux"/> the GELU's input (written by the forward,
    /// read by the backward), as one cuBLASLt call; false when <see cref="GeluEpilogue.Choose"/> refuses or no
    /// heuristic candidate runs (nothing has been written then).
    /// </summary>
    bool TryGeluEpilogue(string op, GeluEpilogueKind kind, Operand a, bool transA, Operand b, bool transB, Tensor? c0,
                         CudaTensor d, CudaTensor aux, Tensor? bias)
    {
        var problem = Describe(a, transA, b, transB, Operand.Whole(d));
        if (problem.M == 0 || problem.N == 0 || problem.K == 0) return false;
        if (GeluEpilogue.Choose(kind, problem, bias != null).Setup is not { } setup) return false;
        using var ta = Bf16(a.Tensor, "a");
        using var tb = Bf16(b.Tensor, "b");
        using Borrowed<CudaTensor>? tc = c0 == null ? null : Bf16(c0, "c0");
        using Borrowed<CudaTensor>? tbias = bias == null ? null : Bf16(bias, "bias");
        Operand ba = a.Of(ta.Tensor), bb = b.Of(tb.Tensor);
        ulong cPtr = tc?.Ptr ?? d.Ptr;   // beta = 0 without c0: C is not read, but must be a valid matrix
        var key = new GemmKey(CUDA_R_16BF, CUDA_R_16BF, transA, transB, problem.M, problem.N, problem.K, bias != null,
                              a.Ld, b.Ld, d.Cols, GemmRouting.Alignment(ba.Ptr), GemmRouting.Alignment(bb.Ptr),
                              Math.Min(GemmRouting.Alignment(cPtr), GemmRouting.Alignment(d.Ptr)),
                              setup.Epilogue, setup.AuxLd, GemmRouting.Alignment(aux.Ptr));
        var plan = Plan(key, b.Cols, b.Rows, a.Cols, a.Rows, aux.Ptr);
        if (!TryMatmul(op, problem, plan, ba.Ptr, bb.Ptr, cPtr, 1f, tc != null ? 1f : 0f, tbias?.Ptr ?? 0, d.Ptr, aux.Ptr)) return false;
        Counted.Gemm(GemmRoute.CublasLt.ToString().ToLowerInvariant());
        geluFused++;
        return true;
    }

    public void GeluTanhSlice(MatrixSlice x, MatrixSlice y)
    {
        using var _ = Op("gelu_tanh_slice");
        x.Check("gelu_tanh_slice", "x");
        y.Check("gelu_tanh_slice", "y");
        Shapes.Require(x.Rows == y.Rows && x.Columns == y.Columns, $"gelu_tanh_slice: x {x} and y {y} differ in shape");
        var cy = T(y.Tensor, "y");
        Shapes.Require(cy.Precision == Precision.Compute, $"gelu_tanh_slice: y {cy} must be bf16");
        using var bx = Bf16(x.Tensor, "x");
        GeluStridedLaunch("gelu_tanh_forward_strided", x.Rows, x.Columns, [(cy, y), (bx.Tensor, x)]);
    }

    public void GeluTanhBackwardSlice(MatrixSlice x, MatrixSlice dy, MatrixSlice dx)
    {
        using var _ = Op("gelu_tanh_backward_slice");
        x.Check("gelu_tanh_backward_slice", "x");
        dy.Check("gelu_tanh_backward_slice", "dy");
        dx.Check("gelu_tanh_backward_slice", "dx");
        Shapes.Require(x.Rows == dy.Rows && x.Columns == dy.Columns && x.Rows == dx.Rows && x.Columns == dx.Columns,
            $"gelu_tanh_backward_slice: x {x}, dy {dy} and dx {dx} differ in shape");
        var cdx = T(dx.Tensor, "dx");
        Shapes.Require(cdx.Precision == Precision.Compute, $"gelu_tanh_backward_slice: dx {cdx} must be bf16");
        using var bx = Bf16(x.Tensor, "x");
        using var bdy = Bf16(dy.Tensor, "dy");
        GeluStridedLaunch("gelu_tanh_backward_strided", x.Rows, x.Columns, [(cdx, dx), (bx.Tensor, x), (bdy.Tensor, dy)]);
    }

    /// <summary>
    /// The strided kernels over one block: operands (output first) as (bf16 tensor, block); the 16-byte form when
    /// <see cref="GeluStrided.Vectorised"/> allows, row chunks from <see cref="GeluStrided.Chunks"/> so every index is 32-bit.
    /// </summary>
    void GeluStridedLaunch(string kernel, long rows, int cols, ReadOnlySpan<(CudaTensor Tensor, MatrixSlice Block)> operands)
    {
        if (rows == 0 || cols == 0) return;
        var lds = new long[operands.Length];
        var ptrs = new ulong[operands.Length];
        for (int i = 0; i < operands.Length; i++)
        {
            lds[i] = operands[i].Block.Tensor.Cols;
            Shapes.Require(lds[i] <= int.MaxValue, $"{kernel}: row length {lds[i]} does not fit 32-bit indices");
            ptrs[i] = operands[i].Tensor.Ptr + (ulong)(operands[i].Block.Offset * 2);
        }
        bool vec = GeluStrided.Vectorised(cols, lds, ptrs);
        string name = vec ? kernel + "_v8" : kernel;
        foreach (var chunk in GeluStrided.Chunks(rows, cols, lds.Max()))
        {
            long work = vec ? (long)chunk.Rows * cols / GeluStrided.Vector : (long)chunk.Rows * cols;
            var args = new KArg[2 * operands.Length + 2];
            for (int i = 0; i < operands.Length; i++)
            {
                args[2 * i] = ptrs[i] + (ulong)(chunk.Row * lds[i] * 2);
                args[2 * i + 1] = (int)lds[i];
            }
            args[^2] = chunk.Rows;
            args[^1] = cols;
            Launch(GeluStridedFile, name, (Grid1D(work), 1, 1), (Block, 1, 1), 0, args);
        }
    }
}
