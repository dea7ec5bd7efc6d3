// A grid of thumbnails on a grey background, drawn pixel by pixel (no drawing library): used to eyeball augmentations.
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using SixLabors.ImageSharp.Processing;

namespace MetaLoraNative.Onnx.Imaging;

public static class ContactSheet
{
    public static Image<Rgb24> Build(IReadOnlyList<Image<Rgb24>> images, int cell = 200, int columns = 5, int gap = 8)
    {
        int n = Math.Max(1, images.Count);
        int cols = Math.Min(columns, n), rows = (n + columns - 1) / columns;
        var sheet = new Image<Rgb24>(cols * (cell + gap) + gap, rows * (cell + gap) + gap, new Rgb24(48, 48, 48));
        for (int i = 0; i < images.Count; i++)
        {
            var src = images[i];
            double s = Math.Min((double)cell / src.Width, (double)cell / src.Height);
            int w = Math.Max(1, (int)(src.Width * s)), h = Math.Max(1, (int)(src.Height * s));
            using var thumb = src.Clone(c => c.Resize(w, h));
            int ox = gap + (i % columns) * (cell + gap) + (cell - w) / 2;
            int oy = gap + (i / columns) * (cell + gap) + (cell - h) / 2;
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++)
                    sheet[ox + x, oy + y] = thumb[x, y];
        }
        return sheet;
    }
}
