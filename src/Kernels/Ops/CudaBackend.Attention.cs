using System.Runtime.InteropServices;
using MetaLoraNative.Engine;

namespace MetaLoraNative.Kernels;

// Attention (attention.cu): RoPE and fused attention. attention.cu holds version 1 of the attention kernels (fp32
// CUDA cores), the engine's; version 2 (tensor cores, kernels/dev/attention, launched from
// Dev/CudaBackend.AttentionMma.cs) runs instead only when opted in.
public sealed partial class CudaBackend
{
    const int RopeMaxAxes = 8;             // ROPE_MAX_AXES in attention.cu
    const int AttentionMaxHeadDim = 128;   // MAXD in attention.cuh

    /// <summary>Mirrors RopeTableParams in attention.cu.</summary>
    [StructLayout(LayoutKind.Sequential)]
    unsafe struct RopeTableParams
    {
        public ulong Ids, Pe;
        public int DtIds, B, L, NAxes, HalfD;
        public float Theta;
        public fixed int Dims[RopeMaxAxes];
    }

    /// <summary>Mirrors AttnParams in attention.cuh (shapes there).</summary>
    [StructLayout(LayoutKind.Sequential)]
    struct AttnParams
    {
        public ulong Q, K, V, O, DOut, Out, Lse, DRow, Dq, Dk, Dv;
        public int B, H, L, D;
        public float Scale;
    }

    public unsafe Tensor RopeTable(Tensor ids, int[] axesDim, float theta)
    {
        using var _ = Op("rope_table");
        var cids = T(ids, "ids");
        Shapes.Require(cids.Rank == 3 && cids.Shape[2] == axesDim.Length && axesDim.Length <= RopeMaxAxes,
            $"rope_table: ids {cids} for {axesDim.Length} axes (at most {RopeMaxAxes})");
        Shapes.Require(axesDim.All(d => d > 0 && d % 2 == 0), "rope_table: every axis dim must be even");
        int B = cids.Shape[0], L = cids.Shape[1], half = axesDim.Sum() / 2;
        var pe = Alloc([B, L, half, 2], Precision.Master);
        var p = new RopeTableParams { Ids = cids.Ptr, Pe = pe.Ptr, DtIds = cids.Dt, B = B, L = L, NAxes = axesDim.Length, HalfD = half, Theta = theta };
        for (int i = 0; i < axesDim.Length; i++) p.Dims[i] = axesDim[i];
        long n = (long)B * L * half;
        if (n > 0) LaunchParams("attention.cu", "rope_table", (Grid1D(n), 1, 1), (Block, 1, 1), p);
        return pe;
    }

    public Tensor ApplyRope(Tensor x, Tensor pe) => Rope("apply_rope", x, pe, 1f);
    public Tensor ApplyRopeBackward(Tensor dy, Tensor pe) => Rope("apply_rope_backward", dy, pe, -1f);

    Tensor Rope(string name, Tensor x, Tensor pe, float sign)
    {
        using var _ = Op(name);
        Shapes.Require(x.Rank == 4 && x.Shape[3] % 2 == 0, $"{name}: x {x} is not (B, H, L, D) with even D");
        int B = x.Shape[0], H = x.Shape[1], L = x.Shape[2], D = x.Shape[3];
        Shapes.Require(pe.Length == (long)B * L * D, $"{name}: pe {pe} for x {x}");
        using var bx = Bf16(x, "x");
        using var fpe = F32(pe, "pe");
        var y = Alloc(x.Shape);
        Launch1D("attention.cu", "rope_apply", y.Length / 2, y.Ptr, bx.Ptr, fpe.Ptr, B, H, L, D, sign);
        return y;
    }

    public Tensor Attention(Tensor q, Tensor k, Tensor v, out Tensor lse)
    {
        using var _ = Op("attention");
        CheckAttention(q, k, v);
        int B = q.Shape[0], H = q.Shape[1], L = q.Shape[2], D = q.Shape[3];
        using var bq = Bf16(q, "q");
        using var bk = Bf16(k, "k");
        using var bv = Bf16(v, "v");
        var o = Alloc([B, L, H * D]);
        var l = Alloc([B, H, L], Precision.Master);
        var p = new AttnParams { Q = bq.Ptr, K = bk.Ptr, V = bv.Ptr, Out = o.Ptr, Lse = l.Ptr, B = B, H = H, L = L, D = D, Scale = 1f / MathF.Sqrt(D) };
        if ((long)B * H * L == 0) { /* nothing to attend */ }
        else if (UsesTensorCoreAttentionForward(D)) AttentionForwardMma(p);   // opt-in version 2
        else if (UsesPipelinedAttentionForward(D)) AttentionForwardPipelined(p);   // opt-in version 3
        else LaunchParams("attention.cu", "attention_forward", (CeilDiv(L, 16), (uint)(B * H), 1), (Block, 1, 1), p);   // 8 warps × 2 rows
        lse = l;
        return o;
    }

    public (Tensor Dq, Tensor Dk, Tensor Dv) AttentionBackward(Tensor dOut, Tensor q, Tensor k, Tensor v, Tensor output, Tensor lse)
    {
        using var _ = Op("attention_backward");
        CheckAttention(q, k, v);
        int B = q.Shape[0], H = q.Shape[1], L = q.Shape[2], D = q.Shape[3];
        Shapes.Require(dOut.Length == q.Length && output.Length == q.Length && lse.Length == (long)B * H * L,
            $"attention_backward: dOut {dOut}, output {output}, lse {lse} for q {q}");
        using var bq = Bf16(q, "q");
        using var bk = Bf16(k, "k");
        using var bv = Bf16(v, "v");
        using var bo = Bf16(output, "output");
        using var bdo = Bf16(dOut, "dOut");
        using var fl = F32(lse, "lse");
        using var drow = Alloc([B, H, L], Precision.Master);
        var dq = Alloc(q.Shape);
        var dk = Alloc(q.Shape);
        var dv = Alloc(q.Shape);
        var p = new AttnParams
        {
            Q = bq.Ptr, K = bk.Ptr, V = bv.Ptr, O = bo.Ptr, DOut = bdo.Ptr, Lse = fl.Ptr, DRow = drow.Ptr,
            Dq = dq.Ptr, Dk = dk.Ptr, Dv = dv.Ptr, B = B, H = H, L = L, D = D, Scale = 1f / MathF.Sqrt(D),
        };
        if ((long)B * H * L == 0) return (dq, dk, dv);
        LaunchParams("attention.cu", "attention_backward_preprocess", (CeilDiv((long)B * H * L, Block / 32), 1, 1), (Block, 1, 1), p);
        if (UsesTensorCoreAttentionBackward(D)) AttentionBackwardMma(p);   // opt-in version 2 (also version 3's)
        else if (UsesOnePassAttentionBackward(D)) AttentionBackwardOnePass(p);   // opt-in version 4
        else
        {
            LaunchParams("attention.cu", "attention_backward_dq", (CeilDiv(L, 8), (uint)(B * H), 1), (Block, 1, 1), p);
            LaunchParams("attention.cu", "attention_backward_dkdv", (CeilDiv(L, 8), (uint)(B * H), 1), (Block, 1, 1), p);
        }
        return (dq, dk, dv);
    }

    static void CheckAttention(Tensor q, Tensor k, Tensor v)
    {
        Shapes.Require(q.Rank == 4, $"attention: q {q} is not (B, H, L, D)");
        Shapes.SameShape(q, k, "attention q/k");
        Shapes.SameShape(q, v, "attention q/v");
        Shapes.Require(q.Shape[3] <= AttentionMaxHeadDim, $"attention: head dim {q.Shape[3]} > {AttentionMaxHeadDim}");
        Shapes.Require((long)q.Shape[0] * q.Shape[1] <= 65535, $"attention: B·H = {q.Shape[0] * q.Shape[1]} exceeds grid y");
    }
}
