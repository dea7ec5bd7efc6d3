using System.Runtime.InteropServices;
using MetaLoraNative.Engine;
using MetaLoraNative.Kernels.Native;

namespace MetaLoraNative.Kernels;

/// <summary>Which version of the attention kernels runs (the same contract; see kernels/dev/README.md).</summary>
public enum AttentionKernel
{
    /// <summary>Version 1 (kernels/attention.cu): fp32 CUDA cores, one warp per row; any D up to 128. The engine's.</summary>
    Scalar,
    /// <summary>
    /// Version 2 (kernels/dev/attention): mma.sync bf16 tensor cores, FlashAttention-2 layout. Forward: D a multiple
    /// of 16; backward: D = 128. Otherwise version 1 runs. Opt-in until a GPU run has passed it.
    /// </summary>
    TensorCore,
    /// <summary>
    /// Version 3 (kernels/dev/attention/03_pipelined_forward.cu): version 2's tensor-core forward with 128-query
    /// blocks, cp.async double-buffered K/V tiles and ldmatrix fragments; D a multiple of 16, sm_80+. As a backward
    /// setting it means version 2's backward (version 3 has no backward of its own). Opt-in until a GPU run has passed it.
    /// </summary>
    Pipelined,
    /// <summary>
    /// Version 4's backward (kernels/dev/attention/04_onepass_backward.cu): one key-centric pass that forms S, P, dP and
    /// dS once and accumulates dq in an fp32 (B, H, L, D) scratch with atomics (so dq is not bitwise reproducible run
    /// to run); D = 128, sm_80+, else version 1. As a forward setting it means version 3's forward. Opt-in until a
    /// GPU run has passed it.
    /// </summary>
    OnePass,
}

public static class AttentionKernels
{
    /// <summary>The short name in check and bench names: scalar, tc (version 2), p3 (version 3), onepass (version 3 forward, 4 backward).</summary>
    public static string Tag(this AttentionKernel k) => k switch
    {
        AttentionKernel.Scalar => "scalar",
        AttentionKernel.TensorCore => "tc",
        AttentionKernel.Pipelined => "p3",
        _ => "onepass",
    };

    /// <summary>
    /// METALORA_ATTENTION: "mma" or "tensorcore" selects version 2, "pipelined" version 3 (with version 2's backward),
    /// "onepass" version 3's forward with version 4's backward, anything else version 1. One value sets both the
    /// forward and the backward property, as for the other versions.
    /// </summary>
    public static AttentionKernel FromEnvironment() => Parse(Environment.GetEnvironmentVariable("METALORA_ATTENTION"));

    /// <summary>The kernel a METALORA_ATTENTION value selects (<see cref="FromEnvironment"/>).</summary>
    public static AttentionKernel Parse(string? value) => value switch
    {
        "mma" or "tensorcore" => AttentionKernel.TensorCore,
        "pipelined" => AttentionKernel.Pipelined,
        "onepass" => AttentionKernel.OnePass,
        _ => AttentionKernel.Scalar,
    };
}

// Attention versions 2 to 4 from the kernel playground (kernels/dev/attention/02_mma_forward.cu, 02_mma_backward.cu,
// 03_pipelined_forward.cu, 04_onepass_backward.cu): selected by METALORA_ATTENTION=mma, =pipelined or =onepass (or the
// two properties), checked by `metalora check cuda --dev`
// (CudaParity.Dev) and timed by `metalora kernels bench --dev`. Promotion moves the kernels into kernels/attention.cu
// and these launches into Ops/CudaBackend.Attention.cs.
public sealed partial class CudaBackend
{
    const string AttentionMmaForwardFile = "dev/attention/02_mma_forward.cu";
    const string AttentionMmaBackwardFile = "dev/attention/02_mma_backward.cu";
    const string AttentionPipelinedForwardFile = "dev/attention/03_pipelined_forward.cu";
    const string AttentionOnePassBackwardFile = "dev/attention/04_onepass_backward.cu";

    /// <summary>Mirrors OnePassParams in 04_onepass_backward.cu: version 1/2's parameters and the fp32 dq accumulator.</summary>
    [StructLayout(LayoutKind.Sequential)]
    struct OnePassParams
    {
        public AttnParams A;
        public ulong DqAcc;
    }

    /// <summary>The forward attention kernel: version 1 unless METALORA_ATTENTION selects another (<see cref="AttentionKernels.FromEnvironment"/>).</summary>
    public AttentionKernel AttentionForwardKernel { get; set; } = AttentionKernels.FromEnvironment();

    /// <summary>The backward attention kernels (dq and dk/dv); same default and switch as <see cref="AttentionForwardKernel"/>.</summary>
    public AttentionKernel AttentionBackwardKernel { get; set; } = AttentionKernels.FromEnvironment();

    bool UsesTensorCoreAttentionForward(int d) => AttentionForwardKernel == AttentionKernel.TensorCore && d % 16 == 0;

    /// <summary>Version 3's forward, which the one-pass setting uses too.</summary>
    bool UsesPipelinedAttentionForward(int d) =>
        AttentionForwardKernel is AttentionKernel.Pipelined or AttentionKernel.OnePass && d % 16 == 0 && Device.Major >= 8;

    /// <summary>Version 2's backward, which version 3 uses too.</summary>
    bool UsesTensorCoreAttentionBackward(int d) =>
        AttentionBackwardKernel is AttentionKernel.TensorCore or AttentionKernel.Pipelined && d == AttentionMaxHeadDim && Device.Major >= 8;

    /// <summary>Version 4's backward.</summary>
    bool UsesOnePassAttentionBackward(int d) =>
        AttentionBackwardKernel == AttentionKernel.OnePass && d == AttentionMaxHeadDim && Device.Major >= 8;

    /// <summary>out and lse from q, k, v: 4 warps × 16 query rows per block.</summary>
    void AttentionForwardMma(in AttnParams p) =>
        LaunchParams(AttentionMmaForwardFile, "attention_forward_mma", (CeilDiv(p.L, 64), (uint)(p.B * p.H), 1), (128, 1, 1), p);

    /// <summary>out and lse from q, k, v: 8 warps × 16 query rows per block, K/V tiles of 32 keys double-buffered.</summary>
    void AttentionForwardPipelined(in AttnParams p) =>
        LaunchParams(AttentionPipelinedForwardFile, "attention_forward_pipelined", (CeilDiv(p.L, 128), (uint)(p.B * p.H), 1), (256, 1, 1), p);

    /// <summary>
    /// dq, dk, dv once drow is formed (version 1's attention_backward_preprocess). The kernels hold D = 128 as a
    /// constant and use mma.sync (sm_80+): 4 warps × 16 rows per block.
    /// </summary>
    void AttentionBackwardMma(in AttnParams p)
    {
        var grid = (CeilDiv(p.L, 64), (uint)(p.B * p.H), 1u);
        LaunchParams(AttentionMmaBackwardFile, "attention_backward_dq_mma", grid, (128, 1, 1), p);
        LaunchParams(AttentionMmaBackwardFile, "attention_backward_dkdv_mma", grid, (128, 1, 1), p);
    }

    /// <summary>
    /// dq, dk, dv in one key-centric pass once drow is formed: the fp32 dq accumulator (B, H, L, 128) is rented from the
    /// pool and zeroed, 4 warps × 16 keys per block add into it with atomics, and a grid-stride pass writes dq = bf16(acc
    /// · scale). dk and dv are written directly. The accumulator goes back to the pool after the conversion.
    /// </summary>
    void AttentionBackwardOnePass(in AttnParams p)
    {
        using var acc = Alloc([p.B, p.H, p.L, p.D], Precision.Master);
        CudaCheck.Cu(CuDriver.cuMemsetD8Async(acc.Ptr, 0, (nuint)acc.Bytes, Stream));
        var op = new OnePassParams { A = p, DqAcc = acc.Ptr };
        LaunchParams(AttentionOnePassBackwardFile, "attention_backward_onepass", (CeilDiv(p.L, 64), (uint)(p.B * p.H), 1), (128, 1, 1), op);
        LaunchParams(AttentionOnePassBackwardFile, "attention_backward_onepass_convert", (Grid1D(acc.Length), 1, 1), (Block, 1, 1), op);
    }
}
