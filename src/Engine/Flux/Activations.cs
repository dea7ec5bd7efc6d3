namespace MetaLoraNative.Engine.Flux;

/// <summary>
/// What a layer's forward keeps for its backward. Everything kept is registered with <see cref="Keep{T}"/> and freed
/// together once the backward has run (on the GPU this returns the buffers to the pool).
/// </summary>
public abstract class Activations : IDisposable
{
    readonly List<Tensor> kept = [];

    public T Keep<T>(T tensor) where T : Tensor
    {
        kept.Add(tensor);
        return tensor;
    }

    public void Dispose()
    {
        foreach (var t in kept) t.Dispose();
        kept.Clear();
        GC.SuppressFinalize(this);
    }
}

/// <summary>
/// FLUX's modulation: Linear(silu(vec)) split into chunks of width C, in the order shift, scale, gate (×2 in the
/// double blocks). silu(vec) is computed once per forward by the model and shared by every block.
/// </summary>
public sealed class Modulation(Linear lin, int chunks)
{
    public Linear Lin { get; } = lin;
    public int Chunks { get; } = chunks;

    /// <summary>siluVec (B, C) → chunks each (B, C).</summary>
    public Tensor[] Forward(Tensor siluVec, Lora.LoraBinding? lora)
    {
        using var all = Lin.Forward(siluVec, lora);                 // (B, chunks·C)
        int C = all.Dim(-1) / Chunks;
        return Enumerable.Range(0, Chunks).Select(k => all.Backend.Narrow(all, -1, k * C, C)).ToArray();
    }

    /// <summary>Accumulates the LoRA gradients of the modulation linear from the chunk gradients (vec is not trained).</summary>
    public void Backward(Tensor siluVec, Tensor[] dChunks, Lora.LoraBinding? lora)
    {
        if (lora == null) return;
        using var dAll = siluVec.Backend.Concat(-1, dChunks);       // (B, chunks·C)
        Lin.Backward(siluVec, dAll, lora, needInputGrad: false);
    }
}
