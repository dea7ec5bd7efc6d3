using System.Runtime.InteropServices;
using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Quantization;
using MetaLoraNative.Kernels.Native;

namespace MetaLoraNative.Kernels;

/// <summary>
/// Block swap's transfers on the GPU (the engine's side is <see cref="SwappedBlocks"/>): host copies in page-locked
/// memory (cuMemHostAlloc, so the copy engine reads them without a staging copy and the copies are truly
/// asynchronous), copies into the device slots on a second non-blocking stream, and events between the streams:
/// the copy into a slot waits for the compute event recorded after the slot's last reader (cuStreamWaitEvent on the
/// copy stream), and a block's compute waits for its own copy's end event only (cuStreamWaitEvent on the compute
/// stream), so compute and the next block's copy run side by side.
///
/// Overlap figures come from timing events: each copy's span on the copy stream (start after its wait for the
/// slot, end after its last byte), and the compute stream's span across its wait (an event just before and just
/// after cuStreamWaitEvent: the time the compute stream stood still for that copy, i.e. the exposed part). Finished
/// copies are read back without blocking whenever a new copy starts, so the event pool stays as small as the
/// number of copies in flight.
/// </summary>
internal sealed class CudaBlockTransfer : IBlockTransfer
{
    readonly CudaBackend be;
    readonly CudaStreamHandle copyStream;
    readonly Dictionary<int, CudaEventHandle> computed = [];      // slot → event after its last reader's compute
    readonly List<Copy> copies = [];                              // by handle
    readonly Stack<int> free = [];
    int open = -1;
    int count;
    long bytes;
    double copyMs, exposedMs;
    bool disposed;

    /// <summary>One copy's events: its span on the copy stream and the compute stream's wait for it.</summary>
    sealed class Copy
    {
        public required CudaEventHandle Start, End, WaitStart, WaitEnd;
        public long Bytes;
        public bool Waited;
    }

    public CudaBlockTransfer(CudaBackend backend)
    {
        be = backend;
        be.EnterContext();
        CudaCheck.Cu(CuDriver.cuStreamCreate(out IntPtr s, CuDriver.CU_STREAM_NON_BLOCKING));
        copyStream = new CudaStreamHandle(s);
    }

    IntPtr CopyStream => copyStream.DangerousGetHandle();

    public unsafe IHostWeight Stage(Tensor t)
    {
        var c = be.T(t, "block swap");
        var host = new CudaHostWeight(c.Shape, c.Bytes, quantized: false, cols: 0);
        be.EnterContext();
        if (c.Bytes > 0) CudaCheck.Cu(CuDriver.cuMemcpyDtoHAsync_v2((void*)host.Address, c.Ptr, (nuint)c.Bytes, be.Stream));
        be.Synchronize();
        return host;
    }

    public unsafe IHostWeight Stage(QuantizedWeight w)
    {
        var q = w as CudaQuantizedWeight ?? throw new ArgumentException($"block swap: {w} is not a weight of this CUDA backend");
        var host = new CudaHostWeight(q.Shape, q.Bytes, quantized: true, cols: q.Cols);
        be.EnterContext();
        CudaCheck.Cu(CuDriver.cuMemcpyDtoHAsync_v2((void*)host.Address, q.CodesPtr, (nuint)q.Length, be.Stream));
        CudaCheck.Cu(CuDriver.cuMemcpyDtoHAsync_v2((void*)(host.Address + (nint)q.Length), q.Scale.Ptr, (nuint)(4L * q.Rows), be.Stream));
        be.Synchronize();
        return host;
    }

    public int BeginCopy(int slot)
    {
        be.EnterContext();
        Harvest(blocking: false);
        if (open >= 0) throw new InvalidOperationException("block swap: a copy was begun inside another");
        int id = free.Count > 0 ? free.Pop() : NewCopy();
        var c = copies[id];
        c.Bytes = 0;
        c.Waited = false;
        if (computed.TryGetValue(slot, out var reader)) CudaCheck.Cu(CuDriver.cuStreamWaitEvent(CopyStream, reader.DangerousGetHandle(), 0));
        Record(c.Start, CopyStream);
        open = id;
        return id;
    }

    int NewCopy()
    {
        copies.Add(new Copy { Start = NewEvent(true), End = NewEvent(true), WaitStart = NewEvent(true), WaitEnd = NewEvent(true) });
        return copies.Count - 1;
    }

    static CudaEventHandle NewEvent(bool timing)
    {
        CudaCheck.Cu(CuDriver.cuEventCreate(out IntPtr e, timing ? CuDriver.CU_EVENT_DEFAULT : CuDriver.CU_EVENT_DISABLE_TIMING));
        return new CudaEventHandle(e);
    }

    static void Record(CudaEventHandle e, IntPtr stream) => CudaCheck.Cu(CuDriver.cuEventRecord(e.DangerousGetHandle(), stream));

    public void CopyIn(IHostWeight host, Tensor slot)
    {
        var h = Host(host);
        var c = be.T(slot, "block swap slot");
        Shapes.Require(h.Bytes == c.Bytes && !h.Quantized, $"block swap: a host copy of {h.Bytes} bytes does not fill slot {c}");
        Enqueue(c.Ptr, h.Address, h.Bytes);
    }

    public void CopyIn(IHostWeight host, QuantizedWeight slot)
    {
        var h = Host(host);
        var q = slot as CudaQuantizedWeight ?? throw new ArgumentException($"block swap: slot {slot} is not a weight of this CUDA backend");
        Shapes.Require(h.Bytes == q.Bytes && h.Quantized, $"block swap: a host copy of {h.Bytes} bytes does not fill slot {q}");
        Enqueue(q.CodesPtr, h.Address, q.Length);
        Enqueue(q.Scale.Ptr, h.Address + (nint)q.Length, 4L * q.Rows);
    }

    CudaHostWeight Host(IHostWeight host)
    {
        if (open < 0) throw new InvalidOperationException("block swap: a copy into a slot outside BeginCopy/EndCopy");
        return host as CudaHostWeight ?? throw new ArgumentException("block swap: the host copy was not made by this CUDA backend");
    }

    unsafe void Enqueue(ulong device, IntPtr host, long n)
    {
        if (n == 0) return;
        CudaCheck.Cu(CuDriver.cuMemcpyHtoDAsync_v2(device, (void*)host, (nuint)n, CopyStream));
        copies[open].Bytes += n;
    }

    public void EndCopy(int copy)
    {
        if (copy != open) throw new InvalidOperationException($"block swap: copy {copy} ended while {open} is open");
        Record(copies[copy].End, CopyStream);
        open = -1;
    }

    public void ComputeWaits(int copy)
    {
        be.EnterContext();
        var c = copies[copy];
        Record(c.WaitStart, be.Stream);
        CudaCheck.Cu(CuDriver.cuStreamWaitEvent(be.Stream, c.End.DangerousGetHandle(), 0));
        Record(c.WaitEnd, be.Stream);
        c.Waited = true;
    }

    public void Computed(int slot)
    {
        be.EnterContext();
        if (!computed.TryGetValue(slot, out var e)) computed[slot] = e = NewEvent(false);
        Record(e, be.Stream);
    }

    /// <summary>Adds the figures of every waited-on copy whose events have completed, and frees their events.</summary>
    void Harvest(bool blocking)
    {
        for (int id = 0; id < copies.Count; id++)
        {
            var c = copies[id];
            if (!c.Waited) continue;
            if (blocking) CudaCheck.Cu(CuDriver.cuEventSynchronize(c.WaitEnd.DangerousGetHandle()));
            else
            {
                int rc = CuDriver.cuEventQuery(c.WaitEnd.DangerousGetHandle());
                if (rc == CuDriver.CUDA_ERROR_NOT_READY) continue;
                CudaCheck.Cu(rc);
            }
            CudaCheck.Cu(CuDriver.cuEventElapsedTime(out float copy, c.Start.DangerousGetHandle(), c.End.DangerousGetHandle()));
            CudaCheck.Cu(CuDriver.cuEventElapsedTime(out float exposed, c.WaitStart.DangerousGetHandle(), c.WaitEnd.DangerousGetHandle()));
            count++;
            bytes += c.Bytes;
            copyMs += copy;
            exposedMs += exposed;
            c.Waited = false;
            free.Push(id);
        }
    }

    public SwapOverlap TakeOverlap()
    {
        be.EnterContext();
        CudaCheck.Cu(CuDriver.cuStreamSynchronize(CopyStream));
        be.Synchronize();
        Harvest(blocking: true);
        var r = new SwapOverlap(count, bytes, copyMs, Math.Min(exposedMs, copyMs));
        (count, bytes, copyMs, exposedMs) = (0, 0, 0, 0);
        return r;
    }

    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        try { be.EnterContext(); CuDriver.cuStreamSynchronize(CopyStream); }
        catch (CudaException) { /* a sticky error: release what we can */ }
        foreach (var c in copies) { c.Start.Dispose(); c.End.Dispose(); c.WaitStart.Dispose(); c.WaitEnd.Dispose(); }
        foreach (var e in computed.Values) e.Dispose();
        copyStream.Dispose();
    }
}

/// <summary>
/// One weight in page-locked host memory: bf16 values as the device holds them, or E4M3 codes followed by the fp32 row
/// scales. The buffer is freed (cuMemFreeHost) on Dispose or, failing that, by the finalizer, which never throws.
/// </summary>
internal sealed class CudaHostWeight : SafeHandle, IHostWeight
{
    readonly int cols;

    public CudaHostWeight(int[] shape, long bytes, bool quantized, int cols) : base(IntPtr.Zero, true)
    {
        Shape = shape;
        Bytes = bytes;
        Quantized = quantized;
        this.cols = cols;
        CudaCheck.Cu(CuDriver.cuMemHostAlloc(out IntPtr p, (nuint)Math.Max(bytes, 1), 0));
        SetHandle(p);
    }

    public int[] Shape { get; }
    public long Bytes { get; }
    public bool Quantized { get; }
    public IntPtr Address => IsClosed ? throw new ObjectDisposedException("pinned host copy") : handle;

    public override bool IsInvalid => handle == IntPtr.Zero;

    public unsafe float[] Values()
    {
        if (Quantized)
        {
            long n = Shapes.Numel(Shape);
            var codes = new ReadOnlySpan<byte>((void*)Address, (int)n);
            var scale = new ReadOnlySpan<float>((void*)(Address + (nint)n), Shape[0]);
            return HostFp8.Decode(codes, scale, cols);
        }
        var bits = new ReadOnlySpan<ushort>((void*)Address, (int)(Bytes / 2));
        var values = new float[bits.Length];
        HalfPrecision.BFloat16ToFloats(bits, values);
        return values;
    }

    protected override bool ReleaseHandle()
    {
        try { return CuDriver.cuMemFreeHost(handle) == CuDriver.CUDA_SUCCESS; }
        catch { return false; }
    }
}
