namespace MetaLoraNative.Engine.Lora;

/// <summary>
/// One trainable LoRA factor: its fp32 master value, gradient and AdamW moments, all Master precision.
/// The gradient accumulates with += (layers call Gemm with beta = 1); the trainer zeroes it each step.
/// </summary>
public sealed class LoraParameter : IDisposable
{
    public LoraParameter(string name, Tensor value)
    {
        Name = name;
        Value = value;
        Grad = value.Backend.Zeros(value.Shape, Precision.Master);
    }

    /// <summary>Key in LoRA and training-state files, e.g. transformer.transformer_blocks.0.attn.to_q.lora_down.weight.</summary>
    public string Name { get; }
    public Tensor Value { get; }
    public Tensor Grad { get; }
    public Tensor? Moment1 { get; private set; }
    public Tensor? Moment2 { get; private set; }
    /// <summary>AdamW steps taken by this tensor (its own count: identities in Stage 1 are visited unevenly).</summary>
    public int Step { get; set; }
    /// <summary>
    /// Changes whenever Value does: an AdamW step advances Step, any other write (a load, a finite-difference probe)
    /// calls <see cref="MarkWritten"/>. Products cached from Value (the fused Stage-2 A = M·D) rebuild when it moves.
    /// </summary>
    public (int Step, int Writes) Version => (Step, writes);
    public void MarkWritten() => writes++;
    int writes;

    public int[] Shape => Value.Shape;

    public void ZeroGrad() => Grad.Backend.Fill(Grad, 0f);

    public void AdamW(float learningRate, float weightDecay, float gradScale, float beta1 = 0.9f, float beta2 = 0.999f, float eps = 1e-8f)
    {
        var b = Value.Backend;
        Moment1 ??= b.Zeros(Value.Shape, Precision.Master);
        Moment2 ??= b.Zeros(Value.Shape, Precision.Master);
        Step++;
        b.AdamW(Value, Grad, Moment1, Moment2, new AdamWStep(Step, learningRate, beta1, beta2, eps, weightDecay, gradScale));
    }

    /// <summary>Restores optimiser state (resume).</summary>
    public void SetMoments(float[] m1, float[] m2, int step)
    {
        var b = Value.Backend;
        Moment1?.Dispose();
        Moment2?.Dispose();
        Moment1 = b.Upload(m1, Value.Shape, Precision.Master);
        Moment2 = b.Upload(m2, Value.Shape, Precision.Master);
        Step = step;
    }

    public void Dispose()
    {
        Value.Dispose();
        Grad.Dispose();
        Moment1?.Dispose();
        Moment2?.Dispose();
    }
}
