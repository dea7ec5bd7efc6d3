namespace MetaLoraNative.Kernels.Verification;

// The parity checks of attention versions 2 to 4 (kernels/dev/attention), in CudaParity.Dev: `metalora check cuda --dev`.
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
        // Version 3's forward (its backward is version 2's): lengths off the 128-query block and the 32-key tile,
        // a single key, one full tile plus one key (33), D 32 and 64 below the 128 the tiles are sized for.
        (2, 3, 77, 64, AttentionKernel.Pipelined, AttentionKernel.Scalar),
        (1, 2, 130, 128, AttentionKernel.Pipelined, AttentionKernel.Scalar),
        (1, 1, 5, 32, AttentionKernel.Pipelined, AttentionKernel.Scalar),
        (1, 2, 300, 128, AttentionKernel.Pipelined, AttentionKernel.Scalar),
        (1, 1, 1, 128, AttentionKernel.Pipelined, AttentionKernel.Scalar),
        (1, 2, 33, 128, AttentionKernel.Pipelined, AttentionKernel.Scalar),
        (2, 2, 65, 128, AttentionKernel.Pipelined, AttentionKernel.Pipelined),
        // Version 4's backward (one pass, fp32 atomic dq) after both forwards: lengths off its 64-key block and 16-query
        // tile, a single token, one tile plus one (17), and D 64 where version 1 runs instead.
        (1, 2, 130, 128, AttentionKernel.TensorCore, AttentionKernel.OnePass),
        (1, 2, 300, 128, AttentionKernel.Scalar, AttentionKernel.OnePass),
        (1, 1, 1, 128, AttentionKernel.OnePass, AttentionKernel.OnePass),
        (1, 1, 17, 128, AttentionKernel.OnePass, AttentionKernel.OnePass),
        (2, 2, 65, 128, AttentionKernel.OnePass, AttentionKernel.OnePass),
        (1, 2, 300, 128, AttentionKernel.OnePass, AttentionKernel.OnePass),
        (2, 3, 77, 64, AttentionKernel.OnePass, AttentionKernel.OnePass),
    ];

    /// <summary>
    /// (B, H, L, D) at FLUX.1-dev's attention sizes: 24 heads of 128 over 1,536 tokens (512² with 512 text tokens) and
    /// 4,608 (1024²). Too large for the fp64 oracle, so versions 2 to 4 are held against version 1 on the same GPU (the
    /// same Bf16AgainstKernel rule for all; version 4's dq is not bitwise reproducible, which that rule allows).
    /// </summary>
    public static readonly (int B, int H, int L, int D)[] AttentionAtScaleCases = [(1, 24, 1536, 128), (1, 24, 4608, 128)];

    static IEnumerable<ParityCheck> AttentionMmaChecks() =>
    [
        .. AttentionMmaCases.Select(c => AttentionCheck((c.B, c.H, c.L, c.D), c.Forward, c.Backward)),
        .. from kernel in new[] { AttentionKernel.TensorCore, AttentionKernel.Pipelined, AttentionKernel.OnePass }
           from c in AttentionAtScaleCases
           select new ParityCheck($"attention {kernel.Tag()} vs scalar {c.B}x{c.H}x{c.L}x{c.D}",
               $"attention {kernel} (kernels/dev) against version 1 on the GPU at FLUX.1-dev's size, B {c.B}, H {c.H}, L {c.L}, D {c.D}: " +
               "output, lse, and dq, dk, dv from the same saved forward",
               p => AttentionAgainstScalar(p, c, kernel)) { Slow = true },
    ];

    /// <summary>
    /// A playground version against version 1 on identical inputs. The forward is compared as is; both backwards are
    /// fed version 1's output and lse, so each comparison isolates one kernel. Tolerances: <see cref="ParityContext.Bf16AgainstKernel"/>
    /// for the bf16 results, the fp32 rule (1e-5) for lse.
    /// </summary>
    static void AttentionAgainstScalar(ParityContext p, (int B, int H, int L, int D) c, AttentionKernel kernel)
    {
        var gpu = p.Gpu;
        var (previous, previousBackward) = (gpu.AttentionForwardKernel, gpu.AttentionBackwardKernel);
        int n = c.B * c.H * c.L * c.D;
        try
        {
            using var q = gpu.Upload(Rand(n, 1, 2f), c.B, c.H, c.L, c.D);
            using var k = gpu.Upload(Rand(n, 2, 2f), c.B, c.H, c.L, c.D);
            using var v = gpu.Upload(Rand(n, 3), c.B, c.H, c.L, c.D);
            using var dOut = gpu.Upload(Rand(n, 4), c.B, c.L, c.H * c.D);
            gpu.AttentionForwardKernel = AttentionKernel.Scalar;
            using var so = gpu.Attention(q, k, v, out var slse);
            using var _slse = slse;
            gpu.AttentionForwardKernel = kernel;
            using var to = gpu.Attention(q, k, v, out var tlse);
            using var _tlse = tlse;
            p.Bf16AgainstKernel($"attention output ({kernel.Tag()} vs scalar)", to, so);
            p.F32($"attention lse ({kernel.Tag()} vs scalar)", tlse, slse, 1e-5);

            gpu.AttentionBackwardKernel = AttentionKernel.Scalar;
            var (sdq, sdk, sdv) = gpu.AttentionBackward(dOut, q, k, v, so, slse);
            gpu.AttentionBackwardKernel = kernel;
            var (tdq, tdk, tdv) = gpu.AttentionBackward(dOut, q, k, v, so, slse);
            p.Bf16AgainstKernel($"attention dq ({kernel.Tag()} vs scalar)", tdq, sdq);
            p.Bf16AgainstKernel($"attention dk ({kernel.Tag()} vs scalar)", tdk, sdk);
            p.Bf16AgainstKernel($"attention dv ({kernel.Tag()} vs scalar)", tdv, sdv);
            foreach (var t in new[] { sdq, sdk, sdv, tdq, tdk, tdv }) t.Dispose();
        }
        finally { (gpu.AttentionForwardKernel, gpu.AttentionBackwardKernel) = (previous, previousBackward); }
    }
}

// The benches of attention versions 2 to 4, in KernelBenches.Dev: `metalora kernels bench --dev` puts it beside version 1.
public static partial class KernelBenches
{
    static IEnumerable<KernelBench> AttentionMmaBenches() =>
    [
        new("attention tc", $"attention version 2 (kernels/dev/attention, tensor cores), (1, {Heads}, {Tokens}, {HeadDim}): forward, backward",
            gpu => Attention(gpu, AttentionKernel.TensorCore)),
        new("attention p3", $"attention version 3 (kernels/dev/attention, pipelined tensor-core forward; version 2's backward), (1, {Heads}, {Tokens}, {HeadDim}): forward, backward",
            gpu => Attention(gpu, AttentionKernel.Pipelined)),
        new("attention onepass", $"attention version 3's forward and version 4's one-pass backward (kernels/dev/attention, fp32 atomic dq), (1, {Heads}, {Tokens}, {HeadDim}): forward, backward",
            gpu => Attention(gpu, AttentionKernel.OnePass)),
    ];
}
