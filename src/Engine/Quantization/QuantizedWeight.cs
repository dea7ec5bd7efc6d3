namespace MetaLoraNative.Engine.Quantization;

/// <summary>
/// A frozen linear weight W (d_out, d_in) held in fp8 on one backend (W8A16): OCP E4M3 codes and one fp32 scale per
/// output row, W[j, k] = Scale[j] · e4m3(Codes[j, k]) (<see cref="Fp8Rows"/> makes them). The products dequantise it
/// in their operand path (<see cref="IBackend.LinearQuantized"/>); activations stay in the backend's compute type.
/// It lives in its backend's memory and counts there like a tensor; Dispose gives it back.
/// </summary>
public abstract class QuantizedWeight : IDisposable
{
    protected QuantizedWeight(int rows, int cols)
    {
        if (rows < 0 || cols < 0) throw new ArgumentException($"negative dimension in quantised weight ({rows}, {cols})");
        Rows = rows;
        Cols = cols;
    }

    /// <summary>d_out: one scale each.</summary>
    public int Rows { get; }

    /// <summary>d_in.</summary>
    public int Cols { get; }

    /// <summary>(d_out, d_in), as the bf16 weight it stands for.</summary>
    public int[] Shape => [Rows, Cols];

    /// <summary>Elements (codes).</summary>
    public long Length => (long)Rows * Cols;

    /// <summary>What it occupies: one byte per code and four per row scale.</summary>
    public long Bytes => Length + 4L * Rows;

    public abstract IBackend Backend { get; }

    public virtual void Dispose() => GC.SuppressFinalize(this);

    public override string ToString() => $"{Backend.Name}-e4m3{Shapes.Format(Shape)}";
}
