using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using MetaLoraNative.Engine.Backends.Cpu;

namespace MetaLoraNative.Engine.Distributed;

/// <summary>
/// The CPU backend's communicator, over loopback TCP: a star around rank 0. Rank 0 listens on MASTER_PORT
/// (127.0.0.1 only) and every other rank connects to it. Each collective is one round per bucket: every rank sends
/// rank 0 its description and contribution, rank 0 checks the descriptions agree, combines, and sends each rank its
/// reply. All-reduce sums in fp64 in rank order 0, 1, …, N−1 and rounds once to the element type, so the result is
/// reproducible and bit-identical on every rank.
///
/// Failure handling: every connection carries a heartbeat each <see cref="CommunicatorOptions.HeartbeatInterval"/>;
/// a reader thread per connection notices a closed connection at once and a watchdog thread a silent one after
/// <see cref="CommunicatorOptions.PeerTimeout"/>. The first failure is kept and sent to the other ranks (rank 0
/// relays), so every rank's next or current call throws a <see cref="DistributedException"/> naming the rank at fault.
/// The same connections serve NcclCommunicator as its rendezvous and liveness channel (<see cref="Failure"/>).
/// </summary>
public sealed class SocketCommunicator : ICommunicator
{
    const int Hub = 0;
    static readonly TimeSpan Poll = TimeSpan.FromMilliseconds(50);
    static readonly TimeSpan HelloTimeout = TimeSpan.FromSeconds(10);

    readonly CommunicatorOptions options;
    readonly Link[] links;   // rank 0: the link to rank r at r−1; every other rank: the one link to rank 0
    readonly Thread[] readers;
    readonly Thread? watchdog;
    readonly CancellationTokenSource stopping = new();
    DistributedException? failure;
    Task notices = Task.CompletedTask;
    long sequence;
    bool disposed;

    SocketCommunicator(int rank, int worldSize, CommunicatorOptions options, Link[] links)
    {
        Rank = rank;
        WorldSize = worldSize;
        this.options = options;
        this.links = links;
        readers = links.Select(l => new Thread(() => ReadLoop(l)) { IsBackground = true, Name = $"comm {rank}<-{l.PeerRank}" }).ToArray();
        foreach (var t in readers) t.Start();
        if (links.Length > 0)
        {
            watchdog = new Thread(Watch) { IsBackground = true, Name = $"comm {rank} watchdog" };
            watchdog.Start();
        }
    }

    public int Rank { get; }
    public int WorldSize { get; }
    public CollectiveStats LastCall { get; private set; }
    public long TotalBytesSent { get; private set; }

    /// <summary>The first failure seen (here or reported by a peer), or null while every rank is healthy.</summary>
    public DistributedException? Failure => Volatile.Read(ref failure);

    /// <summary>
    /// The rendezvous: rank 0 listens and waits for every other rank; the others connect (retrying while rank 0 is not
    /// up yet) and wait until all have joined. Blocks up to <see cref="CommunicatorOptions.ConnectTimeout"/>, then
    /// throws a DistributedException naming the ranks that did not come.
    /// </summary>
    public static SocketCommunicator Connect(DistributedConfig config, CommunicatorOptions? options = null)
    {
        options ??= new CommunicatorOptions();
        options.Validate();
        if (config.WorldSize == 1) return new SocketCommunicator(0, 1, options, []);
        var address = LoopbackAddress(config.MasterAddr);
        var endpoint = new IPEndPoint(address, config.MasterPort);
        long maxBody = options.BucketBytes + CollectiveDescriptor.Bytes;
        var links = config.Rank == Hub ? Host(config, endpoint, options, maxBody) : [Join(config, endpoint, options, maxBody)];
        return new SocketCommunicator(config.Rank, config.WorldSize, options, links);
    }

    static IPAddress LoopbackAddress(string addr) =>
        addr is "127.0.0.1" or "localhost"
            ? IPAddress.Loopback
            : throw new InputException(DistributedConfig.MasterAddrVar, $"{DistributedConfig.MasterAddrVar}={addr}: the socket rendezvous runs on one machine and " +
                                          "listens on 127.0.0.1 only; set it to 127.0.0.1 (ranks on several machines are not supported yet)");

    // ---------------------------------------------------------------- rendezvous

    static Link[] Host(DistributedConfig c, IPEndPoint endpoint, CommunicatorOptions o, long maxBody)
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            listener.Bind(endpoint);
            listener.Listen(c.WorldSize);
        }
        catch (SocketException e)
        {
            throw new DistributedException($"rank 0 cannot listen on {endpoint} ({e.SocketErrorCode}: {e.Message}); " +
                                           $"is another run using {DistributedConfig.MasterPortVar}={endpoint.Port}?", 0, e);
        }
        var joined = new Link?[c.WorldSize];
        long start = Stopwatch.GetTimestamp();
        try
        {
            while (joined.Skip(1).Any(l => l == null))
            {
                TimeSpan left = o.ConnectTimeout - Stopwatch.GetElapsedTime(start);
                if (left <= TimeSpan.Zero || !listener.Poll(Microseconds(left), SelectMode.SelectRead))
                {
                    var missing = Enumerable.Range(1, c.WorldSize - 1).Where(r => joined[r] == null).ToArray();
                    throw new DistributedException($"rendezvous on {endpoint}: rank(s) {string.Join(", ", missing)} of {c.WorldSize} did not " +
                                                   $"connect within {Seconds(o.ConnectTimeout)} s (not started, crashed before connecting, or another MASTER_PORT)",
                                                   missing[0]);
                }
                var socket = listener.Accept();
                var link = Greet(socket, c.WorldSize, joined, maxBody);
                if (link != null) joined[link.PeerRank] = link;
            }
            foreach (var l in joined.Skip(1)) l!.Write(FrameKind.Welcome, Hub, 0, default, default);
            return joined.Skip(1).Select(l => l!).ToArray();
        }
        catch (Exception e)
        {
            var reason = e as DistributedException ?? new DistributedException($"rendezvous on {endpoint} failed: {e.Message}", null, e);
            foreach (var l in joined) { l?.TryWrite(FrameKind.Abort, Hub, SocketWire.Abort(reason)); l?.Close(lost: true); }
            if (reason == e) throw;
            throw reason;
        }
    }

    /// <summary>Reads a new connection's hello: its link, null for a stray client (dropped), or an error for a bad rank.</summary>
    static Link? Greet(Socket socket, int worldSize, Link?[] joined, long maxBody)
    {
        socket.NoDelay = true;
        socket.ReceiveTimeout = (int)HelloTimeout.TotalMilliseconds;
        var link = new Link(socket, -1, maxBody);
        (int Rank, int WorldSize, int Version)? hello;
        try { hello = SocketWire.ReadHello(link.Read()); }
        catch (Exception e) when (e is IOException or SocketException or InvalidDataException) { hello = null; }
        if (hello is not { } h)
        {
            link.Close(lost: true);   // not one of ours (a port scan, a stale client): ignore it
            return null;
        }
        string? problem = h.Version != SocketWire.ProtocolVersion ? $"speaks protocol {h.Version}, rank 0 speaks {SocketWire.ProtocolVersion} (mixed builds?)"
            : h.WorldSize != worldSize ? $"was started with WORLD_SIZE={h.WorldSize}, rank 0 with {worldSize}"
            : h.Rank < 1 || h.Rank >= worldSize ? $"claims rank {h.Rank}, outside 1..{worldSize - 1}"
            : joined[h.Rank] != null ? $"joined twice (RANK={h.Rank} given to two processes?)"
            : null;
        if (problem != null)
        {
            var e = new DistributedException($"rendezvous: a process that {problem}", h.Rank > 0 && h.Rank < worldSize ? h.Rank : null);
            link.TryWrite(FrameKind.Abort, Hub, SocketWire.Abort(e));
            link.Close(lost: true);
            throw new DistributedException($"rendezvous: rank {h.Rank} {problem}", e.FailedRank);
        }
        socket.ReceiveTimeout = 0;
        return new Link(socket, h.Rank, maxBody);
    }

    static Link Join(DistributedConfig c, IPEndPoint endpoint, CommunicatorOptions o, long maxBody)
    {
        long start = Stopwatch.GetTimestamp();
        Socket socket;
        while (true)
        {
            socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            try
            {
                socket.Connect(endpoint);
                break;
            }
            catch (SocketException e) when (e.SocketErrorCode is SocketError.ConnectionRefused or SocketError.TimedOut or SocketError.TryAgain)
            {
                socket.Dispose();
                if (Stopwatch.GetElapsedTime(start) > o.ConnectTimeout)
                    throw new DistributedException($"rank {c.Rank} could not reach rank 0 at {endpoint} within {Seconds(o.ConnectTimeout)} s " +
                                                   $"({e.SocketErrorCode}): rank 0 is not running or listens elsewhere", 0, e);
                Thread.Sleep(100);
            }
        }
        var link = new Link(socket, Hub, maxBody);
        try
        {
            link.Write(FrameKind.Hello, c.Rank, 0, SocketWire.Hello(c.Rank, c.WorldSize), default);
            TimeSpan left = o.ConnectTimeout - Stopwatch.GetElapsedTime(start);
            socket.ReceiveTimeout = Math.Max(1, (int)Math.Min(left.TotalMilliseconds, int.MaxValue));
            var reply = link.Read();
            if (reply.Kind == FrameKind.Abort) throw SocketWire.ReadAbort(reply);
            if (reply.Kind != FrameKind.Welcome)
                throw new DistributedException($"rank {c.Rank}: {endpoint} answered with frame kind {(int)reply.Kind}; it is not a metalora rank 0", 0);
            socket.ReceiveTimeout = 0;
            return link;
        }
        catch (Exception e) when (e is IOException or SocketException or InvalidDataException)
        {
            link.Close(lost: true);
            throw new DistributedException($"rank {c.Rank}: rank 0 at {endpoint} accepted the connection, but the rendezvous did not complete " +
                                           $"within {Seconds(o.ConnectTimeout)} s ({e.Message}); did every rank start?", null, e);
        }
        catch
        {
            link.Close(lost: true);
            throw;
        }
    }

    // ---------------------------------------------------------------- collectives

    public void AllReduce(IReadOnlyList<Tensor> tensors, ReduceOp op)
    {
        var kind = op == ReduceOp.Sum ? CollectiveKind.AllReduceSum : CollectiveKind.AllReduceAverage;
        if (ElementType(tensors, "AllReduce") == typeof(float)) AllReduce(Host<float>(tensors), kind);
        else AllReduce(Host<double>(tensors), kind);
    }

    public void Broadcast(IReadOnlyList<Tensor> tensors, int root = 0)
    {
        CheckRoot(root, "Broadcast");
        if (ElementType(tensors, "Broadcast") == typeof(float)) Broadcast(Host<float>(tensors), root);
        else Broadcast(Host<double>(tensors), root);
    }

    /// <summary>Every rank's <paramref name="data"/> takes rank <paramref name="root"/>'s bytes (same length everywhere): the NCCL unique id.</summary>
    public void Broadcast(byte[] data, int root = 0)
    {
        CheckRoot(root, "Broadcast");
        if (data.Length > options.BucketBytes)
            throw new ArgumentException($"Broadcast: {data.Length} bytes exceed one bucket ({options.BucketBytes}); send tensors instead");
        var d = new CollectiveDescriptor(CollectiveKind.Broadcast, 1, data.Length, root);
        Run(d.Operation, data.Length, () =>
        {
            byte[] reply = Round(d, Rank == root ? data : [], out long sent);
            if (Rank != root) reply.CopyTo(data, 0);
            return (1, sent);
        });
    }

    public void Barrier() =>
        Run("barrier", 0, () =>
        {
            Round(new CollectiveDescriptor(CollectiveKind.Barrier, 0, 0, 0), [], out long sent);
            return (1, sent);
        });

    void AllReduce<T>(CpuTensor<T>[] tensors, CollectiveKind kind) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int size = Unsafe.SizeOf<T>();
        var plan = BucketPlan.Build(tensors, options.BucketBytes / size);
        Run(new CollectiveDescriptor(kind, size, 0, 0).Operation, plan.Sum(b => b.Elements) * size, () =>
        {
            long sent = 0;
            foreach (var bucket in plan)
            {
                byte[] packed = Pack(tensors, bucket);
                byte[] reply = Round(new CollectiveDescriptor(kind, size, bucket.Elements, 0), packed, out long s);
                sent += s;
                Unpack(reply, bucket, tensors);
            }
            return (plan.Count, sent);
        });
    }

    void Broadcast<T>(CpuTensor<T>[] tensors, int root) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int size = Unsafe.SizeOf<T>();
        var plan = BucketPlan.Build(tensors, options.BucketBytes / size);
        Run($"broadcast from rank {root}", plan.Sum(b => b.Elements) * size, () =>
        {
            long sent = 0;
            foreach (var bucket in plan)
            {
                byte[] reply = Round(new CollectiveDescriptor(CollectiveKind.Broadcast, size, bucket.Elements, root),
                                     Rank == root ? Pack(tensors, bucket) : [], out long s);
                sent += s;
                if (Rank != root) Unpack(reply, bucket, tensors);
            }
            return (plan.Count, sent);
        });
    }

    /// <summary>Runs one public call: state checks, then the rounds, then its statistics.</summary>
    void Run(string operation, long payloadBytes, Func<(int Buckets, long Sent)> rounds)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        ThrowIfFailed();
        var (buckets, sent) = rounds();
        LastCall = new CollectiveStats(operation, buckets, payloadBytes, sent);
        TotalBytesSent += sent;
    }

    /// <summary>
    /// One collective round. Every rank but 0 sends its description and contribution up and waits for its reply;
    /// rank 0 gathers them in rank order, checks them against its own, combines, and sends every rank its reply.
    /// </summary>
    byte[] Round(CollectiveDescriptor d, byte[] contribution, out long sent)
    {
        long seq = ++sequence;
        Span<byte> head = stackalloc byte[CollectiveDescriptor.Bytes];
        d.Write(head);
        sent = 0;
        if (Rank != Hub)
        {
            sent += Send(links[0], FrameKind.Up, seq, head, contribution);
            var down = Receive(links[0], seq, d, options.OperationTimeout + options.PeerTimeout);   // rank 0's verdict comes first
            return Payload(down, d, d.DownBytes(Rank), 0);
        }
        var parts = new byte[WorldSize][];
        parts[0] = contribution;
        for (int r = 1; r < WorldSize; r++)
        {
            var up = Receive(links[r - 1], seq, d, options.OperationTimeout);
            parts[r] = Payload(up, d, d.UpBytes(r), r);
        }
        byte[] result = d.Kind switch
        {
            CollectiveKind.AllReduceSum or CollectiveKind.AllReduceAverage when d.ElementBytes == 4 => Reduce<float>(parts, d.Kind),
            CollectiveKind.AllReduceSum or CollectiveKind.AllReduceAverage => Reduce<double>(parts, d.Kind),
            CollectiveKind.Broadcast => parts[d.Root],
            _ => [],
        };
        for (int r = 1; r < WorldSize; r++)
            sent += Send(links[r - 1], FrameKind.Down, seq, head, d.DownBytes(r) == 0 ? [] : result);
        return result;
    }

    /// <summary>Σ over ranks in order 0..N−1 in fp64 (÷N for the average), rounded once to T.</summary>
    static byte[] Reduce<T>(byte[][] parts, CollectiveKind kind) where T : unmanaged, IFloatingPointIeee754<T>
    {
        var acc = new double[parts[0].Length / Unsafe.SizeOf<T>()];
        foreach (var part in parts)
        {
            var x = MemoryMarshal.Cast<byte, T>(part);
            for (int i = 0; i < acc.Length; i++) acc[i] += double.CreateTruncating(x[i]);
        }
        var result = new byte[parts[0].Length];
        var y = MemoryMarshal.Cast<byte, T>(result.AsSpan());
        double n = parts.Length;
        for (int i = 0; i < acc.Length; i++) y[i] = T.CreateTruncating(kind == CollectiveKind.AllReduceAverage ? acc[i] / n : acc[i]);
        return result;
    }

    /// <summary>The payload of a collective frame after checking it belongs to this round: same description, expected size.</summary>
    byte[] Payload(Frame f, CollectiveDescriptor expected, long bytes, int from)
    {
        var theirs = f.Body.Length >= CollectiveDescriptor.Bytes ? CollectiveDescriptor.Read(f.Body) : default;
        if (theirs != expected)
            throw Fail(new DistributedException($"collective #{f.Sequence} differs between ranks: rank {Rank} runs {expected.Describe()}, " +
                                                $"rank {from} runs {theirs.Describe()}; every rank must make the same calls in the same order", from));
        if (f.Body.Length - CollectiveDescriptor.Bytes != bytes)
            throw Fail(new DistributedException($"collective #{f.Sequence} ({expected.Describe()}): rank {f.Sender} sent " +
                                                $"{f.Body.Length - CollectiveDescriptor.Bytes} bytes, {bytes} expected", f.Sender));
        return f.Body.Length == CollectiveDescriptor.Bytes ? [] : f.Body[CollectiveDescriptor.Bytes..];
    }

    long Send(Link link, FrameKind kind, long seq, ReadOnlySpan<byte> head, byte[] payload)
    {
        try { return link.Write(kind, Rank, seq, head, payload); }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
        {
            throw Fail(new DistributedException($"rank {Rank} could not send to rank {link.PeerRank}: {Reason(e)}", link.PeerRank, e));
        }
    }

    /// <summary>The frame of round <paramref name="seq"/> from a link, or a DistributedException; never waits past <paramref name="timeout"/>.</summary>
    Frame Receive(Link link, long seq, CollectiveDescriptor d, TimeSpan timeout)
    {
        long start = Stopwatch.GetTimestamp();
        while (true)
        {
            ThrowIfFailed();
            if (link.Inbox.TryTake(out var f, Poll))
            {
                if (f.Sequence != seq)
                    throw Fail(new DistributedException($"rank {link.PeerRank} sent collective #{f.Sequence} while rank {Rank} waits for #{seq} " +
                                                        $"({d.Describe()}); the ranks' calls are out of step", link.PeerRank));
                return f;
            }
            if (link.State != LinkState.Open && link.Inbox.Count == 0)
                throw Fail(new DistributedException($"rank {link.PeerRank} closed its communicator before collective #{seq} ({d.Describe()}) " +
                                                    $"that rank {Rank} waits for", link.PeerRank));
            if (Stopwatch.GetElapsedTime(start) > timeout)
                throw Fail(new DistributedException($"rank {Rank} waited {Seconds(timeout)} s for rank {link.PeerRank} in collective #{seq} " +
                                                    $"({d.Describe()}); it is alive (heartbeats arrive) but did not reach the call", link.PeerRank));
        }
    }

    // ---------------------------------------------------------------- failure detection

    void ReadLoop(Link link)
    {
        try
        {
            while (true)
            {
                var f = link.Read();
                switch (f.Kind)
                {
                    case FrameKind.Heartbeat:
                        break;
                    case FrameKind.Up or FrameKind.Down:
                        link.Inbox.Add(f);
                        break;
                    case FrameKind.Goodbye:
                        link.MarkLeft();
                        return;
                    case FrameKind.Abort:
                        var told = SocketWire.ReadAbort(f);
                        Fail(new DistributedException($"{told.Message} [reported by rank {link.PeerRank}]", told.FailedRank), link);
                        return;
                    default:
                        throw new InvalidDataException($"unexpected frame kind {f.Kind} after the rendezvous");
                }
            }
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException or InvalidDataException)
        {
            if (stopping.IsCancellationRequested || link.State != LinkState.Open) return;
            Fail(new DistributedException($"rank {Rank} lost rank {link.PeerRank}: the connection closed without a goodbye ({Reason(e)}); " +
                                          "that process exited, crashed or was killed", link.PeerRank, e), link);
            link.Close(lost: true);
        }
    }

    /// <summary>Heartbeats out, silence in: a peer not heard from for PeerTimeout is declared dead and its socket closed.</summary>
    void Watch()
    {
        while (!stopping.Token.WaitHandle.WaitOne(options.HeartbeatInterval))
        {
            if (Failure != null) return;   // peers were told; going silent lets laggards' own watchdogs fire too
            foreach (var link in links)
            {
                if (link.State != LinkState.Open) continue;
                TimeSpan silent = Stopwatch.GetElapsedTime(link.LastHeard);
                if (silent > options.PeerTimeout)
                {
                    Fail(new DistributedException($"rank {Rank} heard nothing from rank {link.PeerRank} for {silent.TotalSeconds:F1} s " +
                                                  $"(peer timeout {Seconds(options.PeerTimeout)} s): it hangs, was stopped, or its machine is overloaded",
                                                  link.PeerRank), link);
                    link.Close(lost: true);   // unblocks a send stuck on its full buffer
                    continue;
                }
                link.TryHeartbeat(Rank);
            }
        }
    }

    /// <summary>
    /// Keeps the first failure and tells every other connected rank (rank 0 relays what it hears), so they fail now
    /// rather than at their timeouts. The notices go out on the thread pool: a write may wait behind a large payload.
    /// Returns the failure to throw: the first one, which names the root cause.
    /// </summary>
    DistributedException Fail(DistributedException e, Link? from = null)
    {
        var first = Interlocked.CompareExchange(ref failure, e, null);
        if (first != null) return first;
        var notify = links.Where(l => l != from && l.State == LinkState.Open).ToArray();
        if (notify.Length > 0)
        {
            byte[] body = SocketWire.Abort(e);
            Volatile.Write(ref notices, Task.Run(() => { foreach (var l in notify) l.TryWrite(FrameKind.Abort, Rank, body); }));
        }
        return e;
    }

    /// <summary>
    /// Marks the run failed for a reason found outside these sockets (an NCCL error, a stuck GPU stream) and tells
    /// every peer, as a failure seen here would. Returns the failure to throw: the first one.
    /// </summary>
    public DistributedException Abort(DistributedException reason) => Fail(reason);

    void ThrowIfFailed()
    {
        if (Failure is { } f) throw new DistributedException(f.Message, f.FailedRank, f);
    }

    // ---------------------------------------------------------------- tensors

    static Type ElementType(IReadOnlyList<Tensor> tensors, string op)
    {
        if (tensors.Count == 0) return typeof(float);
        return tensors[0] switch
        {
            CpuTensor<float> => typeof(float),
            CpuTensor<double> => typeof(double),
            var t => throw new ArgumentException($"{op}: tensor 0 is {t}; the socket communicator moves CPU tensors (cpu-f32, cpu-f64), " +
                                                 "the NCCL communicator CUDA ones"),
        };
    }

    static CpuTensor<T>[] Host<T>(IReadOnlyList<Tensor> tensors) where T : unmanaged, IFloatingPointIeee754<T>
    {
        var result = new CpuTensor<T>[tensors.Count];
        for (int i = 0; i < result.Length; i++)
            result[i] = tensors[i] as CpuTensor<T>
                ?? throw new ArgumentException($"tensor {i} is {tensors[i]} but tensor 0 is {tensors[0]}; one element type per call");
        return result;
    }

    static byte[] Pack<T>(CpuTensor<T>[] tensors, Bucket bucket) where T : unmanaged, IFloatingPointIeee754<T>
    {
        var bytes = new byte[bucket.Elements * Unsafe.SizeOf<T>()];
        var flat = MemoryMarshal.Cast<byte, T>(bytes.AsSpan());
        foreach (var s in bucket.Segments)
            tensors[s.Tensor].Span.Slice((int)s.TensorOffset, (int)s.Count).CopyTo(flat[(int)s.BucketOffset..]);
        return bytes;
    }

    static void Unpack<T>(byte[] bytes, Bucket bucket, CpuTensor<T>[] tensors) where T : unmanaged, IFloatingPointIeee754<T>
    {
        var flat = MemoryMarshal.Cast<byte, T>(bytes.AsSpan());
        foreach (var s in bucket.Segments)
            flat.Slice((int)s.BucketOffset, (int)s.Count).CopyTo(tensors[s.Tensor].Span[(int)s.TensorOffset..]);
    }

    void CheckRoot(int root, string op)
    {
        if (root < 0 || root >= WorldSize) throw new ArgumentException($"{op}: root {root} is not a rank of {WorldSize}");
    }

    static string Seconds(TimeSpan t) => t.TotalSeconds.ToString("0.###", CultureInfo.InvariantCulture);

    static int Microseconds(TimeSpan t) => (int)Math.Clamp(t.TotalMicroseconds, 1, int.MaxValue);

    static string Reason(Exception e) => e switch
    {
        EndOfStreamException => "end of stream",
        IOException { InnerException: SocketException s } => s.SocketErrorCode.ToString(),
        SocketException s => s.SocketErrorCode.ToString(),
        _ => e.Message,
    };

    // ---------------------------------------------------------------- lifetime

    /// <summary>Says goodbye to every peer (unless the run failed: then the peers already know) and closes the sockets.</summary>
    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        stopping.Cancel();
        watchdog?.Join();
        Volatile.Read(ref notices).Wait(options.PeerTimeout);   // the failure notice goes out before the sockets close
        foreach (var link in links)
        {
            if (Failure == null && link.State == LinkState.Open) link.TryWrite(FrameKind.Goodbye, Rank, default);
            link.Close(lost: false);
        }
        foreach (var t in readers) t.Join(TimeSpan.FromSeconds(1));
        stopping.Dispose();
    }
}
