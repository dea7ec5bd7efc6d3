using System.Runtime.InteropServices;
using MetaLoraNative.Engine;
using MetaLoraNative.Kernels.Native;

namespace MetaLoraNative.Kernels;

/// <summary>LoraUpBackwardParams of kernels/dev/lora/02_up_backward.cu (104 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct LoraUpBackwardParams
{
    public ulong Dy, A, U, DU, Dmid, PartU, PartM, Count;
    public int N, Rows, R, Ldy, Lda, Ldm, Tiles, Chunks, Flags, Pad;
}

/// <summary>
/// The host half of kernels/dev/lora/02_up_backward.cu: what it takes, the grid, the flags and the scratch (the
/// kernel's contract comment). Pure, so the emulation test (tests/.../Kernels/LoraUpBackwardEmulationTests) runs the
/// same plan through a C# port of the kernel, its blocks and their "last block finishes" counters.
/// </summary>
internal static class LoraUpBackwardPlan
{
    public const int Threads = 128, Warps = Threads / 32, VecCols = 8, Chunk = Threads * VecCols, Tile = 64, MaxR = 4, Unroll = 4;
    public const int Vec = 1, WithDu = 2;

    /// <summary>(tiles, chunks): blocks of pass 1 along dy's rows (64 each) and columns (1,024 each).</summary>
    public static (int Tiles, int Chunks) Grid(long n, int rows) => ((int)((n + Tile - 1) / Tile), (rows + Chunk - 1) / Chunk);

    /// <summary>
    /// Version 2 takes it: 1 ≤ R ≤ 4, n and rows positive, at most 65,535 column chunks (the grid's y), and every
    /// index it forms below 2^31 (dy's, a's and dmid's rows × ld, both scratch arrays, the finish pass's items).
    /// </summary>
    public static bool Takes(long n, int rows, int r, long ldy, long lda, long ldm)
    {
        if (r < 1 || r > MaxR || n <= 0 || rows <= 0) return false;
        var (tiles, chunks) = Grid(n, rows);
        return chunks <= 65535 && n * ldy < int.MaxValue && n * lda < int.MaxValue && n * ldm < int.MaxValue &&
               (long)tiles * rows * r < int.MaxValue && (long)chunks * n * r < int.MaxValue && ((long)rows + n) * r < int.MaxValue;
    }

    /// <summary>UB_VEC when dy's block starts 16-byte aligned and ldy keeps every row so; UB_DU when dU is formed.</summary>
    public static int FlagsOf(ulong dyPtr, long ldy, bool withDu) =>
        (dyPtr % 16 == 0 && ldy % VecCols == 0 ? Vec : 0) | (withDu ? WithDu : 0);

    /// <summary>Floats of scratch: part_u (tiles, rows, R) when dU is formed, then part_m (chunks, n, R).</summary>
    public static (long PartU, long PartM) Scratch(long n, int rows, int r, bool withDu)
    {
        var (tiles, chunks) = Grid(n, rows);
        return (withDu ? (long)tiles * rows * r : 0, (long)chunks * n * r);
    }

    /// <summary>
    /// Counters of one call: one per row tile (the blocks that wrote their share of its dmid rows), then one per column
    /// chunk (those that wrote their share of its dU columns); zero before the launch, and the kernel leaves them zero.
    /// </summary>
    public static int Counters(long n, int rows)
    {
        var (tiles, chunks) = Grid(n, rows);
        return tiles + chunks;
    }

    /// <summary>Ints of the backend's counter buffer for a call needing <paramref name="counters"/>: at least 1,024, powers of two.</summary>
    public static int CounterCapacity(int counters) => (int)Math.Max(1024, System.Numerics.BitOperations.RoundUpToPowerOf2((uint)counters));
}

// The LoRA up factor's backward, version 2 from the kernel playground (kernels/dev/lora/02_up_backward.cu): dU += dyᵀ·a
// and dmid = dy·u from one read of dy, selected by METALORA_LORA_UPBACK=1 or LoraUpBackwardKernel, checked by
// `metalora check cuda --dev` (CudaParity.Dev, LoraUpBackwardChecks.cs). Version 1 is the two routed GEMMs of
// Ops/CudaBackend.Gemm.cs (LoraUpBackward), which run whenever version 2 does not take a call.
public sealed partial class CudaBackend
{
    const string LoraUpBackwardFile = "dev/lora/02_up_backward.cu";

    /// <summary>LoraUpBackward runs version 2 (one pass over dy) where it takes the call; otherwise (the default) two GEMMs.</summary>
    public bool LoraUpBackwardKernel { get; set; } = LoraUpBackwardFromEnvironment();

    /// <summary>METALORA_LORA_UPBACK: unset, "" or "0" → off (the two GEMMs); "1" → version 2.</summary>
    public static bool LoraUpBackwardFromEnvironment() => Environment.GetEnvironmentVariable("METALORA_LORA_UPBACK") switch
    {
        null or "" or "0" => false,
        "1" => true,
        var v => throw new InputException("METALORA_LORA_UPBACK", $"METALORA_LORA_UPBACK={v}: expected 0 or 1"),
    };

    /// <summary>Version 2's launches issued (one a call): the parity check reads them.</summary>
    internal long LoraUpBackwardLaunches { get; private set; }

    /// <summary>
    /// The kernel's "last block finishes" counters (LoraUpBackwardPlan.Counters), kept for the backend's life: zeroed
    /// once when allocated, and every launch leaves them zero for the next, which stream order runs after it. A call
    /// needing more replaces it (the old block freed in stream order); the pool frees it with the backend.
    /// </summary>
    CudaTensor? loraUpBackwardCount;

    ulong LoraUpBackwardCounters(int counters)
    {
        if (loraUpBackwardCount is { } c && c.Length >= counters) return c.Ptr;
        loraUpBackwardCount?.Dispose();
        var t = Alloc([LoraUpBackwardPlan.CounterCapacity(counters)], Precision.Master);   // 4-byte cells, used as unsigned ints
        CudaCheck.Cu(CuDriver.cuMemsetD8Async(t.Ptr, 0, (nuint)t.Bytes, Stream));
        loraUpBackwardCount = t;
        return t.Ptr;
    }

    /// <summary>
    /// Version 2 when it takes the call (bf16 dy, a and dmid, fp32 u and dU, r2 ≤ 4, 32-bit indices): false, with
    /// nothing issued, otherwise. Shapes are checked by the caller.
    /// </summary>
    bool LoraUpBackwardOnePass(MatrixSlice dy, Tensor u, MatrixSlice? a, Tensor? dU, MatrixSlice dmid)
    {
        var cdy = T(dy.Tensor, "dy");
        var cu = T(u, "u");
        var cm = T(dmid.Tensor, "dmid");
        CudaTensor? ca = a is { } s ? T(s.Tensor, "a") : null, cdu = dU == null ? null : T(dU, "dU");
        bool withDu = ca != null;
        long n = dy.Rows;
        int rows = dy.Columns, r = cu.Cols;
        if (cdy.Precision != Precision.Compute || cm.Precision != Precision.Compute || cu.Precision != Precision.Master ||
            withDu && (ca!.Precision != Precision.Compute || cdu!.Precision != Precision.Master))
            return false;
        if (!LoraUpBackwardPlan.Takes(n, rows, r, dy.Tensor.Cols, withDu ? a!.Value.Tensor.Cols : 1, dmid.Tensor.Cols)) return false;
        var (tiles, chunks) = LoraUpBackwardPlan.Grid(n, rows);
        var (partU, partM) = LoraUpBackwardPlan.Scratch(n, rows, r, withDu);
        // freed in stream order: the launch's finishing blocks read it before anything reuses the block
        using var scratch = Alloc([checked((int)(partU + partM))], Precision.Master);
        var dyOp = OperandOf(dy, "dy");
        var p = new LoraUpBackwardParams
        {
            Dy = dyOp.Ptr, A = withDu ? OperandOf(a!.Value, "a").Ptr : 0, U = cu.Ptr, DU = withDu ? cdu!.Ptr : 0,
            Dmid = OperandOf(dmid, "dmid").Ptr, PartU = scratch.Ptr, PartM = scratch.Ptr + (ulong)(partU * sizeof(float)),
            Count = LoraUpBackwardCounters(LoraUpBackwardPlan.Counters(n, rows)),
            N = (int)n, Rows = rows, R = r, Ldy = dy.Tensor.Cols, Lda = withDu ? a!.Value.Tensor.Cols : 0, Ldm = dmid.Tensor.Cols,
            Tiles = tiles, Chunks = chunks, Flags = LoraUpBackwardPlan.FlagsOf(dyOp.Ptr, dy.Tensor.Cols, withDu),
        };
        Counted.Gemm("lora_up_backward");
        LoraUpBackwardLaunches++;
        LaunchParams(LoraUpBackwardFile, $"lora_up_backward_r{r}", ((uint)tiles, (uint)chunks, 1), ((uint)LoraUpBackwardPlan.Threads, 1, 1), p);
        return true;
    }
}
