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

/// <summary>What <see cref="GroupedTableCache{T}.Lookup"/> decided for one call's table.</summary>
internal enum GroupedTableDecision
{
    /// <summary>A table with the same content is on the device: launch on it (also inside a capture).</summary>
    Hit,
    /// <summary>Not cached and the stream is not capturing: upload a fresh copy (<see cref="GroupedTableCache{T}.Add"/>).</summary>
    Upload,
    /// <summary>
    /// Not cached while the stream is capturing a CUDA graph: an upload there would be a host-to-device copy node
    /// reading a managed array the graph does not own, and a pool block the cache may hand back while the graph
    /// still reads it, so a replay would read whatever lies there then. Refused (<see cref="GroupedTableCache{T}.MissWhileCapturing"/>).
    /// </summary>
    RefuseInCapture,
}

/// <summary>
/// The grouped GEMM's device tables by content (the policy alone, no device: GroupedTableCacheTests run it on the
/// CPU). Most recent last. At most <see cref="Capacity"/> tables no graph has read are kept: adding one past that
/// evicts the oldest of those. A table a launch read during a capture is held for the cache's lifetime (a graph's
/// replays read it at its address, and the cache cannot know when the last graph is gone), so it is never evicted.
/// </summary>
internal sealed class GroupedTableCache<T>(int capacity) where T : class
{
    readonly List<(byte[] Key, T Value, bool Held)> entries = [];

    public int Capacity { get; } = capacity;
    public int Count => entries.Count;
    /// <summary>Tables held by a graph (read by a launch during a capture).</summary>
    public int HeldCount => entries.Count(e => e.Held);

    /// <summary>
    /// The decision for one table: a hit returns the cached value (moved to most recent; held from now on when
    /// <paramref name="capturing"/>), a miss <see cref="GroupedTableDecision.Upload"/> outside a capture and
    /// <see cref="GroupedTableDecision.RefuseInCapture"/> inside one.
    /// </summary>
    public GroupedTableDecision Lookup(ReadOnlySpan<byte> key, bool capturing, out T? value)
    {
        for (int i = entries.Count - 1; i >= 0; i--)
        {
            var e = entries[i];
            if (!e.Key.AsSpan().SequenceEqual(key)) continue;
            entries.RemoveAt(i);
            entries.Add(e with { Held = e.Held || capturing });
            value = e.Value;
            return GroupedTableDecision.Hit;
        }
        value = null;
        return capturing ? GroupedTableDecision.RefuseInCapture : GroupedTableDecision.Upload;
    }

    /// <summary>Adds a fresh table (after an <see cref="GroupedTableDecision.Upload"/>); returns the evicted one for the caller to free, or null.</summary>
    public T? Add(byte[] key, T value)
    {
        T? evicted = null;
        if (entries.Count(e => !e.Held) >= Capacity)
        {
            int oldest = entries.FindIndex(e => !e.Held);
            evicted = entries[oldest].Value;
            entries.RemoveAt(oldest);
        }
        entries.Add((key, value, false));
        return evicted;
    }

    /// <summary>Every value, for disposal with the backend.</summary>
    public IReadOnlyList<T> Values => [.. entries.Select(e => e.Value)];

    public void Clear() => entries.Clear();

    /// <summary>The error of <see cref="GroupedTableDecision.RefuseInCapture"/>: the op, the table, and what to do.</summary>
    public static InvalidOperationException MissWhileCapturing(string op, int entries) =>
        new($"{op}: the grouped GEMM's table of {entries} products is not on the device while the stream is capturing a CUDA graph; " +
            "uploading it inside the capture would leave the graph reading a copy it does not own. Run one uncaptured step with the " +
            "same tensors (a warm-up step, as bench --cuda-graph does) before the capture, so that every table is cached; " +
            "or capture without METALORA_LORA_GROUPED=1.");
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
    readonly GroupedTableCache<CudaTensor> groupedTables = new(GroupedTablesKept);

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
        var device = GroupedTable(op, table);
        Counted.Gemm("grouped");
        GroupedLaunches++;
        LaunchParams(GroupedGemmFile, "gemm_grouped", ((uint)tiles, 1, 1), ((uint)GroupedGemmPlan.Threads, 1, 1),
                     new GroupedParams { Table = device.Ptr, Entries = table.Length, Tiles = tiles });
    }

    /// <summary>
    /// The device copy of a table: a cached one with the same content, else a fresh upload (asynchronous, no sync).
    /// A steady step hits the cache; a miss while the stream captures a CUDA graph is refused (GroupedTableDecision).
    /// </summary>
    unsafe CudaTensor GroupedTable(string op, GroupedEntry[] table)
    {
        var bytes = MemoryMarshal.AsBytes(table.AsSpan());
        CudaCheck.Cu(CuGraph.cuStreamIsCapturing(Stream, out int status));
        switch (groupedTables.Lookup(bytes, status != CuGraph.CU_STREAM_CAPTURE_STATUS_NONE, out var cached))
        {
            case GroupedTableDecision.Hit: return cached!;
            case GroupedTableDecision.RefuseInCapture: throw GroupedTableCache<CudaTensor>.MissWhileCapturing(op, table.Length);
        }
        var device = Alloc([bytes.Length / sizeof(float)], Precision.Master);
        fixed (byte* p = bytes) CudaCheck.Cu(CuDriver.cuMemcpyHtoDAsync_v2(device.Ptr, p, (nuint)bytes.Length, Stream));
        GroupedUploads++;
        // freed in stream order: a queued launch reading the evicted table runs before anything reuses its block
        groupedTables.Add(bytes.ToArray(), device)?.Dispose();
        return device;
    }

    void DisposeGroupedTables()
    {
        foreach (var t in groupedTables.Values) t.Dispose();
        groupedTables.Clear();
    }
}
