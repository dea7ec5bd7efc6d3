using System.Numerics;

namespace MetaLoraNative.Engine.Backends.Cpu;

/// <summary>
/// A CPU tensor: a window [Offset, Offset + Length) of a managed array. <see cref="Reshape"/> shares the array, so a
/// reshaped view and its source see each other's writes. Dispose is a no-op (the GC owns the array).
/// </summary>
public sealed class CpuTensor<T> : Tensor where T : unmanaged, IFloatingPointIeee754<T>
{
    private readonly CpuBackend<T> _backend;

    internal CpuTensor(CpuBackend<T> backend, T[] data, int offset, int[] shape) : base(shape)
    {
        if (offset < 0 || offset + Length > data.Length)
            throw new ArgumentException($"tensor window [{offset}, {offset + Length}) lies outside its storage of {data.Length}");
        _backend = backend;
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

    public override Tensor Reshape(params int[] shape) =>
        new CpuTensor<T>(_backend, Data, Offset, (int[])Shapes.Resolve(shape, Length).Clone());
}
