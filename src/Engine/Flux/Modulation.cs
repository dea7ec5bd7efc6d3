using MetaLoraNative.Engine.Lora;

namespace MetaLoraNative.Engine.Flux;

/// <summary>
/// BFL's ModulationOut: one set of adaLN parameters, each (B, C). A block half computes
/// x + gate · f((1 + scale) · LayerNorm(x) + shift). The same record carries their gradients in the backward.
/// </summary>
public sealed record ModulationOut(Tensor Shift, Tensor Scale, Tensor Gate) : IDisposable
{
    public void Dispose()
    {
        Shift.Dispose();
        Scale.Dispose();
        Gate.Dispose();
    }
}

/// <summary>
/// BFL's Modulation: Linear(silu(vec)) (B, sets·3·C) cut into sets of (shift, scale, gate), in that order. A double
/// block's stream takes two sets (BFL's mod1 for the attention half, mod2 for the MLP half), a single block one.
/// silu(vec) is computed once per forward by the model and shared by every block. vec is not trained, so the backward
/// only accumulates the LoRA gradients of the linear (a LoRA target: norm1.linear, norm.linear ...).
/// </summary>
public sealed class Modulation(Linear lin)
{
    public Linear Lin { get; } = lin;

    /// <summary>siluVec (B, C) → one set (a single block).</summary>
    public ModulationOut Forward(Tensor siluVec, LoraBinding? lora) => Sets(siluVec, lora, 1)[0];

    /// <summary>siluVec (B, C) → the attention half's set and the MLP half's (a double block's stream).</summary>
    public (ModulationOut Attn, ModulationOut Mlp) ForwardDouble(Tensor siluVec, LoraBinding? lora)
    {
        var sets = Sets(siluVec, lora, 2);
        return (sets[0], sets[1]);
    }

    /// <summary>Mirrors <see cref="Forward"/>: accumulates the linear's LoRA gradients from the set's gradients.</summary>
    public void Backward(Tensor siluVec, ModulationOut d, LoraBinding? lora) => Accumulate(siluVec, lora, d);

    /// <summary>Mirrors <see cref="ForwardDouble"/>.</summary>
    public void Backward(Tensor siluVec, ModulationOut dAttn, ModulationOut dMlp, LoraBinding? lora) =>
        Accumulate(siluVec, lora, dAttn, dMlp);

    ModulationOut[] Sets(Tensor siluVec, LoraBinding? lora, int count)
    {
        var be = siluVec.Backend;
        int C = siluVec.Dim(-1);
        using var all = Lin.Forward(siluVec, lora);                             // (B, count·3·C)
        if (all.Dim(-1) != count * 3 * C)
            throw new ArgumentException($"{Lin.Name}: gives {all.Dim(-1)} values per sample, expected {count} × 3 × {C} (shift, scale, gate)");
        Tensor Chunk(int k) => be.Narrow(all, -1, k * C, C);
        return Enumerable.Range(0, count).Select(s => new ModulationOut(Chunk(3 * s), Chunk(3 * s + 1), Chunk(3 * s + 2))).ToArray();
    }

    void Accumulate(Tensor siluVec, LoraBinding? lora, params ModulationOut[] d)
    {
        if (lora == null) return;
        using var dAll = siluVec.Backend.Concat(-1, d.SelectMany(m => new[] { m.Shift, m.Scale, m.Gate }).ToArray());
        Lin.AccumulateLoraGradients(siluVec, dAll, lora);
    }
}
