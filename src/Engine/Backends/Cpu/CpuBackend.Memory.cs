using System.Numerics;

namespace MetaLoraNative.Engine.Backends.Cpu;

// Memory: allocation, upload/download, copy and fill. Uploads and downloads convert element by element; fp64 values
// uploaded to the fp64 engine are kept exactly.
public sealed partial class CpuBackend<T>
{
    public Tensor Zeros(params int[] shape) => New(shape);

    /// <summary>Both precisions are T on the CPU: masters of the fp32 engine are fp32, of the fp64 oracle fp64.</summary>
    public Tensor Zeros(int[] shape, Precision precision) => New(shape);

    public Tensor Upload(ReadOnlySpan<float> values, int[] shape, Precision precision) => Upload(values, shape);

    public Tensor Upload(ReadOnlySpan<float> values, params int[] shape) => UploadFrom(values, shape);

    public Tensor Upload(ReadOnlySpan<double> values, params int[] shape) => UploadFrom(values, shape);

    /// <summary>Host values of either width, each widened to fp64 and stored once (exact for the fp64 oracle).</summary>
    Tensor UploadFrom<TSource>(ReadOnlySpan<TSource> values, int[] shape) where TSource : unmanaged, INumberBase<TSource>
    {
        var t = New(shape);
        if (values.Length != t.Length)
            throw new ArgumentException($"Upload: {values.Length} values do not fill shape {Shapes.Format(shape)}");
        var s = t.Span;
        for (int i = 0; i < s.Length; i++) s[i] = Store(double.CreateTruncating(values[i]));
        return t;
    }

    public float[] Download(Tensor t)
    {
        var s = Cpu(t, "Download", "t").Span;
        var r = new float[s.Length];
        for (int i = 0; i < s.Length; i++) r[i] = (float)Wide(s[i]);
        return r;
    }

    public double[] DownloadDouble(Tensor t)
    {
        var s = Cpu(t, "DownloadDouble", "t").Span;
        var r = new double[s.Length];
        for (int i = 0; i < s.Length; i++) r[i] = Wide(s[i]);
        return r;
    }

    public void Copy(Tensor src, Tensor dst)
    {
        var a = Cpu(src, "Copy", "src");
        var b = Cpu(dst, "Copy", "dst");
        if (a.Length != b.Length)
            throw new ArgumentException($"Copy: element counts differ, src {S(src)} vs dst {S(dst)}");
        a.Span.CopyTo(b.Span); // Span.CopyTo is safe for overlapping views of one array
    }

    public void Fill(Tensor t, float value) => Cpu(t, "Fill", "t").Span.Fill(Store(value));
}
