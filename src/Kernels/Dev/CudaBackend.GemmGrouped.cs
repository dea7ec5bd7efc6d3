using System.Runtime.InteropServices;
using MetaLoraNative.Engine;
using MetaLoraNative.Kernels.Native;

namespace MetaLoraNative.Kernels;

/// <summary>One product of a grouped launch as the device sees it: pointers (block starts), shapes, element strides.</summary>
internal readonly record struct GroupedProduct(ulong A, ulong B, ulong C, long M, long N, long K, long Lda, long Ldb, long Ldc,
                                               bool TransA, bool TransB, float Alpha, float Beta);

/// <summary>GroupedEntry of kernels/dev/gemm/02_grouped.cu (64 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct GroupedEntry
{
    public ulong A, B, C;
    public int M, N, K, Lda, Ldb, Ldc, Flags, TileStart;
    public float Alpha, Beta;
}

/// <summary>GroupedParams of kernels/dev/gemm/02_grouped.cu (16 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct GroupedParams
{
    public ulong Table;
    public int Entries, Tiles;
}

/// <summary>
/// The host half of kernels/dev/gemm/02_grouped.cu: which products it takes, each entry's mode and flags, and the
/// tiles (the kernel's contract comment). Pure, so the emulation test (tests/.../Kernels/GroupedGemmEmulationTests)
/// runs the same table through a C# port of the kernel's decode.
/// </summary>
internal static class GroupedGemmPlan
{
    public const int Threads = 256, Warps = Threads / 32, Cols = 4;
    public const int TransA = 1, TransB = 2, VecIn = 4, VecC = 8, Dot = 16;

    /// <summary>Every index the kernel forms fits in an int: each operand's rows × ld, M·N, the items of the general mode.</summary>
    public static bool Fits(in GroupedProduct p)
    {
        long aRows = p.TransA ? p.K : p.M, bRows = p.TransB ? p.N : p.K;
        return p.M > 0 && p.N > 0 && p.K >= 0 &&
               aRows * Math.Max(p.Lda, 1) <= int.MaxValue && bRows * Math.Max(p.Ldb, 1) <= int.MaxValue &&
               p.M * Math.Max(p.Ldc, 1) <= int.MaxValue && p.M * p.N <= int.MaxValue && p.Lda <= int.MaxValue &&
               p.Ldb <= int.MaxValue && p.Ldc <= int.MaxValue;
    }

    /// <summary>Dot mode: op(A) and op(B) both contiguous along K (A as is, B transposed).</summary>
    public static bool IsDot(in GroupedProduct p) => !p.TransA && p.TransB;

    /// <summary>Tiles (blocks) of one entry: ceil(M N / 8) in dot mode, ceil(M ceil(N / 4) / 256) otherwise.</summary>
    public static long TilesOf(in GroupedProduct p) =>
        IsDot(p) ? (p.M * p.N + Warps - 1) / Warps : (p.M * ((p.N + Cols - 1) / Cols) + Threads - 1) / Threads;

    static bool Aligned16(ulong ptr) => ptr % 16 == 0;

    public static int FlagsOf(in GroupedProduct p)
    {
        int f = (p.TransA ? TransA : 0) | (p.TransB ? TransB : 0);
        if (IsDot(p))
        {
            f |= Dot;
            if (Aligned16(p.A) && Aligned16(p.B) && p.Lda % 4 == 0 && p.Ldb % 4 == 0 && p.K % 4 == 0) f |= VecIn;
        }
        else if (!p.TransB && Aligned16(p.B) && p.Ldb % 4 == 0) f |= VecIn;
        if (Aligned16(p.C) && p.Ldc % 4 == 0) f |= VecC;
        return f;
    }

    /// <summary>The device table of products that all <see cref="Fits"/>, and the grid (total tiles).</summary>
    public static (GroupedEntry[] Table, int Tiles) Build(IReadOnlyList<GroupedProduct> products)
    {
        var table = new GroupedEntry[products.Count];
        long tiles = 0;
        for (int i = 0; i < products.Count; i++)
        {
            var p = products[i];
            if (!Fits(p)) throw new ArgumentException($"grouped GEMM entry {i} ({p}) does not fit 32-bit indices");
            table[i] = new GroupedEntry
            {
                A = p.A, B = p.B, C = p.C, M = (int)p.M, N = (int)p.N, K = (int)p.K, Lda = (int)p.Lda, Ldb = (int)p.Ldb, Ldc = (int)p.Ldc,
                Flags = FlagsOf(p), TileStart = checked((int)tiles), Alpha = p.Alpha, Beta = p.Beta,
            };
            tiles += TilesOf(p);
        }
        if (tiles > int.MaxValue) throw new ArgumentException($"grouped GEMM of {tiles} tiles is too large");
        return (table, (int)tiles);
    }

    /// <summary>grouped_find: the last entry whose first tile is at or before <paramref name="tile"/>.</summary>
    public static int Find(ReadOnlySpan<GroupedEntry> table, int tile)
    {
        int lo = 0, hi = table.Length - 1;
        while (lo < hi)
        {
            int mid = (lo + hi + 1) >> 1;
            if (table[mid].TileStart <= tile) lo = mid;
            else hi = mid - 1;
        }
        return lo;
    }
}

// GEMM group version 2 from the kernel playground (kernels/dev/gemm/02_grouped.cu): every fp32 entry of a GemmGroup
// in one launch, selected by METALORA_LORA_GROUPED=1 or GroupedGemm, checked by `metalora check cuda --dev`
// (CudaParity.Dev, GroupedGemmChecks.cs). Version 1 is one routed GEMM per entry (Ops/CudaBackend.Gemm.cs).
public sealed partial class CudaBackend
{
    const string GroupedGemmFile = "dev/gemm/02_grouped.cu";
    const int GroupedTablesKept = 8;

    /// <summary>GemmGroup runs its fp32 entries as one launch of version 2; otherwise (the default) one routed GEMM each.</summary>
    public bool GroupedGemm { get; set; } = Engine.Lora.FusedStage2Cache.GroupedFromEnvironment();

    /// <summary>Tables on the device by content, most recent last: a step's A formation and its dM products alternate.</summary>
    readonly List<(GroupedEntry[] Key, CudaTensor Table)> groupedTables = [];

    /// <summary>Grouped launches issued and table uploads made (a steady step makes none): the parity check reads them.</summary>
    internal long GroupedLaunches { get; private set; }
    internal long GroupedUploads { get; private set; }

    void GemmGroupGrouped(string op, IReadOnlyList<(Operand A, bool TransA, Operand B, bool TransB, Operand C, float Alpha, float Beta)> entries)
    {
        var products = new List<GroupedProduct>(entries.Count);
        foreach (var e in entries)
        {
            var p = new GroupedProduct(e.A.Ptr, e.B.Ptr, e.C.Ptr, e.TransA ? e.A.Cols : e.A.Rows, e.TransB ? e.B.Rows : e.B.Cols,
                                       e.TransA ? e.A.Rows : e.A.Cols, e.A.Ld, e.B.Ld, e.C.Ld, e.TransA, e.TransB, e.Alpha, e.Beta);
            bool f32 = e.A.ElementSize == 4 && e.B.ElementSize == 4 && e.C.ElementSize == 4;
            if (p.M == 0 || p.N == 0) continue;
            if (f32 && GroupedGemmPlan.Fits(p)) products.Add(p);
            else Matmul(op, e.A, e.TransA, e.B, e.TransB, e.C, e.Alpha, e.Beta, null);   // version 1 for what the kernel does not take
        }
        if (products.Count == 0) return;
        var (table, tiles) = GroupedGemmPlan.Build(products);
        if (tiles == 0) return;
        var device = GroupedTable(table);
        Counted.Gemm("grouped");
        GroupedLaunches++;
        LaunchParams(GroupedGemmFile, "gemm_grouped", ((uint)tiles, 1, 1), ((uint)GroupedGemmPlan.Threads, 1, 1),
                     new GroupedParams { Table = device.Ptr, Entries = table.Length, Tiles = tiles });
    }

    /// <summary>The device copy of a table: a cached one with the same content, else a fresh upload (asynchronous, no sync).</summary>
    unsafe CudaTensor GroupedTable(GroupedEntry[] table)
    {
        var bytes = MemoryMarshal.AsBytes(table.AsSpan());
        for (int i = groupedTables.Count - 1; i >= 0; i--)
        {
            var (key, t) = groupedTables[i];
            if (!MemoryMarshal.AsBytes(key.AsSpan()).SequenceEqual(bytes)) continue;
            if (i != groupedTables.Count - 1)
            {
                groupedTables.RemoveAt(i);
                groupedTables.Add((key, t));
            }
            return t;
        }
        if (groupedTables.Count == GroupedTablesKept)
        {
            // freed in stream order: a queued launch reading it runs before anything reuses the block
            groupedTables[0].Table.Dispose();
            groupedTables.RemoveAt(0);
        }
        var device = Alloc([bytes.Length / sizeof(float)], Precision.Master);
        fixed (byte* p = bytes) CudaCheck.Cu(CuDriver.cuMemcpyHtoDAsync_v2(device.Ptr, p, (nuint)bytes.Length, Stream));
        GroupedUploads++;
        groupedTables.Add((table, device));
        return device;
    }

    void DisposeGroupedTables()
    {
        foreach (var (_, t) in groupedTables) t.Dispose();
        groupedTables.Clear();
    }
}
