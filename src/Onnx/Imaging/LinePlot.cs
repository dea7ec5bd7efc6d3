// A line plot with axis titles and a legend (drawing in PlotCanvas): the training loss curve (loss.png).
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace MetaLoraNative.Onnx.Imaging;

/// <summary>One curve: points in data coordinates joined in order; a single point is drawn as a dot.</summary>
public sealed record LineSeries(string Name, IReadOnlyList<(double X, double Y)> Points, Rgb24 Color, bool Dots = false);

public static class LinePlot
{
    const int Left = 56, Bottom = 44, Top = 28;

    public static Image<Rgb24> Draw(IReadOnlyList<LineSeries> series, string xTitle, string yTitle, int width = 640, int height = 480)
    {
        var all = series.SelectMany(s => s.Points).Where(p => double.IsFinite(p.X) && double.IsFinite(p.Y)).ToList();
        if (all.Count == 0) throw new ArgumentException("a line plot needs at least one finite point");
        double xMin = all.Min(p => p.X), xMax = all.Max(p => p.X), yMin = Math.Min(0, all.Min(p => p.Y)), yMax = all.Max(p => p.Y);
        if (xMax <= xMin) xMax = xMin + 1;
        if (yMax <= yMin) yMax = yMin + 1;
        double xTick = NiceTick(xMax - xMin), yTick = NiceTick(yMax - yMin);
        xMin = Math.Floor(xMin / xTick) * xTick;
        xMax = Math.Ceiling(xMax / xTick) * xTick;
        yMax = Math.Ceiling(yMax / yTick) * yTick;

        var img = new Image<Rgb24>(width, height, new Rgb24(255, 255, 255));
        var canvas = new PlotCanvas(img, xMin, xMax, yMin, yMax, Left, Bottom, top: Top);
        canvas.Axes(xTick, yTick);
        canvas.Text(xTitle, (canvas.X0 + canvas.X1 - xTitle.Length * PlotCanvas.GlyphWidth) / 2, canvas.Y0 + 24, PlotCanvas.Ink);
        canvas.Text(yTitle, 6, 8, PlotCanvas.Ink);
        int legendX = canvas.X1 - series.Sum(s => (s.Name.Length + 3) * PlotCanvas.GlyphWidth);
        foreach (var s in series)
        {
            canvas.Line(legendX, 13, legendX + 12, 13, s.Color);
            canvas.Text(s.Name, legendX + 16, 8, s.Color);
            legendX += (s.Name.Length + 3) * PlotCanvas.GlyphWidth;
            var pts = s.Points.Where(p => double.IsFinite(p.X) && double.IsFinite(p.Y)).ToList();
            for (int i = 0; i < pts.Count; i++)
            {
                int x = canvas.Px(pts[i].X), y = canvas.Py(pts[i].Y);
                if (s.Dots || pts.Count == 1) canvas.Disc(x, y, 3, hollow: false, s.Color);
                if (i > 0) canvas.Line(canvas.Px(pts[i - 1].X), canvas.Py(pts[i - 1].Y), x, y, s.Color);
            }
        }
        return img;
    }

    /// <summary>1, 2 or 5 × 10^k, giving four to ten ticks over the range.</summary>
    public static double NiceTick(double range)
    {
        double raw = range / 5, power = Math.Pow(10, Math.Floor(Math.Log10(raw)));
        double m = raw / power;
        return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * power;
    }
}
