namespace MetaLoraNative.Kernels.Verification;

// The parity checks of attention version 2 (kernels/dev/attention), in CudaParity.Dev: `metalora check cuda --dev`.
public static partial class CudaParity
{
    /// <summary>
    /// (B, H, L, D, forward, backward) of the version-2 checks. The tensor-core backward runs only for D = 128 (else
    /// version 1 does, which the D 64 and 32 tc/tc cases check); it is checked after both forwards, so a failure points
    /// at one kernel. Lengths are not multiples of the tiles (16, 32, 64), and 1 and 65 sit at the edges.
    /// </summary>
    public static readonly (int B, int H, int L, int D, AttentionKernel Forward, AttentionKernel Backward)[] AttentionMmaCases =
    [
        (2, 3, 77, 64, AttentionKernel.TensorCore, AttentionKernel.Scalar),
        (1, 2, 130, 128, AttentionKernel.TensorCore, AttentionKernel.Scalar),
        (1, 1, 5, 32, AttentionKernel.TensorCore, AttentionKernel.Scalar),
        (1, 2, 300, 128, AttentionKernel.TensorCore, AttentionKernel.Scalar),
        (1, 2, 130, 128, AttentionKernel.Scalar, AttentionKernel.TensorCore),
        (2, 3, 77, 64, AttentionKernel.TensorCore, AttentionKernel.TensorCore),
        (1, 2, 130, 128, AttentionKernel.TensorCore, AttentionKernel.TensorCore),
        (1, 1, 5, 32, AttentionKernel.TensorCore, AttentionKernel.TensorCore),
        (1, 2, 300, 128, AttentionKernel.TensorCore, AttentionKernel.TensorCore),
        (1, 1, 1, 128, AttentionKernel.TensorCore, AttentionKernel.TensorCore),
        (2, 2, 65, 128, AttentionKernel.TensorCore, AttentionKernel.TensorCore),
    ];

    static IEnumerable<ParityCheck> AttentionMmaChecks() =>
        AttentionMmaCases.Select(c => AttentionCheck((c.B, c.H, c.L, c.D), c.Forward, c.Backward));
}

// The bench of attention version 2, in KernelBenches.Dev: `metalora kernels bench --dev` puts it beside version 1.
public static partial class KernelBenches
{
    static IEnumerable<KernelBench> AttentionMmaBenches() =>
    [
        new("attention tc", $"attention version 2 (kernels/dev/attention, tensor cores), (1, {Heads}, {Tokens}, {HeadDim}): forward, backward",
            gpu => Attention(gpu, AttentionKernel.TensorCore)),
    ];
}
