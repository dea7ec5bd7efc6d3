// The drawing the plots and the contact sheet share, pixel by pixel on an Rgb24 image: a frame with a light grid and
// numeric tick labels, lines, point markers, and a built-in 3x5 font (digits, letters as capitals, a few marks) drawn at 2x.
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace MetaLoraNative.Onnx.Imaging;

/// <summary>A point's marker shape: a filled disc, a ring, a filled square, a filled diamond, a filled triangle, a cross.</summary>
public enum Marker { Disc, Ring, Square, Diamond, Triangle, Cross }

/// <summary>A plot area on an image: data coordinates (xMin..xMax, yMin..yMax) mapped into the frame inside the margins.</summary>
internal sealed class PlotCanvas
{
    public static readonly Rgb24 Grid = new(225, 225, 225), Ink = new(40, 40, 40);
    /// <summary>Width of one glyph with its gap, in pixels.</summary>
    public const int GlyphWidth = 8;
    /// <summary>Height of one line of text, in pixels (5 rows at 2x).</summary>
    public const int GlyphHeight = 10;

    readonly double xMin, xMax, yMin, yMax;

    public PlotCanvas(Image<Rgb24> image, double xMin, double xMax, double yMin, double yMax, int left, int bottom, int right = 16, int top = 16)
    {
        Image = image;
        (this.xMin, this.xMax, this.yMin, this.yMax) = (xMin, xMax, yMin, yMax);
        (X0, X1, Y0, Y1) = (left, image.Width - right, image.Height - bottom, top);
    }

    public Image<Rgb24> Image { get; }
    /// <summary>The frame in pixels: x from X0 (left) to X1, y from Y0 (bottom) up to Y1.</summary>
    public int X0 { get; }
    public int X1 { get; }
    public int Y0 { get; }
    public int Y1 { get; }

    public int Px(double x) => (int)Math.Round(X0 + (x - xMin) / (xMax - xMin) * (X1 - X0));
    public int Py(double y) => (int)Math.Round(Y0 - (y - yMin) / (yMax - yMin) * (Y0 - Y1));

    /// <summary>Grid lines and labels every xTick / yTick, then the two axes.</summary>
    public void Axes(double xTick, double yTick)
    {
        for (double t = Math.Ceiling(xMin / xTick) * xTick; t <= xMax + 1e-9 * xTick; t += xTick)
        {
            Line(Px(t), Y1, Px(t), Y0, Grid);
            Text(Label(t), Px(t) - 6, Y0 + 6, Ink);
        }
        for (double t = Math.Ceiling(yMin / yTick) * yTick; t <= yMax + 1e-9 * yTick; t += yTick)
        {
            Line(X0, Py(t), X1, Py(t), Grid);
            Text(Label(t), 6, Py(t) - 5, Ink);
        }
        Line(X0, Y0, X1, Y0, Ink);
        Line(X0, Y0, X0, Y1, Ink);
    }

    static string Label(double v) => Math.Abs(v - Math.Round(v)) < 1e-9 ? ((long)Math.Round(v)).ToString() : v.ToString("0.###", System.Globalization.CultureInfo.InvariantCulture);

    public void Set(int x, int y, Rgb24 c) => SetPixel(Image, x, y, c);

    public void Line(int xa, int ya, int xb, int yb, Rgb24 c)
    {
        int n = Math.Max(Math.Abs(xb - xa), Math.Abs(yb - ya));
        for (int i = 0; i <= n; i++)
            Set(xa + (n == 0 ? 0 : (xb - xa) * i / n), ya + (n == 0 ? 0 : (yb - ya) * i / n), c);
    }

    /// <summary>A filled disc, or a ring two pixels wide when hollow.</summary>
    public void Disc(int cx, int cy, int radius, bool hollow, Rgb24 c) => DrawMarker(Image, cx, cy, radius, hollow ? Marker.Ring : Marker.Disc, c);

    /// <summary>A marker of <paramref name="radius"/> centred on (cx, cy); every shape fits in the same (2r+1)² box.</summary>
    public static void DrawMarker(Image<Rgb24> image, int cx, int cy, int radius, Marker marker, Rgb24 c)
    {
        for (int dy = -radius; dy <= radius; dy++)
            for (int dx = -radius; dx <= radius; dx++)
            {
                int d2 = dx * dx + dy * dy;
                bool on = marker switch
                {
                    Marker.Disc => d2 <= radius * radius,
                    Marker.Ring => d2 <= radius * radius && d2 >= (radius - 2) * (radius - 2),
                    Marker.Square => true,
                    Marker.Diamond => Math.Abs(dx) + Math.Abs(dy) <= radius,
                    // apex at the top, base on the bottom row: half-width grows with the row
                    Marker.Triangle => 2 * Math.Abs(dx) <= dy + radius,
                    Marker.Cross => Math.Abs(dx - dy) <= 1 || Math.Abs(dx + dy) <= 1,
                    _ => false,
                };
                if (on) SetPixel(image, cx + dx, cy + dy, c);
            }
    }

    static void SetPixel(Image<Rgb24> image, int x, int y, Rgb24 c)
    {
        if (x >= 0 && y >= 0 && x < image.Width && y < image.Height) image[x, y] = c;
    }

    // 3x5 glyphs: each row is 3 bits, top row first. Letters are drawn as capitals.
    static readonly Dictionary<char, int[]> Glyphs = new()
    {
        ['0'] = [7, 5, 5, 5, 7], ['1'] = [2, 6, 2, 2, 7], ['2'] = [7, 1, 7, 4, 7], ['3'] = [7, 1, 7, 1, 7],
        ['4'] = [5, 5, 7, 1, 1], ['5'] = [7, 4, 7, 1, 7], ['6'] = [7, 4, 7, 5, 7], ['7'] = [7, 1, 1, 1, 1],
        ['8'] = [7, 5, 7, 5, 7], ['9'] = [7, 5, 7, 1, 7], ['.'] = [0, 0, 0, 0, 2], ['-'] = [0, 0, 7, 0, 0],
        ['A'] = [2, 5, 7, 5, 5], ['B'] = [6, 5, 6, 5, 6], ['C'] = [3, 4, 4, 4, 3], ['D'] = [6, 5, 5, 5, 6],
        ['E'] = [7, 4, 6, 4, 7], ['F'] = [7, 4, 6, 4, 4], ['G'] = [3, 4, 5, 5, 3], ['H'] = [5, 5, 7, 5, 5],
        ['I'] = [7, 2, 2, 2, 7], ['J'] = [1, 1, 1, 5, 2], ['K'] = [5, 5, 6, 5, 5], ['L'] = [4, 4, 4, 4, 7],
        ['M'] = [5, 7, 7, 5, 5], ['N'] = [6, 5, 5, 5, 5], ['O'] = [2, 5, 5, 5, 2], ['P'] = [6, 5, 6, 4, 4],
        ['Q'] = [2, 5, 5, 6, 3], ['R'] = [6, 5, 6, 5, 5], ['S'] = [3, 4, 2, 1, 6], ['T'] = [7, 2, 2, 2, 2],
        ['U'] = [5, 5, 5, 5, 7], ['V'] = [5, 5, 5, 5, 2], ['W'] = [5, 5, 7, 7, 5], ['X'] = [5, 5, 2, 5, 5],
        ['Y'] = [5, 5, 2, 2, 2], ['Z'] = [7, 1, 2, 4, 7], ['('] = [1, 2, 2, 2, 1], [')'] = [4, 2, 2, 2, 4],
        ['/'] = [1, 1, 2, 4, 4], [':'] = [0, 2, 0, 2, 0], ['_'] = [0, 0, 0, 0, 7], [' '] = [0, 0, 0, 0, 0],
        ['+'] = [0, 2, 7, 2, 0], [','] = [0, 0, 0, 2, 4], ['%'] = [5, 1, 2, 4, 5], ['='] = [0, 7, 0, 7, 0],
    };

    public void Text(string s, int x, int y, Rgb24 c) => DrawText(Image, s, x, y, c);

    /// <summary>Width in pixels of <paramref name="s"/> in this font.</summary>
    public static int TextWidth(string s) => s.Length * GlyphWidth;

    /// <summary>Draws <paramref name="s"/> with its top-left corner at (x, y); characters the font lacks leave a blank.</summary>
    public static void DrawText(Image<Rgb24> image, string s, int x, int y, Rgb24 c)
    {
        foreach (char ch in s)
        {
            if (Glyphs.TryGetValue(char.ToUpperInvariant(ch), out var rows))
                for (int r = 0; r < 5; r++)
                    for (int b = 0; b < 3; b++)
                        if ((rows[r] >> (2 - b) & 1) == 1)
                            for (int sy = 0; sy < 2; sy++)
                                for (int sx = 0; sx < 2; sx++)
                                    SetPixel(image, x + b * 2 + sx, y + r * 2 + sy, c);
            x += GlyphWidth;
        }
    }
}
