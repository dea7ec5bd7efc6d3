using System.Runtime.InteropServices;
using MetaLoraNative.Engine;

namespace MetaLoraNative.Kernels;

// The gated residual fused with the LayerNorm-modulate it feeds, version 2 from the kernel playground
// (kernels/dev/residual_norm/02_fused.cu). The model issues the fused op only under METALORA_FUSE=residual-norm
// (Engine/Flux/Fusions.cs), so that is its opt-in; ResidualNormKernel = false runs version 1 (the engine's
// GatedResidual and LayerNormModulate ops) in its place, for the parity checks and benches. Checked by
// `metalora check cuda --dev` (CudaParity.Dev). Promotion moves the kernels into kernels/norm.cu and these
// launches into Ops/CudaBackend.Norm.cs.
public sealed partial class CudaBackend
{
    const string ResidualNormFile = "dev/residual_norm/02_fused.cu";

    /// <summary>Whether the fused op runs version 2's kernels (true) or version 1's sequence of engine ops.</summary>
    public bool ResidualNormKernel { get; set; } = true;

    /// <summary>Mirrors ResidualNormParams in 02_fused.cu field by field.</summary>
    [StructLayout(LayoutKind.Sequential)]
    struct ResidualNormParams
    {
        public ulong X, Gate, Y, Shift, Scale, DMod, DOut, X1, Out, Dy, Stats, Partial, DGate, DShift, DScale;
        public int B, L, C, Chunks, RowsPerBlock;
        public float Eps;
    }

    /// <summary>One thread per 8 columns (a 16-byte vector), rounded up to a warp.</summary>
    internal static uint ResidualNormThreads(int c) => (uint)(CeilDiv(c / 8, 32) * 32);

    /// <summary>
    /// What version 2 covers: C a multiple of 8 up to 8,192 (one 16-byte vector per thread, 1,024 threads), every
    /// tensor 16-byte aligned, 32-bit indices (B·L·C and the partials below 2^31).
    /// </summary>
    bool UsesResidualNormKernel(int b, int l, int c, int chunks, params ReadOnlySpan<ulong> ptrs)
    {
        if (!ResidualNormKernel || c % 8 != 0 || c == 0 || c > 8192 || (long)b * l * c >= int.MaxValue || 3L * b * chunks * c >= int.MaxValue)
            return false;
        foreach (var p in ptrs)
            if (p % 16 != 0) return false;
        return true;
    }

    /// <summary>
    /// Rows per backward block: about two blocks per multiprocessor (the grid is (chunks, B)), which at FLUX's width
    /// (384 threads, 72 registers: two blocks resident per SM) is one full wave; at least 8 rows, so the partials
    /// (3·4 bytes per column per chunk, written and read again) stay below 3/8 of the 2·12 bytes a row moves per column.
    /// </summary>
    int ResidualNormRowsPerBlock(int b, int l) => ResidualNormRowsPerBlock(b, l, Device.Multiprocessors);

    internal static int ResidualNormRowsPerBlock(int b, int l, int multiprocessors) =>
        (int)Math.Clamp(CeilDiv((long)b * l, 2L * multiprocessors), 8, Math.Max(8, l));

    void ResidualNormForward(in ResidualNormParams p) =>
        LaunchParams(ResidualNormFile, "residual_norm_forward", ((uint)(p.B * p.L), 1, 1), (ResidualNormThreads(p.C), 1, 1), p);

    void ResidualNormBackward(in ResidualNormParams p)
    {
        LaunchParams(ResidualNormFile, "residual_norm_backward", ((uint)p.Chunks, (uint)p.B, 1), (ResidualNormThreads(p.C), 1, 1), p);
        LaunchParams(ResidualNormFile, "residual_norm_backward_sums", (Grid1D(3L * p.B * p.C), 1, 1), (Block, 1, 1), p);
    }
}
