namespace MetaLoraNative.Engine.Lora;

/// <summary>
/// One trainable LoRA factor: its fp32 master value, gradient and AdamW moments, all Master precision.
/// The gradient accumulates with += (layers call Gemm with beta = 1); the trainer zeroes it each step.
/// A factor owns its tensors until <see cref="Training.FlatParameters"/> moves it into flat buffers: then all four
/// are views (<see cref="Tensor.Slice"/>) of the buffers, and the moments exist from the start but read as absent
/// (null) until the factor's first AdamW step, so state files look as before.
/// </summary>
public sealed class LoraParameter : IDisposable
{
    Tensor? moment1, moment2;
    bool hasMoments;

    public LoraParameter(string name, Tensor value)
    {
        Name = name;
        Value = value;
        Grad = value.Backend.Zeros(value.Shape, Precision.Master);
    }

    /// <summary>Key in LoRA and training-state files, e.g. transformer.transformer_blocks.0.attn.to_q.lora_down.weight.</summary>
    public string Name { get; }
    public Tensor Value { get; private set; }
    public Tensor Grad { get; private set; }
    public Tensor? Moment1 => hasMoments ? moment1 : null;
    public Tensor? Moment2 => hasMoments ? moment2 : null;
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
        EnsureMoments();
        Step++;
        b.AdamW(Value, Grad, moment1!, moment2!, new AdamWStep(Step, learningRate, beta1, beta2, eps, weightDecay, gradScale));
    }

    /// <summary>This factor's entry of a multi-tensor AdamW that takes its next step (moments created when absent).</summary>
    public AdamWTensors NextStep()
    {
        EnsureMoments();
        MarkWritten();   // the device updates Value before the next forward, though the host learns of it a step later
        return new AdamWTensors(Value, Grad, moment1!, moment2!, Step + 1);
    }

    /// <summary>The device applied the step <see cref="NextStep"/> described (learnt from the step's read-back).</summary>
    public void Stepped()
    {
        Step++;
        hasMoments = true;
    }

    void EnsureMoments()
    {
        moment1 ??= Value.Backend.Zeros(Value.Shape, Precision.Master);
        moment2 ??= Value.Backend.Zeros(Value.Shape, Precision.Master);
        hasMoments = true;
    }

    /// <summary>Restores optimiser state (resume), into the flat buffers' views when the factor lives there.</summary>
    public void SetMoments(float[] m1, float[] m2, int step)
    {
        var b = Value.Backend;
        EnsureMoments();
        using (var t = b.Upload(m1, Value.Shape, Precision.Master)) b.Copy(t, moment1!);
        using (var t = b.Upload(m2, Value.Shape, Precision.Master)) b.Copy(t, moment2!);
        Step = step;
    }

    /// <summary>
    /// Moves the factor onto views of flat buffers (<see cref="Training.FlatParameters"/>): the value and, when present,
    /// the moments are copied there; the gradient view is left as the buffer holds it (the trainer zeroes it each step).
    /// </summary>
    internal void MoveTo(Tensor value, Tensor grad, Tensor m, Tensor v)
    {
        var b = Value.Backend;
        b.Copy(Value, value);
        if (moment1 != null) b.Copy(moment1, m);
        if (moment2 != null) b.Copy(moment2, v);
        Dispose();
        (Value, Grad, moment1, moment2) = (value, grad, m, v);
    }

    public void Dispose()
    {
        Value.Dispose();
        Grad.Dispose();
        moment1?.Dispose();
        moment2?.Dispose();
    }
}
