namespace MetaLoraNative.Engine;

/// <summary>
/// A dense, row-major tensor owned by one backend. The last dimension is contiguous.
/// The CPU backend keeps its values in managed arrays; the CUDA backend keeps a device pointer into an arena.
/// Dispose returns the storage to its backend (a no-op on the CPU, a pool return on the GPU).
/// </summary>
public abstract class Tensor : IDisposable
{
    protected Tensor(int[] shape)
    {
        foreach (int d in shape)
            if (d < 0) throw new ArgumentException($"negative dimension in shape {Shapes.Format(shape)}");
        Shape = shape;
        Length = Shapes.Numel(shape);
    }

    /// <summary>Dimensions, outermost first.</summary>
    public int[] Shape { get; }

    /// <summary>Number of elements (product of the shape).</summary>
    public long Length { get; }

    public int Rank => Shape.Length;

    /// <summary>Size of dimension <paramref name="axis"/>; negative axes count from the end.</summary>
    public int Dim(int axis) => Shape[axis < 0 ? Shape.Length + axis : axis];

    /// <summary>Rows when viewed as a matrix (product of every dimension but the last).</summary>
    public long Rows => Shape.Length == 0 ? 1 : Length / Math.Max(1, Shape[^1]);

    /// <summary>Columns when viewed as a matrix (the last dimension).</summary>
    public int Cols => Shape.Length == 0 ? 1 : Shape[^1];

    public abstract IBackend Backend { get; }

    /// <summary>A tensor sharing this one's storage under another shape with the same element count.</summary>
    public abstract Tensor Reshape(params int[] shape);

    /// <summary>
    /// A view of elements [offset, offset + numel(shape)) of this tensor's storage under <paramref name="shape"/>: writes
    /// through either are seen by both, and the storage lives until the last view is disposed. The trainer's flat
    /// buffers (<see cref="Training.FlatParameters"/>) hand every trainable factor out as such a view. Backends that
    /// keep no addressable storage refuse.
    /// </summary>
    public virtual Tensor Slice(long offset, params int[] shape) =>
        throw new NotSupportedException($"{this} has no storage to view (Slice)");

    /// <summary>Throws unless [offset, offset + numel(shape)) lies inside this tensor.</summary>
    protected void CheckSlice(long offset, int[] shape)
    {
        long n = Shapes.Numel(shape);
        if (offset < 0 || offset + n > Length)
            throw new ArgumentException($"slice [{offset}, {offset + n}) of {this} lies outside its {Length} elements");
    }

    public virtual void Dispose() => GC.SuppressFinalize(this);

    public override string ToString() => $"{Backend.Name}{Shapes.Format(Shape)}";
}

public static class Shapes
{
    public static long Numel(ReadOnlySpan<int> shape)
    {
        long n = 1;
        foreach (int d in shape) n = checked(n * d);
        return n;
    }

    public static string Format(ReadOnlySpan<int> shape) => "(" + string.Join(", ", shape.ToArray()) + ")";

    /// <summary>A layout op's axis (negative counts from the end) as an index below <paramref name="rank"/>.</summary>
    public static int Axis(int axis, int rank, string op)
    {
        int a = axis < 0 ? axis + rank : axis;
        if (a < 0 || a >= rank) throw new ArgumentException($"{op}: axis {axis} is out of range for rank {rank}");
        return a;
    }

    /// <summary>A row-major shape seen as (outer, dim, inner) around <paramref name="axis"/>: how every layout op walks it.</summary>
    public static (long Outer, int Dim, long Inner) AroundAxis(int[] shape, int axis)
    {
        long outer = 1, inner = 1;
        for (int i = 0; i < axis; i++) outer *= shape[i];
        for (int i = axis + 1; i < shape.Length; i++) inner *= shape[i];
        return (outer, shape[axis], inner);
    }

    /// <summary>Resolves one -1 in a reshape request against a known element count.</summary>
    public static int[] Resolve(int[] shape, long numel)
    {
        int infer = Array.IndexOf(shape, -1);
        if (infer < 0)
        {
            if (Numel(shape) != numel) throw new ArgumentException($"cannot reshape {numel} elements to {Format(shape)}");
            return shape;
        }
        var s = (int[])shape.Clone();
        s[infer] = 1;
        long rest = Numel(s);
        if (rest == 0 || numel % rest != 0) throw new ArgumentException($"cannot reshape {numel} elements to {Format(shape)}");
        s[infer] = (int)(numel / rest);
        return s;
    }

    public static void Require(bool condition, string message)
    {
        if (!condition) throw new ArgumentException(message);
    }

    public static void SameShape(Tensor a, Tensor b, string what)
    {
        if (!a.Shape.AsSpan().SequenceEqual(b.Shape))
            throw new ArgumentException($"{what}: shapes differ, {Shapes.Format(a.Shape)} vs {Shapes.Format(b.Shape)}");
    }
}
