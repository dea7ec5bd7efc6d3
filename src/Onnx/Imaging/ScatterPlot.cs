// A scatter plot drawn pixel by pixel: axes, a light grid with numeric tick labels (a built-in 3x5 digit font),
// filled discs for points, hollow rings for reference points. Enough to read R-FaceSim against CLIP-T at a glance;
// exact numbers live in the JSON and Markdown next to it.
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
        int x0 = Margin, x1 = width - 16, y0 = height - Margin, y1 = 16;
        int Px(double x) => (int)Math.Round(x0 + (x - xMin) / (xMax - xMin) * (x1 - x0));
        int Py(double y) => (int)Math.Round(y0 - (y - yMin) / (yMax - yMin) * (y0 - y1));
        var grid = new Rgb24(225, 225, 225);
        var ink = new Rgb24(40, 40, 40);

        for (double t = Math.Ceiling(xMin / tick) * tick; t <= xMax + 1e-9; t += tick)
        {
            Line(img, Px(t), y1, Px(t), y0, grid);
            Text(img, Label(t), Px(t) - 6, y0 + 6, ink);
        }
        for (double t = Math.Ceiling(yMin / tick) * tick; t <= yMax + 1e-9; t += tick)
        {
            Line(img, x0, Py(t), x1, Py(t), grid);
            Text(img, Label(t), 6, Py(t) - 5, ink);
        }
        Line(img, x0, y0, x1, y0, ink);
        Line(img, x0, y0, x0, y1, ink);
        foreach (var p in points)
        {
            int cx = Px(p.X), cy = Py(p.Y);
            for (int dy = -p.Radius; dy <= p.Radius; dy++)
                for (int dx = -p.Radius; dx <= p.Radius; dx++)
                {
                    int d2 = dx * dx + dy * dy;
                    bool on = p.Hollow ? d2 <= p.Radius * p.Radius && d2 >= (p.Radius - 2) * (p.Radius - 2) : d2 <= p.Radius * p.Radius;
                    if (on) Set(img, cx + dx, cy + dy, p.Color);
                }
        }
        return img;
    }

    static string Label(double v) => Math.Abs(v - Math.Round(v)) < 1e-9 ? ((int)Math.Round(v)).ToString() : v.ToString("0.#");

    static void Set(Image<Rgb24> img, int x, int y, Rgb24 c)
    {
        if (x >= 0 && y >= 0 && x < img.Width && y < img.Height) img[x, y] = c;
    }

    static void Line(Image<Rgb24> img, int xa, int ya, int xb, int yb, Rgb24 c)
    {
        int n = Math.Max(Math.Abs(xb - xa), Math.Abs(yb - ya));
        for (int i = 0; i <= n; i++)
            Set(img, xa + (n == 0 ? 0 : (xb - xa) * i / n), ya + (n == 0 ? 0 : (yb - ya) * i / n), c);
    }

    // 3x5 glyphs for digits, '.', '-': each row is 3 bits, top row first, scaled x2.
    static readonly Dictionary<char, int[]> Glyphs = new()
    {
        ['0'] = [7, 5, 5, 5, 7], ['1'] = [2, 6, 2, 2, 7], ['2'] = [7, 1, 7, 4, 7], ['3'] = [7, 1, 7, 1, 7],
        ['4'] = [5, 5, 7, 1, 1], ['5'] = [7, 4, 7, 1, 7], ['6'] = [7, 4, 7, 5, 7], ['7'] = [7, 1, 1, 1, 1],
        ['8'] = [7, 5, 7, 5, 7], ['9'] = [7, 5, 7, 1, 7], ['.'] = [0, 0, 0, 0, 2], ['-'] = [0, 0, 7, 0, 0],
    };

    static void Text(Image<Rgb24> img, string s, int x, int y, Rgb24 c)
    {
        foreach (char ch in s)
        {
            if (Glyphs.TryGetValue(ch, out var rows))
                for (int r = 0; r < 5; r++)
                    for (int b = 0; b < 3; b++)
                        if ((rows[r] >> (2 - b) & 1) == 1)
                            for (int sy = 0; sy < 2; sy++)
                                for (int sx = 0; sx < 2; sx++)
                                    Set(img, x + b * 2 + sx, y + r * 2 + sy, c);
            x += 8;
        }
    }
}
