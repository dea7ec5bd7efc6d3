using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using System.Text;

namespace MetaLoraNative.Engine.Distributed;

// The socket communicator's wire format. Every message is a frame: a 24-byte header
//   kind (u8), 3 zero bytes, sender rank (i32), sequence (i64), body length (i64)      (little-endian)
// then the body. Collective frames (Up: a rank's contribution to rank 0; Down: rank 0's reply) open their body with a
// 24-byte descriptor — kind (i32), element bytes (i32), element count (i64), root (i32), zero (i32) — so rank 0 can
// check that every rank runs the same call; the payload follows. Hello carries magic, protocol version, rank and
// world size; Abort carries the failed rank (−1: none) and a UTF-8 message.

internal enum FrameKind : byte
{
    Hello = 1,
    Welcome = 2,
    Heartbeat = 3,
    Up = 4,
    Down = 5,
    Abort = 6,
    Goodbye = 7,
}

internal enum CollectiveKind
{
    AllReduceSum = 1,
    AllReduceAverage = 2,
    Broadcast = 3,
    Barrier = 4,
}

/// <summary>What a collective round moves: every rank sends rank 0 its description, which must match rank 0's own.</summary>
internal readonly record struct CollectiveDescriptor(CollectiveKind Kind, int ElementBytes, long Count, int Root)
{
    public const int Bytes = 24;

    public long PayloadBytes => Count * ElementBytes;

    /// <summary>Bytes rank <paramref name="rank"/> sends up: the broadcast's source alone carries data.</summary>
    public long UpBytes(int rank) => Kind switch
    {
        CollectiveKind.AllReduceSum or CollectiveKind.AllReduceAverage => PayloadBytes,
        CollectiveKind.Broadcast => rank == Root ? PayloadBytes : 0,
        _ => 0,
    };

    /// <summary>Bytes rank 0 sends down to <paramref name="rank"/>: everyone but the broadcast's source gets the data.</summary>
    public long DownBytes(int rank) => Kind switch
    {
        CollectiveKind.AllReduceSum or CollectiveKind.AllReduceAverage => PayloadBytes,
        CollectiveKind.Broadcast => rank == Root ? 0 : PayloadBytes,
        _ => 0,
    };

    public string Operation => Kind switch
    {
        CollectiveKind.AllReduceSum => "all-reduce (sum)",
        CollectiveKind.AllReduceAverage => "all-reduce (average)",
        CollectiveKind.Broadcast => $"broadcast from rank {Root}",
        _ => "barrier",
    };

    public string Describe()
    {
        if (Kind == CollectiveKind.Barrier) return Operation;
        string unit = ElementBytes switch { 1 => "bytes", 4 => "fp32 values", 8 => "fp64 values", _ => $"{ElementBytes}-byte values" };
        return $"{Operation} of {Count.ToString("N0", CultureInfo.InvariantCulture)} {unit}";
    }

    public void Write(Span<byte> s)
    {
        BinaryPrimitives.WriteInt32LittleEndian(s, (int)Kind);
        BinaryPrimitives.WriteInt32LittleEndian(s[4..], ElementBytes);
        BinaryPrimitives.WriteInt64LittleEndian(s[8..], Count);
        BinaryPrimitives.WriteInt32LittleEndian(s[16..], Root);
        BinaryPrimitives.WriteInt32LittleEndian(s[20..], 0);
    }

    public static CollectiveDescriptor Read(ReadOnlySpan<byte> s) =>
        new((CollectiveKind)BinaryPrimitives.ReadInt32LittleEndian(s), BinaryPrimitives.ReadInt32LittleEndian(s[4..]),
            BinaryPrimitives.ReadInt64LittleEndian(s[8..]), BinaryPrimitives.ReadInt32LittleEndian(s[16..]));
}

internal sealed record Frame(FrameKind Kind, int Sender, long Sequence, byte[] Body);

internal static class SocketWire
{
    public const int HeaderBytes = 24;
    public const uint Magic = 0x4E524C4D;   // "MLRN"
    public const int ProtocolVersion = 1;

    public static byte[] Hello(int rank, int worldSize)
    {
        var b = new byte[16];
        BinaryPrimitives.WriteUInt32LittleEndian(b, Magic);
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(4), ProtocolVersion);
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(8), rank);
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(12), worldSize);
        return b;
    }

    /// <summary>(rank, world size, protocol version), or null when the body is not a metalora hello.</summary>
    public static (int Rank, int WorldSize, int Version)? ReadHello(Frame f)
    {
        if (f.Kind != FrameKind.Hello || f.Body.Length != 16 || BinaryPrimitives.ReadUInt32LittleEndian(f.Body) != Magic) return null;
        return (BinaryPrimitives.ReadInt32LittleEndian(f.Body.AsSpan(8)), BinaryPrimitives.ReadInt32LittleEndian(f.Body.AsSpan(12)),
                BinaryPrimitives.ReadInt32LittleEndian(f.Body.AsSpan(4)));
    }

    public static byte[] Abort(DistributedException e)
    {
        byte[] text = Encoding.UTF8.GetBytes(e.Message);
        var b = new byte[4 + text.Length];
        BinaryPrimitives.WriteInt32LittleEndian(b, e.FailedRank ?? -1);
        text.CopyTo(b, 4);
        return b;
    }

    public static DistributedException ReadAbort(Frame f)
    {
        int failed = f.Body.Length >= 4 ? BinaryPrimitives.ReadInt32LittleEndian(f.Body) : -1;
        string text = f.Body.Length > 4 ? Encoding.UTF8.GetString(f.Body, 4, f.Body.Length - 4) : $"rank {f.Sender} aborted";
        return new DistributedException(text, failed < 0 ? null : failed);
    }
}

internal enum LinkState
{
    Open,
    /// <summary>The peer said goodbye (closed its communicator normally).</summary>
    Left,
    /// <summary>The connection failed or was closed after a failure.</summary>
    Lost,
}

/// <summary>
/// One TCP connection to a peer. Writes are serialised by a lock (the collective thread, the heartbeat thread and
/// failure notices share the socket); one reader thread reads frames and files collective frames in <see cref="Inbox"/>.
/// </summary>
internal sealed class Link(Socket socket, int peerRank, long maxBody)
{
    const int ChunkBytes = 1 << 20;
    readonly NetworkStream stream = new(socket, ownsSocket: false);
    readonly object writeGate = new();
    long lastHeard = Stopwatch.GetTimestamp();
    volatile LinkState state = LinkState.Open;

    public int PeerRank { get; } = peerRank;
    public Socket Socket { get; } = socket;
    public BlockingCollection<Frame> Inbox { get; } = new();
    public LinkState State => state;

    /// <summary>Stopwatch timestamp of the last bytes received.</summary>
    public long LastHeard => Volatile.Read(ref lastHeard);

    public void MarkLeft() => state = LinkState.Left;

    /// <summary>Writes one frame; returns the bytes it put on the wire.</summary>
    public long Write(FrameKind kind, int sender, long sequence, ReadOnlySpan<byte> head, ReadOnlySpan<byte> payload)
    {
        Span<byte> header = stackalloc byte[SocketWire.HeaderBytes];
        Header(header, kind, sender, sequence, head.Length + payload.Length);
        lock (writeGate)
        {
            stream.Write(header);
            if (head.Length > 0) stream.Write(head);
            if (payload.Length > 0) stream.Write(payload);
        }
        return SocketWire.HeaderBytes + head.Length + payload.Length;
    }

    /// <summary>
    /// A heartbeat, or nothing when a large frame is being written right now (its bytes are the sign of life) or the
    /// socket is gone. Never blocks behind another writer.
    /// </summary>
    public void TryHeartbeat(int sender)
    {
        if (!Monitor.TryEnter(writeGate)) return;
        try
        {
            Span<byte> header = stackalloc byte[SocketWire.HeaderBytes];
            Header(header, FrameKind.Heartbeat, sender, 0, 0);
            stream.Write(header);
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
        {
            // the reader thread reports the broken connection
        }
        finally
        {
            Monitor.Exit(writeGate);
        }
    }

    /// <summary>Best-effort notice (abort, goodbye): failures are ignored, the connection is going away anyway.</summary>
    public void TryWrite(FrameKind kind, int sender, ReadOnlySpan<byte> body)
    {
        try { Write(kind, sender, 0, body, default); }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException) { }
    }

    /// <summary>Reads one frame (blocking). Throws EndOfStreamException when the peer closed the connection.</summary>
    public Frame Read()
    {
        Span<byte> header = stackalloc byte[SocketWire.HeaderBytes];
        stream.ReadExactly(header);
        Heard();
        var kind = (FrameKind)header[0];
        int sender = BinaryPrimitives.ReadInt32LittleEndian(header[4..]);
        long sequence = BinaryPrimitives.ReadInt64LittleEndian(header[8..]);
        long length = BinaryPrimitives.ReadInt64LittleEndian(header[16..]);
        if (length < 0 || length > maxBody || kind is < FrameKind.Hello or > FrameKind.Goodbye)
            throw new InvalidDataException($"a frame of kind {(int)kind} and {length} bytes (limit {maxBody}): not a metalora peer of this version");
        var body = length == 0 ? [] : new byte[length];
        for (int at = 0; at < body.Length; at += ChunkBytes)
        {
            stream.ReadExactly(body, at, Math.Min(ChunkBytes, body.Length - at));
            Heard();   // a long payload is a sign of life while it arrives
        }
        return new Frame(kind, sender, sequence, body);
    }

    /// <summary>Closes the socket (unblocking a reader or writer stuck on it); a failed link is marked lost.</summary>
    public void Close(bool lost)
    {
        if (lost && state == LinkState.Open) state = LinkState.Lost;
        try { Socket.Shutdown(SocketShutdown.Both); }
        catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
        Socket.Dispose();
    }

    void Heard() => Volatile.Write(ref lastHeard, Stopwatch.GetTimestamp());

    static void Header(Span<byte> h, FrameKind kind, int sender, long sequence, long length)
    {
        h.Clear();
        h[0] = (byte)kind;
        BinaryPrimitives.WriteInt32LittleEndian(h[4..], sender);
        BinaryPrimitives.WriteInt64LittleEndian(h[8..], sequence);
        BinaryPrimitives.WriteInt64LittleEndian(h[16..], length);
    }
}
