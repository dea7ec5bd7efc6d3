namespace MetaLoraNative.Engine.Distributed;

/// <summary>One piece of a tensor inside a flat bucket: elements [TensorOffset, +Count) of tensor Tensor sit at BucketOffset.</summary>
public readonly record struct BucketSegment(int Tensor, long TensorOffset, long BucketOffset, long Count);

/// <summary>One flat buffer of a collective call: its length and the tensor pieces packed into it, in order.</summary>
public sealed record Bucket(long Elements, IReadOnlyList<BucketSegment> Segments);

/// <summary>
/// How a list of tensors is packed into flat buckets for few, large collectives (both communicators use it). Tensors
/// are laid end to end in list order; a bucket closes when it holds <c>maxElements</c>, so a tensor larger than a
/// bucket is split across consecutive ones. Every rank builds the same plan from the same lengths.
/// </summary>
public static class BucketPlan
{
    /// <summary>Buckets covering <paramref name="lengths"/> (element counts), each at most <paramref name="maxElements"/> long.</summary>
    public static IReadOnlyList<Bucket> Build(IReadOnlyList<long> lengths, long maxElements)
    {
        if (maxElements < 1) throw new ArgumentException($"a bucket must hold at least one element, not {maxElements}");
        var buckets = new List<Bucket>();
        var segments = new List<BucketSegment>();
        long filled = 0;
        for (int t = 0; t < lengths.Count; t++)
        {
            if (lengths[t] < 0) throw new ArgumentException($"tensor {t} has a negative length {lengths[t]}");
            long done = 0;
            while (done < lengths[t])
            {
                long n = Math.Min(lengths[t] - done, maxElements - filled);
                segments.Add(new BucketSegment(t, done, filled, n));
                done += n;
                filled += n;
                if (filled == maxElements) Close();
            }
        }
        if (filled > 0) Close();
        return buckets;

        void Close()
        {
            buckets.Add(new Bucket(filled, segments.ToArray()));
            segments.Clear();
            filled = 0;
        }
    }

    /// <summary>The plan for tensors, by their element counts.</summary>
    public static IReadOnlyList<Bucket> Build(IReadOnlyList<Tensor> tensors, long maxElements) =>
        Build(tensors.Select(t => t.Length).ToArray(), maxElements);
}
