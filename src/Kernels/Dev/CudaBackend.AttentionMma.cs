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
}

public static class AttentionKernels
{
    /// <summary>The short name in check and bench names: scalar, tc (version 2), p3 (version 3).</summary>
    public static string Tag(this AttentionKernel k) => k switch
    {
        AttentionKernel.Scalar => "scalar",
        AttentionKernel.TensorCore => "tc",
        _ => "p3",
    };

    /// <summary>METALORA_ATTENTION: "mma" or "tensorcore" selects version 2, "pipelined" version 3, anything else version 1.</summary>
    public static AttentionKernel FromEnvironment() => Environment.GetEnvironmentVariable("METALORA_ATTENTION") switch
    {
        "mma" or "tensorcore" => AttentionKernel.TensorCore,
        "pipelined" => AttentionKernel.Pipelined,
        _ => AttentionKernel.Scalar,
    };
}

// Attention versions 2 and 3 from the kernel playground (kernels/dev/attention/02_mma_forward.cu, 02_mma_backward.cu,
// 03_pipelined_forward.cu): selected by METALORA_ATTENTION=mma or =pipelined (or the two properties), checked by `metalora check cuda --dev`
// (CudaParity.Dev) and timed by `metalora kernels bench --dev`. Promotion moves the kernels into kernels/attention.cu
// and these launches into Ops/CudaBackend.Attention.cs.
public sealed partial class CudaBackend
{
    const string AttentionMmaForwardFile = "dev/attention/02_mma_forward.cu";
    const string AttentionMmaBackwardFile = "dev/attention/02_mma_backward.cu";
    const string AttentionPipelinedForwardFile = "dev/attention/03_pipelined_forward.cu";

    /// <summary>The forward attention kernel: version 1 unless METALORA_ATTENTION selects another (<see cref="AttentionKernels.FromEnvironment"/>).</summary>
    public AttentionKernel AttentionForwardKernel { get; set; } = AttentionKernels.FromEnvironment();

    /// <summary>The backward attention kernels (dq and dk/dv); same default and switch as <see cref="AttentionForwardKernel"/>.</summary>
    public AttentionKernel AttentionBackwardKernel { get; set; } = AttentionKernels.FromEnvironment();

    bool UsesTensorCoreAttentionForward(int d) => AttentionForwardKernel == AttentionKernel.TensorCore && d % 16 == 0;

    bool UsesPipelinedAttentionForward(int d) => AttentionForwardKernel == AttentionKernel.Pipelined && d % 16 == 0 && Device.Major >= 8;

    /// <summary>Version 2's backward, which version 3 uses too.</summary>
    bool UsesTensorCoreAttentionBackward(int d) =>
        AttentionBackwardKernel is AttentionKernel.TensorCore or AttentionKernel.Pipelined && d == AttentionMaxHeadDim && Device.Major >= 8;

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
}
