// A grid of thumbnails on a grey background, drawn pixel by pixel (no drawing library): used to eyeball augmentations
// and samples. Each cell is the thumbnail (fitted into cell × cell, centred) over a label line in PlotCanvas's font:
// the caller's label (a crop's name: index, aspect, scale, flip) or else the 1-based index.
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using SixLabors.ImageSharp.Processing;

namespace MetaLoraNative.Onnx.Imaging;

public static class ContactSheet
{
    /// <summary>Height of a cell's label band under its thumbnail, in pixels.</summary>
    public const int LabelBand = PlotCanvas.GlyphHeight + 6;
    static readonly Rgb24 Background = new(48, 48, 48), LabelInk = new(235, 235, 235);

    /// <param name="labels">One label per image (cut to the cell's width); null labels each cell with its 1-based index.</param>
    public static Image<Rgb24> Build(IReadOnlyList<Image<Rgb24>> images, IReadOnlyList<string>? labels = null, int cell = 200, int columns = 5, int gap = 8)
    {
        if (labels is not null && labels.Count != images.Count)
            throw new ArgumentException($"a contact sheet of {images.Count} images needs as many labels, got {labels.Count}");
        int n = Math.Max(1, images.Count);
        int cols = Math.Min(columns, n), rows = (n + columns - 1) / columns;
        int cellHeight = cell + LabelBand;
        var sheet = new Image<Rgb24>(cols * (cell + gap) + gap, rows * (cellHeight + gap) + gap, Background);
        int maxChars = cell / PlotCanvas.GlyphWidth;
        for (int i = 0; i < images.Count; i++)
        {
            var src = images[i];
            double s = Math.Min((double)cell / src.Width, (double)cell / src.Height);
            int w = Math.Max(1, (int)(src.Width * s)), h = Math.Max(1, (int)(src.Height * s));
            using var thumb = src.Clone(c => c.Resize(w, h));
            int cx = gap + (i % columns) * (cell + gap), cy = gap + (i / columns) * (cellHeight + gap);
            int ox = cx + (cell - w) / 2, oy = cy + (cell - h) / 2;
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++)
                    sheet[ox + x, oy + y] = thumb[x, y];
            string label = labels?[i] ?? (i + 1).ToString("00");
            if (label.Length > maxChars) label = label[..maxChars];
            PlotCanvas.DrawText(sheet, label, cx + (cell - PlotCanvas.TextWidth(label)) / 2, cy + cell + 3, LabelInk);
        }
        return sheet;
    }
}
