using System.Numerics;

namespace MetaLoraNative.Engine.Backends.Cpu;

/// <summary>
/// A CPU tensor: a window [Offset, Offset + Length) of a managed array. <see cref="Reshape"/> shares the array, so a
/// reshaped view (or a <see cref="Slice"/>) and its source see each other's writes. The array is counted in its backend's memory ledger until
/// the last tensor over it is disposed, as a device block goes back to its pool (the GC owns the array itself).
/// </summary>
public sealed class CpuTensor<T> : Tensor where T : unmanaged, IFloatingPointIeee754<T>
{
    private readonly CpuBackend<T> _backend;
    private readonly CpuStorage _storage;
    private bool _disposed;

    internal CpuTensor(CpuBackend<T> backend, CpuStorage storage, T[] data, int offset, int[] shape) : base(shape)
    {
        if (offset < 0 || offset + Length > data.Length)
            throw new ArgumentException($"tensor window [{offset}, {offset + Length}) lies outside its storage of {data.Length}");
        _backend = backend;
        _storage = storage;
        Data = data;
        Offset = offset;
    }

    /// <summary>The storage, possibly shared with other views.</summary>
    public T[] Data { get; }

    /// <summary>Index of element 0 inside <see cref="Data"/>.</summary>
    public int Offset { get; }

    /// <summary>The tensor's elements, row-major.</summary>
    public Span<T> Span => Data.AsSpan(Offset, (int)Length);

    public override IBackend Backend => _backend;

    public override Tensor Reshape(params int[] shape)
    {
        var view = new CpuTensor<T>(_backend, _storage, Data, Offset, (int[])Shapes.Resolve(shape, Length).Clone());
        _storage.AddRef();
        return view;
    }

    public override Tensor Slice(long offset, params int[] shape)
    {
        CheckSlice(offset, shape);
        var view = new CpuTensor<T>(_backend, _storage, Data, checked(Offset + (int)offset), (int[])shape.Clone());
        _storage.AddRef();
        return view;
    }

    public override void Dispose()
    {
        if (!_disposed)
        {
            _disposed = true;
            _storage.Release();
        }
        base.Dispose();
    }
}
