namespace MetaLoraNative.Engine.Flux;

/// <summary>
/// What a layer's forward keeps for its backward: one record per layer (a block's record nests its streams' and its
/// attention's), built once at the end of the forward with every field set.
///
/// Ownership, the one rule for every record:
///   - A forward returns its output, which the caller owns, and its record.
///   - The record owns what the forward created for it, and lists exactly that in <see cref="Owned"/> (tensors and
///     nested records). It only refers to what it was given: the layer input (the caller owns it; for the blocks that
///     is the model state) and frozen weights. Each field's comment says "borrowed" where it does not own.
///   - The caller of the forward disposes the record: after the backward, or right after the forward when the
///     activations are recomputed later. A backward reads its record and never frees it.
///   - <see cref="Dispose"/> frees every owned tensor once (on the GPU: back to the pool); a second call does nothing.
/// </summary>
public abstract class Activations : IDisposable
{
    bool disposed;

    /// <summary>Everything this record owns: its own tensors and nested records, never what it borrows (null: none there).</summary>
    protected abstract IEnumerable<IDisposable?> Owned();

    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        foreach (var d in Owned()) d?.Dispose();
        GC.SuppressFinalize(this);
    }
}
