using MetaLoraNative.Kernels;

namespace MetaLoraNative.Tests.Kernels;

/// <summary>
/// The grouped GEMM's table cache policy (<see cref="GroupedTableCache{T}"/>, what CudaBackend.GemmGroupGrouped
/// runs before each launch): cache hit or miss × stream capturing or not, eviction of the oldest table, and the
/// tables a capture read never evicted.
/// </summary>
public class GroupedTableCacheTests
{
    sealed class Table(string name) { public string Name { get; } = name; }

    static byte[] Key(int i) => BitConverter.GetBytes(i * 7919L);

    [Theory]
    [InlineData(true, false, (int)GroupedTableDecision.Hit)]
    [InlineData(true, true, (int)GroupedTableDecision.Hit)]
    [InlineData(false, false, (int)GroupedTableDecision.Upload)]
    [InlineData(false, true, (int)GroupedTableDecision.RefuseInCapture)]
    public void HitOrMissTimesCapturing(bool cached, bool capturing, int expected)
    {
        var cache = new GroupedTableCache<Table>(8);
        var t = new Table("a");
        if (cached) Assert.Null(cache.Add(Key(1), t));
        Assert.Equal((GroupedTableDecision)expected, cache.Lookup(Key(1), capturing, out var value));
        Assert.Same(cached ? t : null, value);
        Assert.Equal(cached && capturing ? 1 : 0, cache.HeldCount);
    }

    [Fact]
    public void TheKeyIsTheWholeContent()
    {
        var cache = new GroupedTableCache<Table>(8);
        cache.Add([1, 2, 3, 4], new Table("a"));
        Assert.Equal(GroupedTableDecision.Upload, cache.Lookup([1, 2, 3, 5], false, out _));
        Assert.Equal(GroupedTableDecision.RefuseInCapture, cache.Lookup([1, 2, 3], true, out _));
        Assert.Equal(GroupedTableDecision.Hit, cache.Lookup([1, 2, 3, 4], true, out _));
    }

    [Fact]
    public void AFullCacheEvictsTheLeastRecentlyUsed()
    {
        var cache = new GroupedTableCache<Table>(3);
        var t = Enumerable.Range(0, 5).Select(i => new Table($"t{i}")).ToArray();
        for (int i = 0; i < 3; i++) Assert.Null(cache.Add(Key(i), t[i]));
        Assert.Equal(GroupedTableDecision.Hit, cache.Lookup(Key(0), false, out _));   // t0 most recent now
        Assert.Same(t[1], cache.Add(Key(3), t[3]));
        Assert.Same(t[2], cache.Add(Key(4), t[4]));
        Assert.Equal(3, cache.Count);
        Assert.Equal(GroupedTableDecision.Upload, cache.Lookup(Key(1), false, out _));
        Assert.Equal(GroupedTableDecision.Hit, cache.Lookup(Key(0), false, out _));
    }

    [Fact]
    public void TablesACaptureReadAreNeverEvicted()
    {
        var cache = new GroupedTableCache<Table>(2);
        var a = new Table("a");
        var b = new Table("b");
        cache.Add(Key(0), a);
        cache.Add(Key(1), b);
        Assert.Equal(GroupedTableDecision.Hit, cache.Lookup(Key(0), true, out _));   // a graph reads a
        var fresh = Enumerable.Range(2, 5).Select(i => (Key: Key(i), Table: new Table($"t{i}"))).ToArray();
        var evicted = fresh.Select(f => cache.Add(f.Key, f.Table)).ToArray();
        Assert.DoesNotContain(a, evicted);
        Assert.Null(evicted[0]);   // a no longer counts against the capacity: room for one more
        Assert.Same(b, evicted[1]);
        Assert.Equal(GroupedTableDecision.Hit, cache.Lookup(Key(0), false, out var value));
        Assert.Same(a, value);
        Assert.Equal(1, cache.HeldCount);
        Assert.Equal(3, cache.Count);   // two unheld at most, plus the held one
    }

    [Fact]
    public void TheRefusalNamesTheOpAndTheWarmUp()
    {
        var e = GroupedTableCache<Table>.MissWhileCapturing("gemm_group", 494);
        Assert.Contains("gemm_group", e.Message);
        Assert.Contains("494", e.Message);
        Assert.Contains("warm-up step", e.Message);
        Assert.Contains("capturing a CUDA graph", e.Message);
    }
}
