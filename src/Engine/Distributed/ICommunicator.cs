namespace MetaLoraNative.Engine.Distributed;

/// <summary>How <see cref="ICommunicator.AllReduce"/> combines the ranks' values.</summary>
public enum ReduceOp
{
    Sum,
    /// <summary>The sum divided by the world size (data-parallel gradients).</summary>
    Average,
}

/// <summary>What one collective call moved.</summary>
/// <param name="Operation">"all-reduce (sum)", "broadcast from rank 0", "barrier".</param>
/// <param name="Buckets">Collectives the call became: one per flat bucket of at most BucketBytes.</param>
/// <param name="PayloadBytes">Bytes of the tensors the call covered on this rank (as they travel: fp32 on NCCL).</param>
/// <param name="BytesSent">Bytes this rank put on the wire: counted on sockets (headers included, heartbeats not);
/// for NCCL the ring algorithm's share, 2(N−1)/N · payload for an all-reduce, as nccl-tests counts bus bytes.</param>
public readonly record struct CollectiveStats(string Operation, int Buckets, long PayloadBytes, long BytesSent);

/// <summary>
/// The seam data-parallel training is written against: N ranks, each with its own backend and replica of the
/// trainable factors, combining gradients and sharing initial values. Two implementations: SocketCommunicator
/// (CPU backend, loopback TCP, also the rendezvous of the other) and NcclCommunicator (CUDA backend, device buffers).
///
/// Contract:
/// - Every rank calls the same collectives in the same order with tensors of the same lengths. The socket
///   communicator checks each call's description at rank 0 and fails on a mismatch, naming both ranks.
/// - A call packs its tensors into flat buckets of at most <see cref="CommunicatorOptions.BucketBytes"/>, one
///   collective per bucket, so a training step costs a few large transfers, not one per tensor.
/// - Results are bit-identical on every rank.
/// - The socket communicator returns when the collective is complete. The NCCL communicator enqueues on the
///   backend's stream and returns; later ops on that stream see the result, and a failure surfaces at the next call
///   or at <see cref="Barrier"/>.
/// - Failure: a peer that exits, is killed, stops answering or leaves makes every other rank throw a
///   <see cref="DistributedException"/> naming it: at once for a closed connection, within
///   <see cref="CommunicatorOptions.PeerTimeout"/> for a silent one, within <see cref="CommunicatorOptions.OperationTimeout"/>
///   for a live peer that never reaches the call. A failed communicator throws that same failure from every later call.
///   No call waits forever.
/// - One thread at a time per communicator.
/// </summary>
public interface ICommunicator : IDisposable
{
    /// <summary>This process's rank, 0 ≤ Rank &lt; WorldSize.</summary>
    int Rank { get; }
    int WorldSize { get; }

    /// <summary>Every tensor becomes the sum (or average) over ranks of its values, in place.</summary>
    void AllReduce(IReadOnlyList<Tensor> tensors, ReduceOp op);

    /// <summary>Every tensor takes rank <paramref name="root"/>'s values, in place.</summary>
    void Broadcast(IReadOnlyList<Tensor> tensors, int root = 0);

    /// <summary>Returns on every rank once all ranks have called it (and, on a GPU, once queued collectives finished).</summary>
    void Barrier();

    /// <summary>What the latest call moved.</summary>
    CollectiveStats LastCall { get; }

    /// <summary>Bytes sent by collectives since creation (same counting as <see cref="CollectiveStats.BytesSent"/>).</summary>
    long TotalBytesSent { get; }
}

/// <summary>Timeouts and bucket size shared by both communicators.</summary>
public sealed record CommunicatorOptions
{
    /// <summary>How often each connection says "alive" when it has nothing else to send.</summary>
    public TimeSpan HeartbeatInterval { get; init; } = TimeSpan.FromMilliseconds(500);

    /// <summary>A peer silent this long (no frame, no heartbeat) is declared dead: it hangs, is stopped or is gone.</summary>
    public TimeSpan PeerTimeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>
    /// The longest a collective waits for live peers to reach it. Ten minutes, as torch.distributed's default:
    /// ranks drift by a step at most, but the first step also compiles kernels.
    /// </summary>
    public TimeSpan OperationTimeout { get; init; } = TimeSpan.FromMinutes(10);

    /// <summary>How long the rendezvous waits for every rank to connect (workers load models at different speeds).</summary>
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromMinutes(2);

    /// <summary>Largest flat buffer one collective moves. 64 MiB: large enough for full link speed, small enough to stage.</summary>
    public long BucketBytes { get; init; } = 64L << 20;

    /// <summary>Checks the values; an ArgumentException names the bad one.</summary>
    public void Validate()
    {
        if (HeartbeatInterval <= TimeSpan.Zero) throw new ArgumentException($"HeartbeatInterval must be positive, not {HeartbeatInterval}");
        if (PeerTimeout <= HeartbeatInterval)
            throw new ArgumentException($"PeerTimeout ({PeerTimeout}) must exceed HeartbeatInterval ({HeartbeatInterval}), or live peers would be declared dead");
        if (OperationTimeout <= TimeSpan.Zero) throw new ArgumentException($"OperationTimeout must be positive, not {OperationTimeout}");
        if (ConnectTimeout <= TimeSpan.Zero) throw new ArgumentException($"ConnectTimeout must be positive, not {ConnectTimeout}");
        if (BucketBytes < 1024) throw new ArgumentException($"BucketBytes must be at least 1024, not {BucketBytes}");
    }
}
