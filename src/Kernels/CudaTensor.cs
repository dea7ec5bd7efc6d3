using MetaLoraNative.Engine;

namespace MetaLoraNative.Kernels;

/// <summary>
/// A tensor in device memory: bf16 (Precision.Compute) or fp32 (Precision.Master). Reshapes and slices (a window at
/// an element offset, how the trainer's flat buffers hand out the factors) share the storage; the storage goes back
/// to the pool when the last tensor over it is disposed.
/// </summary>
public sealed class CudaTensor : Tensor
{
    readonly CudaBackend backend;
    readonly DeviceStorage storage;
    bool disposed;

    internal CudaTensor(CudaBackend backend, DeviceStorage storage, int[] shape, Precision precision, long offsetBytes = 0) : base(shape)
    {
        this.backend = backend;
        this.storage = storage;
        Precision = precision;
        OffsetBytes = offsetBytes;
    }

    public Precision Precision { get; }

    /// <summary>Device address of element 0.</summary>
    public ulong Ptr => disposed ? throw new ObjectDisposedException(ToString()) : storage.Ptr + (ulong)OffsetBytes;

    /// <summary>Where element 0 lies in its storage (0 unless the tensor is a <see cref="Slice"/>).</summary>
    internal long OffsetBytes { get; }

    /// <summary>The pool block, shared by every reshape and slice over it.</summary>
    internal DeviceStorage Storage => storage;

    public int ElementSize => Precision == Precision.Master ? 4 : 2;
    public long Bytes => Length * ElementSize;

    /// <summary>dtype code the kernels use (common.cuh): 0 bf16, 1 fp32.</summary>
    internal int Dt => Precision == Precision.Master ? 1 : 0;

    public override IBackend Backend => backend;

    public override Tensor Reshape(params int[] shape)
    {
        storage.AddRef();
        return new CudaTensor(backend, storage, Shapes.Resolve(shape, Length), Precision, OffsetBytes);
    }

    public override Tensor Slice(long offset, params int[] shape)
    {
        CheckSlice(offset, shape);
        storage.AddRef();
        return new CudaTensor(backend, storage, (int[])shape.Clone(), Precision, OffsetBytes + offset * ElementSize);
    }

    public override void Dispose()
    {
        if (!disposed)
        {
            disposed = true;
            storage.Release();
        }
        base.Dispose();
    }

    public override string ToString() => $"cuda-{(Precision == Precision.Master ? "f32" : "bf16")}{Shapes.Format(Shape)}";
}

/// <summary>One pool block shared by a tensor and its reshapes.</summary>
internal sealed class DeviceStorage(DevicePool pool, ulong ptr, long classBytes)
{
    int refs = 1;

    public ulong Ptr { get; } = ptr;

    public void AddRef() => Interlocked.Increment(ref refs);

    public void Release()
    {
        if (Interlocked.Decrement(ref refs) == 0) pool.Return(Ptr, classBytes);
    }
}
