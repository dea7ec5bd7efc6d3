using MetaLoraNative.Engine.Lora;

namespace MetaLoraNative.Engine.Training;

/// <summary>
/// Every factor a run trains in four flat fp32 allocations, llm.c style: values, gradients, AdamW's m and v, each
/// (N) Master, and every <see cref="LoraParameter"/> a view (offset, shape) into them (<see cref="Tensor.Slice"/>).
/// Zeroing the gradients is one fill; the gradient norm and AdamW over a step's trained factors see consecutive
/// views with one step count as one range (IBackend.ClipScale, the multi-tensor IBackend.AdamW), so a GPU runs each
/// as one launch. Layout: the factors in the order given (the training state's: D, then each identity's M and U),
/// each starting at a multiple of <see cref="Alignment"/> elements (256 bytes, where a pool block starts, so the GEMM
/// routing sees the factors as before); the padding stays zero in all four buffers, and AdamW keeps it zero.
/// </summary>
public sealed class FlatParameters : IDisposable
{
    /// <summary>Elements each view's offset is a multiple of (64 fp32 = 256 bytes).</summary>
    public const int Alignment = 64;

    FlatParameters(Tensor values, Tensor grads, Tensor m, Tensor v, IReadOnlyList<LoraParameter> parameters)
    {
        Values = values;
        Grads = grads;
        M = m;
        V = v;
        Parameters = parameters;
    }

    /// <summary>The flat buffers, (N) Master each.</summary>
    public Tensor Values { get; }
    public Tensor Grads { get; }
    public Tensor M { get; }
    public Tensor V { get; }
    /// <summary>The factors living in the buffers, in layout order.</summary>
    public IReadOnlyList<LoraParameter> Parameters { get; }

    /// <summary>Moves <paramref name="parameters"/> into new flat buffers (values and any moments are copied; gradients start at zero).</summary>
    public static FlatParameters Create(IBackend be, IReadOnlyList<LoraParameter> parameters)
    {
        var offsets = new long[parameters.Count];
        long n = 0;
        for (int i = 0; i < parameters.Count; i++)
        {
            offsets[i] = n;
            n += (parameters[i].Value.Length + Alignment - 1) / Alignment * Alignment;
        }
        int[] shape = [checked((int)Math.Max(n, 1))];
        var flat = new FlatParameters(be.Zeros(shape, Precision.Master), be.Zeros(shape, Precision.Master),
                                      be.Zeros(shape, Precision.Master), be.Zeros(shape, Precision.Master), parameters);
        for (int i = 0; i < parameters.Count; i++)
        {
            var p = parameters[i];
            p.MoveTo(flat.Values.Slice(offsets[i], p.Shape), flat.Grads.Slice(offsets[i], p.Shape),
                     flat.M.Slice(offsets[i], p.Shape), flat.V.Slice(offsets[i], p.Shape));
        }
        return flat;
    }

    /// <summary>Every gradient = 0: one fill over the flat buffer.</summary>
    public void ZeroGrad() => Grads.Backend.Fill(Grads, 0f);

    public void Dispose()
    {
        Values.Dispose();
        Grads.Dispose();
        M.Dispose();
        V.Dispose();
    }
}
