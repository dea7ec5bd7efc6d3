// A scatter plot: axes, a light grid with numeric tick labels, an axis title under the x axis and one above the y
// axis, points as markers (drawing in PlotCanvas), and a legend column right of the frame with one marker and name
// per series. Enough to read R-FaceSim against CLIP-T at a glance; exact numbers live in the tables next to it.
//
// Layout (pixels, y down), from Layout():
//   ┌ y title ─────────────────────────┬──────────┐
//   │ tick │ frame (the data)          │ legend   │
//   │      └───────────────────────────│ entries  │
//   │        ticks, then the x title    │          │
//   └───────────────────────────────────┴──────────┘
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace MetaLoraNative.Onnx.Imaging;

public sealed record PlotPoint(double X, double Y, Rgb24 Color, int Radius = 4, Marker Marker = Marker.Disc);

/// <summary>One legend line: the marker the series' points use and its name.</summary>
public sealed record LegendEntry(string Name, Rgb24 Color, Marker Marker);

/// <summary>Where a scatter plot puts its parts; every rectangle is in image pixels.</summary>
public sealed record ScatterLayout(Rectangle Frame, Rectangle XTitle, Rectangle YTitle, Rectangle Legend);

public static class ScatterPlot
{
    const int Left = 48, Bottom = 48, Top = 28, Gap = 16, LegendRow = 16, LegendMarker = 5;

    /// <summary>
    /// The layout for these titles and legend: the legend column is as wide as its longest name (none without
    /// entries), the x title is centred under the tick labels, the y title sits above the y axis.
    /// </summary>
    public static ScatterLayout Layout(int width, int height, string xTitle, string yTitle, IReadOnlyList<LegendEntry> legend)
    {
        int legendWidth = legend.Count == 0 ? 0 : 4 * LegendMarker + PlotCanvas.TextWidth(legend.MaxBy(e => e.Name.Length)!.Name);
        int frameRight = width - Gap - (legendWidth == 0 ? 0 : legendWidth + Gap);
        if (frameRight - Left < 64 || height - Bottom - Top < 64)
            throw new ArgumentException($"a {width}x{height} scatter plot leaves no room for the data next to a legend {legendWidth} px wide");
        var frame = new Rectangle(Left, Top, frameRight - Left, height - Bottom - Top);
        int xw = PlotCanvas.TextWidth(xTitle);
        var x = new Rectangle(frame.Left + (frame.Width - xw) / 2, frame.Bottom + 24, xw, PlotCanvas.GlyphHeight);
        var y = new Rectangle(6, (Top - PlotCanvas.GlyphHeight) / 2, PlotCanvas.TextWidth(yTitle), PlotCanvas.GlyphHeight);
        var l = new Rectangle(frame.Right + Gap, frame.Top, legendWidth, legend.Count * LegendRow);
        return new ScatterLayout(frame, x, y, l);
    }

    public static Image<Rgb24> Draw(IReadOnlyList<PlotPoint> points, double xMin, double xMax, double yMin, double yMax, double tick,
        string xTitle, string yTitle, IReadOnlyList<LegendEntry> legend, int width = 760, int height = 480)
    {
        var layout = Layout(width, height, xTitle, yTitle, legend);
        var img = new Image<Rgb24>(width, height, new Rgb24(255, 255, 255));
        var canvas = new PlotCanvas(img, xMin, xMax, yMin, yMax, left: layout.Frame.Left, bottom: height - layout.Frame.Bottom,
                                    right: width - layout.Frame.Right, top: layout.Frame.Top);
        canvas.Axes(tick, tick);
        canvas.Text(xTitle, layout.XTitle.X, layout.XTitle.Y, PlotCanvas.Ink);
        canvas.Text(yTitle, layout.YTitle.X, layout.YTitle.Y, PlotCanvas.Ink);
        for (int i = 0; i < legend.Count; i++)
        {
            int rowY = layout.Legend.Y + i * LegendRow;
            PlotCanvas.DrawMarker(img, layout.Legend.X + LegendMarker, rowY + PlotCanvas.GlyphHeight / 2, LegendMarker, legend[i].Marker, legend[i].Color);
            canvas.Text(legend[i].Name, layout.Legend.X + 4 * LegendMarker, rowY, PlotCanvas.Ink);
        }
        foreach (var p in points) PlotCanvas.DrawMarker(img, canvas.Px(p.X), canvas.Py(p.Y), p.Radius, p.Marker, p.Color);
        return img;
    }
}
