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
}

// Attention version 2 from the kernel playground (kernels/dev/attention/02_mma_forward.cu, 02_mma_backward.cu):
// selected by METALORA_ATTENTION=mma (or the two properties), checked by `metalora check cuda --dev`
// (CudaParity.Dev) and timed by `metalora kernels bench --dev`. Promotion moves the kernels into kernels/attention.cu
// and these launches into Ops/CudaBackend.Attention.cs.
public sealed partial class CudaBackend
{
    const string AttentionMmaForwardFile = "dev/attention/02_mma_forward.cu";
    const string AttentionMmaBackwardFile = "dev/attention/02_mma_backward.cu";

    /// <summary>The forward attention kernel: version 1 unless METALORA_ATTENTION=mma (or "tensorcore") is set.</summary>
    public AttentionKernel AttentionForwardKernel { get; set; } = AttentionKernelFromEnvironment();

    /// <summary>The backward attention kernels (dq and dk/dv); same default and switch as <see cref="AttentionForwardKernel"/>.</summary>
    public AttentionKernel AttentionBackwardKernel { get; set; } = AttentionKernelFromEnvironment();

    static AttentionKernel AttentionKernelFromEnvironment() =>
        Environment.GetEnvironmentVariable("METALORA_ATTENTION") is "mma" or "tensorcore" ? AttentionKernel.TensorCore : AttentionKernel.Scalar;

    bool UsesTensorCoreAttentionForward(int d) => AttentionForwardKernel == AttentionKernel.TensorCore && d % 16 == 0;

    bool UsesTensorCoreAttentionBackward(int d) =>
        AttentionBackwardKernel == AttentionKernel.TensorCore && d == AttentionMaxHeadDim && Device.Major >= 8;

    /// <summary>out and lse from q, k, v: 4 warps × 16 query rows per block.</summary>
    void AttentionForwardMma(in AttnParams p) =>
        LaunchParams(AttentionMmaForwardFile, "attention_forward_mma", (CeilDiv(p.L, 64), (uint)(p.B * p.H), 1), (128, 1, 1), p);

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
}
