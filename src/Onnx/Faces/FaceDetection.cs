// What a face detector reports and what the rest of the project relies on.
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace MetaLoraNative.Onnx.Faces;

/// <summary>
/// One face in image pixel coordinates. <paramref name="Landmarks"/> are optional; when present (BlazeFace gives six)
/// the order is: eye on the image's left, eye on the image's right, nose tip, mouth centre, then any extra points.
/// </summary>
public sealed record FaceDetection(RectangleF Box, float Score, PointF[] Landmarks)
{
    public float LongSide => MathF.Max(Box.Width, Box.Height);
    public PointF Center => new(Box.X + Box.Width / 2, Box.Y + Box.Height / 2);
    public float Area => Box.Width * Box.Height;
}

/// <summary>Finds faces. Implementations must be safe to call repeatedly; they need not be thread-safe.</summary>
public interface IFaceDetector : IDisposable
{
    IReadOnlyList<FaceDetection> Detect(Image<Rgb24> image);
}

/// <summary>Turns a detected face into an identity embedding (L2-normalised).</summary>
public interface IFaceEmbedder : IDisposable
{
    int Dimension { get; }
    float[] Embed(Image<Rgb24> image, FaceDetection face);
}

public sealed class NoFaceException : Exception
{
    public NoFaceException(string message) : base(message) { }
}

public static class FaceMath
{
    public static float Cosine(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        if (a.Length != b.Length) throw new ArgumentException($"embedding lengths differ: {a.Length} vs {b.Length}");
        double dot = 0, na = 0, nb = 0;
        for (int i = 0; i < a.Length; i++)
        {
            dot += a[i] * b[i];
            na += a[i] * a[i];
            nb += b[i] * b[i];
        }
        return na == 0 || nb == 0 ? 0f : (float)(dot / Math.Sqrt(na * nb));
    }

    public static float[] Normalize(float[] v)
    {
        double n = 0;
        foreach (var x in v) n += x * x;
        float inv = n > 0 ? (float)(1 / Math.Sqrt(n)) : 0f;
        for (int i = 0; i < v.Length; i++) v[i] *= inv;
        return v;
    }

    public static float IoU(RectangleF a, RectangleF b)
    {
        var i = RectangleF.Intersect(a, b);
        float inter = i.Width > 0 && i.Height > 0 ? i.Width * i.Height : 0f;
        float union = a.Width * a.Height + b.Width * b.Height - inter;
        return union > 0 ? inter / union : 0f;
    }

    /// <summary>The largest face, and a warning line when there were several; NoFaceException naming <paramref name="label"/> if none.</summary>
    public static FaceDetection PickLargest(IReadOnlyList<FaceDetection> faces, string label, Action<string>? warn)
    {
        if (faces.Count == 0) throw new NoFaceException($"no face found in {label}");
        var largest = faces.OrderByDescending(f => f.Area).First();
        if (faces.Count > 1)
            (warn ?? (m => Console.Error.WriteLine(m)))(
                $"warning: {faces.Count} faces found in {label}; using the largest ({largest.Box.Width:0}x{largest.Box.Height:0} at {largest.Box.X:0},{largest.Box.Y:0})");
        return largest;
    }
}
