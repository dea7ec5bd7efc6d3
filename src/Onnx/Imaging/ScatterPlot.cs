// A scatter plot: axes, a light grid with numeric tick labels, filled discs for points, hollow rings for reference
// points (drawing in PlotCanvas). Enough to read R-FaceSim against CLIP-T at a glance; exact numbers live in the
// JSON and Markdown next to it.
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace MetaLoraNative.Onnx.Imaging;

public sealed record PlotPoint(double X, double Y, Rgb24 Color, int Radius = 4, bool Hollow = false);

public static class ScatterPlot
{
    const int Margin = 48;

    public static Image<Rgb24> Draw(IReadOnlyList<PlotPoint> points, double xMin, double xMax, double yMin, double yMax,
        double tick, int width = 640, int height = 480)
    {
        var img = new Image<Rgb24>(width, height, new Rgb24(255, 255, 255));
        var canvas = new PlotCanvas(img, xMin, xMax, yMin, yMax, left: Margin, bottom: Margin);
        canvas.Axes(tick, tick);
        foreach (var p in points) canvas.Disc(canvas.Px(p.X), canvas.Py(p.Y), p.Radius, p.Hollow, p.Color);
        return img;
    }
}
