using MetaLoraNative.Engine;

namespace MetaLoraNative.Kernels;

// Conditioning (conditioning.cu): the timestep embedding and the gated residual.
public sealed partial class CudaBackend
{
    public Tensor TimestepEmbedding(Tensor t, int dim, float timeFactor = 1000f, float maxPeriod = 10000f)
    {
        using var _ = Op("timestep_embedding");
        var ct = T(t, "t");
        Shapes.Require(ct.Rank == 1, $"timestep_embedding: t {ct} is not (B)");
        int B = ct.Shape[0];
        var y = Alloc([B, dim]);
        Launch1D("conditioning.cu", "timestep_embedding_forward", (long)B * dim, y.Ptr, ct.Ptr, ct.Dt, B, dim, timeFactor, maxPeriod);
        return y;
    }

    public Tensor GatedResidual(Tensor x, Tensor gate, Tensor y)
    {
        using var _ = Op("gated_residual");
        Shapes.SameShape(x, y, "gated_residual");
        Shapes.Require(x.Rank == 3 && gate.Length == (long)x.Shape[0] * x.Shape[2], $"gated_residual: gate {gate} for x {x}");
        int B = x.Shape[0], L = x.Shape[1], C = x.Shape[2];
        using var bx = Bf16(x, "x");
        using var bg = Bf16(gate, "gate");
        using var by = Bf16(y, "y");
        var o = Alloc(x.Shape);
        if (!TryGatedResidualVec("gated_residual_forward", o, bx.Tensor, bg.Tensor, by.Tensor, B, L, C))
            Launch1D("conditioning.cu", "gated_residual_forward", o.Length, o.Ptr, bx.Ptr, bg.Ptr, by.Ptr, B, L, C);
        return o;
    }

    public (Tensor Dy, Tensor DGate) GatedResidualBackward(Tensor dOut, Tensor gate, Tensor y)
    {
        using var _ = Op("gated_residual_backward");
        Shapes.SameShape(dOut, y, "gated_residual_backward");
        int B = y.Shape[0], L = y.Shape[1], C = y.Shape[2];
        int chunks = (int)CeilDiv(L, ChunkRows);
        using var bdo = Bf16(dOut, "dOut");
        using var bg = Bf16(gate, "gate");
        using var by = Bf16(y, "y");
        var dy = Alloc(y.Shape);
        var dgate = Alloc([B, C]);
        if (dy.Length == 0)
        {
            FillWith(dgate, 0f);
            return (dy, dgate);
        }
        using var partial = Alloc([B, chunks, C], Precision.Master);
        if (!TryGatedResidualVec("gated_residual_backward_dy", dy, bdo.Tensor, bg.Tensor, null, B, L, C))
            Launch1D("conditioning.cu", "gated_residual_backward_dy", dy.Length, dy.Ptr, bdo.Ptr, bg.Ptr, B, L, C);
        Launch("conditioning.cu", "gated_residual_backward_partials", (CeilDiv(C, 32), (uint)chunks, (uint)B), (32, 8, 1), 0,
            partial.Ptr, bdo.Ptr, by.Ptr, B, L, C, chunks);
        Launch1D("conditioning.cu", "sum_chunks_kernel", (long)B * C, dgate.Ptr, partial.Ptr, B, chunks, C);
        return (dy, dgate);
    }
}
