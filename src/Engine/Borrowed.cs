namespace MetaLoraNative.Engine;

/// <summary>
/// A tensor an op reads: either the caller's own (borrowed: left alone) or a temporary made for the op (owned:
/// freed with this), e.g. the bf16 copy of an fp32 input. <c>using var bx = Bf16(x);</c> then <c>bx.Ptr</c>.
/// </summary>
public readonly struct Borrowed<T>(T tensor, bool owned) : IDisposable where T : Tensor
{
    public T Tensor { get; } = tensor;

    /// <summary>The caller's tensor itself; Dispose leaves it alone.</summary>
    public static Borrowed<T> Of(T tensor) => new(tensor, false);

    /// <summary>A temporary that Dispose frees.</summary>
    public static Borrowed<T> Owned(T tensor) => new(tensor, true);

    public void Dispose()
    {
        if (owned) Tensor.Dispose();
    }
}
