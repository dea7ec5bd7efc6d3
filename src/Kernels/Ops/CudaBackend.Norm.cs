using System.Runtime.InteropServices;
using MetaLoraNative.Engine;

namespace MetaLoraNative.Kernels;

// Norm (norm.cu): LayerNorm with FLUX's modulation, and RMSNorm.
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
