using System.Diagnostics;
using System.Globalization;
using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Distributed;
using MetaLoraNative.Kernels.Native;

namespace MetaLoraNative.Kernels.Distributed;

/// <summary>
/// The CUDA backend's communicator: NCCL collectives on the backend's device buffers and its one compute stream, so
/// no value goes through the host and the collectives are ordered with the kernels around them.
///
/// - Rendezvous: a <see cref="SocketCommunicator"/> over loopback; rank 0 makes the ncclUniqueId and broadcasts its
///   128 bytes over it. The same connections keep carrying heartbeats, so a dead peer is known within seconds.
/// - Buckets: each call packs its tensors into one fp32 buffer per bucket (fp32 masters by device copy, bf16 tensors
///   converted by memory.cu's convert_kernel), runs one collective per bucket, and unpacks. bf16 tensors therefore
///   sum in fp32 and round once, where NCCL's bf16 reduction would round at every hop.
/// - Calls enqueue and return; an event recorded after each call tells the watchdog when the work finished.
/// - Watchdog: a thread polls ncclCommGetAsyncError, the socket communicator's failure and that event every 100 ms.
///   On an NCCL error, a peer reported dead, or queued collectives unfinished after OperationTimeout it calls
///   ncclCommAbort (the spinning kernels return), tells the peers, and every later call throws the DistributedException.
/// - ncclCommInitRank blocks until all ranks join; it runs on its own thread so a peer that never comes fails the
///   creation after ConnectTimeout instead of hanging it (the abandoned thread dies with the process).
/// Needs NCCL 2.10+ (ncclAvg).
/// </summary>
public sealed class NcclCommunicator : ICommunicator
{
    static readonly TimeSpan WatchPeriod = TimeSpan.FromMilliseconds(100);

    readonly CudaBackend backend;
    readonly SocketCommunicator control;
    readonly CommunicatorOptions options;
    readonly NcclCommHandle comm;
    readonly IntPtr rawComm;
    readonly IntPtr context;
    readonly CudaEventHandle done;
    readonly Thread watchdog;
    readonly CancellationTokenSource stopping = new();
    readonly object gate = new();   // the watchdog's checks and the abort never overlap: no NCCL call on a freed communicator
    DistributedException? failure;
    long pendingSince;   // Stopwatch timestamp of the last call whose work may still run; 0: none
    bool disposed;

    NcclCommunicator(CudaBackend backend, SocketCommunicator control, CommunicatorOptions options)
    {
        this.backend = backend;
        this.control = control;
        this.options = options;
        backend.Synchronize();   // also makes the backend's context current on this thread
        CudaCheck.Cu(CuDriver.cuCtxGetCurrent(out context));

        var id = new byte[ncclUniqueId.Bytes];
        if (control.Rank == 0)
        {
            NcclCheck.Call(Nccl.ncclGetUniqueId(out var unique));
            id = unique.ToArray();
        }
        control.Broadcast(id, root: 0);
        comm = InitRank(ncclUniqueId.FromArray(id));
        rawComm = comm.DangerousGetHandle();

        CudaCheck.Cu(CuDriver.cuEventCreate(out IntPtr ev, CuDriver.CU_EVENT_DISABLE_TIMING));
        done = new CudaEventHandle(ev);
        watchdog = new Thread(Watch) { IsBackground = true, Name = $"nccl {Rank} watchdog" };
        watchdog.Start();
    }

    /// <summary>
    /// Joins the run <paramref name="config"/> describes on <paramref name="backend"/>'s GPU: the socket rendezvous,
    /// then the NCCL communicator. Throws a DllNotFoundException listing every path tried when libnccl is missing,
    /// a DistributedException when a peer does not come.
    /// </summary>
    public static NcclCommunicator Create(CudaBackend backend, DistributedConfig config, CommunicatorOptions? options = null)
    {
        options ??= new CommunicatorOptions();
        options.Validate();
        NativeLibraries.Require(NativeLibraries.Nccl);
        NcclCheck.Call(Nccl.ncclGetVersion(out int version));
        if (!Nccl.IsSupportedVersion(version))
        {
            var (major, minor, patch) = Nccl.DecodeVersion(version);
            throw new NotSupportedException($"NCCL {major}.{minor}.{patch} is too old; multi-GPU training needs NCCL 2.10 or newer (ncclAvg)");
        }
        var control = SocketCommunicator.Connect(config, options);
        try { return new NcclCommunicator(backend, control, options); }
        catch
        {
            control.Dispose();
            throw;
        }
    }

    public int Rank => control.Rank;
    public int WorldSize => control.WorldSize;
    public CollectiveStats LastCall { get; private set; }
    public long TotalBytesSent { get; private set; }

    // ---------------------------------------------------------------- collectives

    public unsafe void AllReduce(IReadOnlyList<Tensor> tensors, ReduceOp op)
    {
        int ncclOp = op == ReduceOp.Sum ? Nccl.ncclSum : Nccl.ncclAvg;
        double share = 2.0 * (WorldSize - 1) / WorldSize;   // ring: reduce-scatter then all-gather
        Run(op == ReduceOp.Sum ? "all-reduce (sum)" : "all-reduce (average)", tensors, pack: true, unpack: true, share,
            (flat, n) => NcclCheck.Call(Nccl.ncclAllReduce((void*)flat, (void*)flat, (nuint)n, Nccl.ncclFloat32, ncclOp, rawComm, backend.Stream)));
    }

    public unsafe void Broadcast(IReadOnlyList<Tensor> tensors, int root = 0)
    {
        if (root < 0 || root >= WorldSize) throw new ArgumentException($"Broadcast: root {root} is not a rank of {WorldSize}");
        Run($"broadcast from rank {root}", tensors, pack: Rank == root, unpack: Rank != root, WorldSize > 1 ? 1 : 0,
            (flat, n) => NcclCheck.Call(Nccl.ncclBroadcast((void*)flat, (void*)flat, (nuint)n, Nccl.ncclFloat32, root, rawComm, backend.Stream)));
    }

    /// <summary>Waits until this rank's queued collectives have finished, then meets the other ranks on the sockets.</summary>
    public void Barrier()
    {
        Begin();
        WaitQueued(throwOnFailure: true);
        control.Barrier();
        LastCall = control.LastCall;
        TotalBytesSent += LastCall.BytesSent;
    }

    /// <summary>One call: pack each bucket into an fp32 buffer, one collective per bucket, unpack; then mark the work pending.</summary>
    void Run(string operation, IReadOnlyList<Tensor> tensors, bool pack, bool unpack, double wireShare, Action<ulong, long> collective)
    {
        Begin();
        var ts = tensors.Select((t, i) => backend.T(t, $"{operation}: tensor {i}")).ToArray();
        var plan = BucketPlan.Build(ts, options.BucketBytes / sizeof(float));
        long payload = plan.Sum(b => b.Elements) * sizeof(float);
        if (plan.Count > 0)
        {
            using var range = backend.Range("nccl " + operation);   // also makes the context current
            using var flat = backend.Alloc([(int)plan.Max(b => b.Elements)], Precision.Master);
            foreach (var bucket in plan)
            {
                ThrowIfFailed();   // an aborted communicator is freed: no call may reach it
                if (pack) Copy(ts, bucket, flat.Ptr, toFlat: true);
                collective(flat.Ptr, bucket.Elements);
                if (unpack) Copy(ts, bucket, flat.Ptr, toFlat: false);
            }
            // The buffer goes back to the pool now: its next user is ordered after these collectives on the stream.
            CudaCheck.Cu(CuDriver.cuEventRecord(done.DangerousGetHandle(), backend.Stream));
            Volatile.Write(ref pendingSince, Stopwatch.GetTimestamp());
        }
        long sent = (long)(payload * wireShare);
        LastCall = new CollectiveStats(operation, plan.Count, payload, sent);
        TotalBytesSent += sent;
    }

    /// <summary>Tensor pieces ↔ the flat fp32 buffer: a device copy for fp32 masters, a converting kernel for bf16.</summary>
    void Copy(CudaTensor[] ts, Bucket bucket, ulong flat, bool toFlat)
    {
        const int F32 = 1;
        foreach (var s in bucket.Segments)
        {
            var t = ts[s.Tensor];
            ulong piece = t.Ptr + (ulong)(s.TensorOffset * t.ElementSize);
            ulong slot = flat + (ulong)(s.BucketOffset * sizeof(float));
            if (t.Precision == Precision.Master)
                CudaCheck.Cu(CuDriver.cuMemcpyDtoDAsync_v2(toFlat ? slot : piece, toFlat ? piece : slot, (nuint)(s.Count * sizeof(float)), backend.Stream));
            else if (toFlat)
                backend.Launch1D("memory.cu", "convert_kernel", s.Count, slot, F32, piece, t.Dt, s.Count);
            else
                backend.Launch1D("memory.cu", "convert_kernel", s.Count, piece, t.Dt, slot, F32, s.Count);
        }
    }

    void Begin()
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        ThrowIfFailed();
    }

    void ThrowIfFailed()
    {
        if (Volatile.Read(ref failure) is { } f) throw new DistributedException(f.Message, f.FailedRank, f);
    }

    // ---------------------------------------------------------------- failure handling

    NcclCommHandle InitRank(ncclUniqueId id)
    {
        IntPtr handle = IntPtr.Zero;
        int rc = Nccl.ncclSuccess;
        Exception? error = null;
        int rank = Rank, world = WorldSize;
        var init = new Thread(() =>
        {
            try
            {
                CudaCheck.Cu(CuDriver.cuCtxSetCurrent(context));   // NCCL takes the device from the current context
                rc = Nccl.ncclCommInitRank(out handle, world, id, rank);
            }
            catch (Exception e) { error = e; }
        }) { IsBackground = true, Name = $"nccl {rank} init" };
        init.Start();
        long start = Stopwatch.GetTimestamp();
        while (!init.Join(WatchPeriod))
        {
            if (control.Failure is { } f)
                throw new DistributedException($"rank {rank}: NCCL setup abandoned: {f.Message}", f.FailedRank, f);
            if (Stopwatch.GetElapsedTime(start) > options.ConnectTimeout)
                throw control.Abort(new DistributedException(
                    $"rank {rank}: ncclCommInitRank did not complete within {options.ConnectTimeout.TotalSeconds:0} s although every rank is " +
                    "alive; a GPU or transport setup hangs (run with NCCL_DEBUG=INFO to see where)", null));
        }
        if (error != null) throw error;
        NcclCheck.Call(rc, $"ncclCommInitRank(&comm, {world}, id, {rank})");
        return new NcclCommHandle(handle);
    }

    void Watch()
    {
        _ = CuDriver.cuCtxSetCurrent(context);   // the backend's context, for the event queries; a failure shows in them
        while (!stopping.Token.WaitHandle.WaitOne(WatchPeriod))
        {
            if (Check() is { } reason)
            {
                Abort(reason);
                return;
            }
        }
    }

    /// <summary>The reason to abort, or null while all is well (or once aborted).</summary>
    DistributedException? Check()
    {
        lock (gate) return Volatile.Read(ref failure) == null ? Inspect() : null;
    }

    DistributedException? Inspect()
    {
        if (Nccl.ncclCommGetAsyncError(rawComm, out int async) == Nccl.ncclSuccess && async is not (Nccl.ncclSuccess or Nccl.ncclInProgress))
            return new DistributedException($"rank {Rank}: NCCL reported {Nccl.ErrorString(async)} (a peer died or a link failed)", null);
        if (control.Failure is { } f) return f;
        long since = Volatile.Read(ref pendingSince);
        if (since == 0) return null;
        int q = CuDriver.cuEventQuery(done.DangerousGetHandle());
        if (q == CuDriver.CUDA_SUCCESS)
        {
            Interlocked.CompareExchange(ref pendingSince, 0, since);   // unless a newer call was queued meanwhile
            return null;
        }
        if (q != CuDriver.CUDA_ERROR_NOT_READY)
            return new DistributedException($"rank {Rank}: the GPU stream failed while collectives were queued: {CuDriver.ErrorString(q)}", null);
        TimeSpan waited = Stopwatch.GetElapsedTime(since);
        return waited > options.OperationTimeout
            ? new DistributedException($"rank {Rank}: collectives queued {waited.TotalSeconds.ToString("0", CultureInfo.InvariantCulture)} s ago " +
                                       "have not finished (operation timeout); a peer stopped taking part", null)
            : null;
    }

    /// <summary>Keeps the first failure, frees the NCCL communicator at once (its kernels return) and tells the peers.</summary>
    void Abort(DistributedException reason)
    {
        lock (gate)
        {
            if (Volatile.Read(ref failure) != null) return;
            // The socket communicator keeps the first failure of the run (perhaps a peer's, reported meanwhile).
            Volatile.Write(ref failure, ReferenceEquals(reason, control.Failure) ? reason : control.Abort(reason));
            comm.Abort();
        }
    }

    /// <summary>Polls the event recorded after the last call; true once the queued work finished, false on failure.</summary>
    bool WaitQueued(bool throwOnFailure)
    {
        while (true)
        {
            if (Volatile.Read(ref failure) != null)
            {
                if (throwOnFailure) ThrowIfFailed();
                return false;
            }
            int q = CuDriver.cuEventQuery(done.DangerousGetHandle());
            if (q == CuDriver.CUDA_SUCCESS) return true;
            if (q != CuDriver.CUDA_ERROR_NOT_READY)
            {
                Abort(new DistributedException($"rank {Rank}: the GPU stream failed: {CuDriver.ErrorString(q)}", null));
                continue;
            }
            if (!watchdog.IsAlive && Check() is { } reason) Abort(reason);   // during Dispose the watchdog has stopped
            Thread.Sleep(1);
        }
    }

    /// <summary>
    /// Healthy: waits for the queued collectives and destroys the communicator. Failed (or failing while it waits):
    /// the communicator was aborted, which never waits for peers. Then closes the sockets.
    /// </summary>
    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        stopping.Cancel();
        watchdog.Join();
        _ = CuDriver.cuCtxSetCurrent(context);   // for the event queries; a failure shows in them
        if (WaitQueued(throwOnFailure: false)) comm.Dispose();
        else comm.Abort();
        done.Dispose();
        control.Dispose();
        stopping.Dispose();
    }
}
