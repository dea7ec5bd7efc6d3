using MetaLoraNative.Kernels.Native;

namespace MetaLoraNative.Kernels;

/// <summary>
/// A caching device allocator for one stream. Requests are rounded to a size class (512 B steps up to 1 MiB,
/// 2 MiB steps above); a returned block goes on its class's free list and the next request of that class
/// reuses it. Every kernel runs on the one stream, so a block returned after its last use is enqueued can be
/// handed out at once: stream order guarantees the old work finishes first. When cuMemAlloc runs out of memory,
/// the cached blocks are freed and the allocation is tried once more. Every driver call makes the backend's
/// context current first: a tensor may be freed, and the pool trimmed, from any thread.
/// </summary>
public sealed class DevicePool : IDisposable
{
    const long SmallStep = 512, SmallLimit = 1L << 20, LargeStep = 2L << 20;
    const int CUDA_ERROR_OUT_OF_MEMORY = 2;

    readonly Dictionary<long, Stack<ulong>> free = [];
    readonly HashSet<ulong> all = [];
    readonly object gate = new();
    readonly IntPtr stream;
    readonly CudaContextHandle context;
    bool disposed;

    public DevicePool(IntPtr stream, CudaContextHandle context)
    {
        this.stream = stream;
        this.context = context;
    }

    /// <summary>Bytes handed out and not yet returned (by size class).</summary>
    public long InUseBytes { get; private set; }
    /// <summary>The most bytes ever in use at once.</summary>
    public long PeakBytes { get; private set; }
    /// <summary>Bytes held from the driver (in use plus cached).</summary>
    public long ReservedBytes { get; private set; }
    /// <summary>A hard cap on <see cref="InUseBytes"/> (--vram; 0: none): a request past it throws MemoryCapExceededException.</summary>
    public long CapBytes { get; set; }

    public static long SizeClass(long bytes)
    {
        bytes = Math.Max(bytes, 1);
        long step = bytes <= SmallLimit ? SmallStep : LargeStep;
        return (bytes + step - 1) / step * step;
    }

    /// <summary>A device block of at least <paramref name="bytes"/>; give back <paramref name="classBytes"/> with it.</summary>
    public ulong Rent(long bytes, out long classBytes)
    {
        classBytes = SizeClass(bytes);
        lock (gate)
        {
            ObjectDisposedException.ThrowIf(disposed, this);
            if (CapBytes > 0 && InUseBytes + classBytes > CapBytes)
                throw new Engine.Planning.MemoryCapExceededException("cuda", CapBytes, classBytes, InUseBytes);
            ulong ptr;
            if (free.TryGetValue(classBytes, out var list) && list.Count > 0) ptr = list.Pop();
            else
            {
                context.MakeCurrent();
                int rc = CuDriver.cuMemAlloc_v2(out ptr, (nuint)classBytes);
                if (rc == CUDA_ERROR_OUT_OF_MEMORY)
                {
                    ReleaseCached();
                    rc = CuDriver.cuMemAlloc_v2(out ptr, (nuint)classBytes);
                }
                if (rc != CuDriver.CUDA_SUCCESS)
                    throw new CudaException("CUDA driver", rc, CuDriver.ErrorString(rc),
                        $"cuMemAlloc_v2({classBytes:N0} bytes; in use {InUseBytes:N0}, reserved {ReservedBytes:N0})");
                all.Add(ptr);
                ReservedBytes += classBytes;
            }
            InUseBytes += classBytes;
            PeakBytes = Math.Max(PeakBytes, InUseBytes);
            return ptr;
        }
    }

    public void Return(ulong ptr, long classBytes)
    {
        lock (gate)
        {
            if (disposed) return;
            InUseBytes -= classBytes;
            if (!free.TryGetValue(classBytes, out var list)) free[classBytes] = list = new Stack<ulong>();
            list.Push(ptr);
        }
    }

    /// <summary>Gives every cached (free) block back to the driver.</summary>
    public void ReleaseCached()
    {
        lock (gate)
        {
            context.MakeCurrent();
            CudaCheck.Cu(CuDriver.cuStreamSynchronize(stream));
            foreach (var (size, list) in free)
            {
                while (list.Count > 0)
                {
                    ulong p = list.Pop();
                    all.Remove(p);
                    ReservedBytes -= size;
                    CudaCheck.Cu(CuDriver.cuMemFree_v2(p));
                }
            }
        }
    }

    public void Dispose()
    {
        lock (gate)
        {
            if (disposed) return;
            disposed = true;
            try { context.MakeCurrent(); }
            catch (CudaException) { /* a sticky error: free what we can */ }
            CuDriver.cuStreamSynchronize(stream);
            foreach (ulong p in all) CuDriver.cuMemFree_v2(p);   // outstanding tensors die with the backend
            all.Clear();
            free.Clear();
            InUseBytes = ReservedBytes = 0;
        }
    }
}
