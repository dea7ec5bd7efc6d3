using System.Runtime.InteropServices;
using MetaLoraNative.Engine;

namespace MetaLoraNative.Kernels;

// Norm (norm.cu): LayerNorm with FLUX's modulation, and RMSNorm. The fused gated residual + LayerNorm-modulate is
// version 2 of kernels/dev/residual_norm (src/Kernels/Dev/CudaBackend.ResidualNorm.cs), version 1 being the engine's ops.
public sealed partial class CudaBackend
{
    /// <summary>Mirrors LnParams in norm.cu field by field.</summary>
    [StructLayout(LayoutKind.Sequential)]
    struct LnParams
    {
        public ulong X, Shift, Scale, Dy, Y, Stats, PartialShift, PartialScale;
        public int B, L, C, Chunks;
        public float Eps;
    }

    public Tensor LayerNormModulate(Tensor x, Tensor shift, Tensor scale, float eps, out Tensor stats)
    {
        using var _ = Op("layernorm_modulate");
        Shapes.Require(x.Rank == 3, $"layernorm_modulate: x {x} is not (B, L, C)");
        int B = x.Shape[0], L = x.Shape[1], C = x.Shape[2];
        Shapes.Require(shift.Length == (long)B * C && scale.Length == (long)B * C, $"layernorm_modulate: shift {shift}, scale {scale} for x {x}");
        using var bx = Bf16(x, "x");
        using var bsh = Bf16(shift, "shift");
        using var bsc = Bf16(scale, "scale");
        var y = Alloc(x.Shape);
        var st = Alloc([B * L, 2], Precision.Master);
        var p = new LnParams { X = bx.Ptr, Shift = bsh.Ptr, Scale = bsc.Ptr, Y = y.Ptr, Stats = st.Ptr, B = B, L = L, C = C, Eps = eps };
        if ((long)B * L > 0) LaunchParams("norm.cu", "layernorm_modulate_forward", (CeilDiv((long)B * L, Block / 32), 1, 1), (Block, 1, 1), p);
        stats = st;
        return y;
    }

    public (Tensor Dx, Tensor DShift, Tensor DScale) LayerNormModulateBackward(Tensor dy, Tensor x, Tensor scale, Tensor stats)
    {
        using var _ = Op("layernorm_modulate_backward");
        Shapes.SameShape(dy, x, "layernorm_modulate_backward");
        int B = x.Shape[0], L = x.Shape[1], C = x.Shape[2];
        int chunks = (int)CeilDiv(L, ChunkRows);
        using var bx = Bf16(x, "x");
        using var bdy = Bf16(dy, "dy");
        using var bsc = Bf16(scale, "scale");
        using var st = F32(stats, "stats");
        var dx = Alloc(x.Shape);
        var dshift = Alloc([B, C]);
        var dscale = Alloc([B, C]);
        using var psh = Alloc([B, chunks, C], Precision.Master);
        using var psc = Alloc([B, chunks, C], Precision.Master);
        var p = new LnParams
        {
            X = bx.Ptr, Scale = bsc.Ptr, Dy = bdy.Ptr, Y = dx.Ptr, Stats = st.Ptr, PartialShift = psh.Ptr, PartialScale = psc.Ptr,
            B = B, L = L, C = C, Chunks = chunks,
        };
        if ((long)B * L * C == 0)
        {
            FillWith(dshift, 0f);
            FillWith(dscale, 0f);
            return (dx, dshift, dscale);
        }
        LaunchParams("norm.cu", "layernorm_modulate_backward_dx", (CeilDiv((long)B * L, Block / 32), 1, 1), (Block, 1, 1), p);
        LaunchParams("norm.cu", "layernorm_modulate_backward_partials", (CeilDiv(C, 32), (uint)chunks, (uint)B), (32, 8, 1), p);
        Launch1D("norm.cu", "sum_chunks_kernel", (long)B * C, dshift.Ptr, psh.Ptr, B, chunks, C);
        Launch1D("norm.cu", "sum_chunks_kernel", (long)B * C, dscale.Ptr, psc.Ptr, B, chunks, C);
        return (dx, dshift, dscale);
    }

    public (Tensor X1, Tensor Modulated) ResidualLayerNormModulate(Tensor x, Tensor gate, Tensor y, Tensor shift, Tensor scale,
                                                                   float eps, out Tensor stats)
    {
        using var _ = Op("residual_layernorm_modulate");
        Shapes.SameShape(x, y, "residual_layernorm_modulate");
        Shapes.Require(x.Rank == 3, $"residual_layernorm_modulate: x {x} is not (B, L, C)");
        int B = x.Shape[0], L = x.Shape[1], C = x.Shape[2];
        Shapes.Require(gate.Length == (long)B * C && shift.Length == (long)B * C && scale.Length == (long)B * C,
            $"residual_layernorm_modulate: gate {gate}, shift {shift}, scale {scale} for x {x}");
        using var bx = Bf16(x, "x");
        using var bg = Bf16(gate, "gate");
        using var by = Bf16(y, "y");
        using var bsh = Bf16(shift, "shift");
        using var bsc = Bf16(scale, "scale");
        if ((long)B * L == 0 || !UsesResidualNormKernel(B, L, C, 0, bx.Ptr, bg.Ptr, by.Ptr, bsh.Ptr, bsc.Ptr))
        {
            // version 1: the engine's two ops
            var x1v1 = GatedResidual(bx.Tensor, bg.Tensor, by.Tensor);
            return (x1v1, LayerNormModulate(x1v1, bsh.Tensor, bsc.Tensor, eps, out stats));
        }
        var x1 = Alloc(x.Shape);
        var m = Alloc(x.Shape);
        var st = Alloc([B * L, 2], Precision.Master);
        ResidualNormForward(new ResidualNormParams
        {
            X = bx.Ptr, Gate = bg.Ptr, Y = by.Ptr, Shift = bsh.Ptr, Scale = bsc.Ptr, X1 = x1.Ptr, Out = m.Ptr, Stats = st.Ptr,
            B = B, L = L, C = C, Eps = eps,
        });
        stats = st;
        return (x1, m);
    }

    public (Tensor Dx1, Tensor Dy, Tensor DGate, Tensor DShift, Tensor DScale) ResidualLayerNormModulateBackward(
        Tensor dModulated, Tensor dOut, Tensor x1, Tensor scale, Tensor stats, Tensor gate, Tensor y)
    {
        using var _ = Op("residual_layernorm_modulate_backward");
        Shapes.SameShape(dModulated, x1, "residual_layernorm_modulate_backward (dModulated vs x1)");
        Shapes.SameShape(dOut, x1, "residual_layernorm_modulate_backward (dOut vs x1)");
        Shapes.SameShape(y, x1, "residual_layernorm_modulate_backward (y vs x1)");
        int B = x1.Shape[0], L = x1.Shape[1], C = x1.Shape[2];
        Shapes.Require(gate.Length == (long)B * C && scale.Length == (long)B * C && stats.Length == 2L * B * L,
            $"residual_layernorm_modulate_backward: gate {gate}, scale {scale}, stats {stats} for x1 {x1}");
        using var bdm = Bf16(dModulated, "dModulated");
        using var bdo = Bf16(dOut, "dOut");
        using var bx1 = Bf16(x1, "x1");
        using var bsc = Bf16(scale, "scale");
        using var bg = Bf16(gate, "gate");
        using var by = Bf16(y, "y");
        using var st = F32(stats, "stats");
        int rows = ResidualNormRowsPerBlock(B, L);
        int chunks = (int)CeilDiv(L, rows);
        if ((long)B * L == 0 || !UsesResidualNormKernel(B, L, C, chunks, bdm.Ptr, bdo.Ptr, bx1.Ptr, bsc.Ptr, bg.Ptr, by.Ptr))
        {
            // version 1: LayerNormModulateBackward, dx1 = dOut + its dx, GatedResidualBackward of dx1
            var (dxn, dshift1, dscale1) = LayerNormModulateBackward(bdm.Tensor, bx1.Tensor, bsc.Tensor, st.Tensor);
            AddInPlace(dxn, bdo.Tensor);
            var (dy1, dgate1) = GatedResidualBackward(dxn, bg.Tensor, by.Tensor);
            return (dxn, dy1, dgate1, dshift1, dscale1);
        }
        var dx1 = Alloc(x1.Shape);
        var dy = Alloc(x1.Shape);
        var dgate = Alloc([B, C]);
        var dshift = Alloc([B, C]);
        var dscale = Alloc([B, C]);
        using var partial = Alloc([3, B, chunks, C], Precision.Master);
        ResidualNormBackward(new ResidualNormParams
        {
            DMod = bdm.Ptr, DOut = bdo.Ptr, X1 = bx1.Ptr, Scale = bsc.Ptr, Gate = bg.Ptr, Y = by.Ptr, Stats = st.Ptr,
            Out = dx1.Ptr, Dy = dy.Ptr, Partial = partial.Ptr, DGate = dgate.Ptr, DShift = dshift.Ptr, DScale = dscale.Ptr,
            B = B, L = L, C = C, Chunks = chunks, RowsPerBlock = rows,
        });
        return (dx1, dy, dgate, dshift, dscale);
    }

    public Tensor RmsNorm(Tensor x, Tensor weight, float eps, out Tensor rstd)
    {
        using var _ = Op("rmsnorm");
        int D = x.Cols;
        Shapes.Require(weight.Length == D, $"rmsnorm: weight {weight} for x {x}");
        using var bx = Bf16(x, "x");
        using var bw = Bf16(weight, "weight");
        var y = Alloc(x.Shape);
        var r = Alloc(x.Shape[..^1], Precision.Master);
        if (x.Rows > 0)
            Launch("norm.cu", "rmsnorm_forward", (CeilDiv(x.Rows, Block / 32), 1, 1), (Block, 1, 1), 0,
                y.Ptr, r.Ptr, bx.Ptr, bw.Ptr, x.Rows, D, eps);
        rstd = r;
        return y;
    }

    public Tensor RmsNormBackward(Tensor dy, Tensor x, Tensor weight, Tensor rstd)
    {
        using var _ = Op("rmsnorm_backward");
        Shapes.SameShape(dy, x, "rmsnorm_backward");
        Shapes.Require(rstd.Length == x.Rows, $"rmsnorm_backward: rstd {rstd} for x {x}");
        using var bx = Bf16(x, "x");
        using var bdy = Bf16(dy, "dy");
        using var bw = Bf16(weight, "weight");
        using var r = F32(rstd, "rstd");
        var dx = Alloc(x.Shape);
        if (x.Rows > 0)
            Launch("norm.cu", "rmsnorm_backward", (CeilDiv(x.Rows, Block / 32), 1, 1), (Block, 1, 1), 0,
                dx.Ptr, bdy.Ptr, bx.Ptr, bw.Ptr, r.Ptr, x.Rows, x.Cols);
        return dx;
    }
}
