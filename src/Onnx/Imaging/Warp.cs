// Affine resampling into a planar float tensor: the one routine behind face crops (box crop = scale + shift,
// 5-point alignment = similarity transform). Bilinear; pixels outside the source read as black.
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace MetaLoraNative.Onnx.Imaging;

/// <summary>2x3 affine map (output pixel -> source pixel): x' = A x + B y + C, y' = D x + E y + F.</summary>
public readonly record struct Affine(float A, float B, float C, float D, float E, float F)
{
    public PointF Apply(PointF p) => new(A * p.X + B * p.Y + C, D * p.X + E * p.Y + F);

    /// <summary>Maps an output square of <paramref name="size"/> pixels onto the source rectangle.</summary>
    public static Affine FromRect(RectangleF source, int width, int height) =>
        new(source.Width / width, 0, source.X, 0, source.Height / height, source.Y);

    /// <summary>
    /// Least-squares similarity (rotation, uniform scale, shift; no reflection) taking <paramref name="from"/> onto
    /// <paramref name="to"/> (Umeyama's closed form in 2-D), returned as the inverse map to -> from for sampling.
    /// </summary>
    public static Affine SimilarityInverse(IReadOnlyList<PointF> from, IReadOnlyList<PointF> to)
    {
        int n = from.Count;
        if (n < 2 || to.Count != n) throw new ArgumentException("need at least two matching points");
        // Fit to -> from directly: that is the map we sample with.
        float mx = 0, my = 0, nx = 0, ny = 0;
        for (int i = 0; i < n; i++) { mx += to[i].X; my += to[i].Y; nx += from[i].X; ny += from[i].Y; }
        mx /= n; my /= n; nx /= n; ny /= n;
        double sxx = 0, a = 0, b = 0;
        for (int i = 0; i < n; i++)
        {
            double px = to[i].X - mx, py = to[i].Y - my, qx = from[i].X - nx, qy = from[i].Y - ny;
            sxx += px * px + py * py;
            a += px * qx + py * qy;
            b += px * qy - py * qx;
        }
        float ca = (float)(a / sxx), cb = (float)(b / sxx);
        // q = [ca -cb; cb ca] p + t
        return new Affine(ca, -cb, nx - (ca * mx - cb * my), cb, ca, ny - (cb * mx + ca * my));
    }
}

public static class Warp
{
    /// <summary>
    /// (3, height, width) planar floats, value = (pixel - mean) / std per channel (pixel in [0, 255]);
    /// <paramref name="bgr"/> swaps the channel order for models trained on OpenCV's BGR.
    /// </summary>
    public static float[] ToChw(Image<Rgb24> image, Affine map, int width, int height, float mean, float std, bool bgr = false)
    {
        int plane = width * height;
        var data = new float[3 * plane];
        float inv = 1f / std;
        int w = image.Width, h = image.Height;
        Span<float> px = stackalloc float[3];
        for (int y = 0; y < height; y++)
            for (int x = 0; x < width; x++)
            {
                // Sample at the output pixel centre.
                var s = map.Apply(new PointF(x + 0.5f, y + 0.5f));
                float sx = s.X - 0.5f, sy = s.Y - 0.5f;
                int x0 = (int)MathF.Floor(sx), y0 = (int)MathF.Floor(sy);
                float fx = sx - x0, fy = sy - y0;
                px.Clear();
                Accumulate(image, x0, y0, (1 - fx) * (1 - fy), px, w, h);
                Accumulate(image, x0 + 1, y0, fx * (1 - fy), px, w, h);
                Accumulate(image, x0, y0 + 1, (1 - fx) * fy, px, w, h);
                Accumulate(image, x0 + 1, y0 + 1, fx * fy, px, w, h);
                int i = y * width + x;
                data[i] = ((bgr ? px[2] : px[0]) - mean) * inv;
                data[plane + i] = (px[1] - mean) * inv;
                data[2 * plane + i] = ((bgr ? px[0] : px[2]) - mean) * inv;
            }
        return data;
    }

    static void Accumulate(Image<Rgb24> image, int x, int y, float weight, Span<float> px, int w, int h)
    {
        if (weight == 0 || x < 0 || y < 0 || x >= w || y >= h) return;
        var p = image[x, y];
        px[0] += p.R * weight;
        px[1] += p.G * weight;
        px[2] += p.B * weight;
    }
}
