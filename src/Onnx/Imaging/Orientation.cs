// EXIF orientation (tag 0x0112): which way the stored rows and columns face when the photo is viewed. A phone stores
// the sensor's rows and records the turn, so without this its crops come out sideways. Value -> what makes the stored
// image upright (rotation clockwise, then flip), derived from the tag's definition (row 0 / column 0 face):
//   1 top/left: none   2 top/right: flip H   3 bottom/right: 180   4 bottom/left: flip V
//   5 left/top: 90 + flip H   6 right/top: 90   7 right/bottom: 90 + flip V   8 left/bottom: 270
// A missing, unreadable or out-of-range value means 1: broken metadata does not stop a photo.
using System.Globalization;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.Metadata.Profiles.Exif;
using SixLabors.ImageSharp.Processing;

namespace MetaLoraNative.Onnx.Imaging;

static class Orientation
{
    /// <summary>The orientation in a raw EXIF block (TIFF header first; a leading "Exif\0\0" is tolerated), or 1.</summary>
    public static int FromExif(byte[]? exif)
    {
        if (exif is null) return 1;
        if (exif.AsSpan().StartsWith("Exif\0\0"u8)) exif = exif[6..];
        try
        {
            foreach (var value in new ExifProfile(exif).Values)
                if (value.Tag == ExifTag.Orientation)
                    return Convert.ToInt32(value.GetValue(), CultureInfo.InvariantCulture) is var o and >= 1 and <= 8 ? o : 1;
        }
        catch (Exception e) when (e is ArgumentException or IndexOutOfRangeException or InvalidOperationException
                                       or InvalidCastException or OverflowException or FormatException)
        {
        }
        return 1;
    }

    public static void Apply(Image image, int orientation)
    {
        (RotateMode rotate, FlipMode flip) = orientation switch
        {
            2 => (RotateMode.None, FlipMode.Horizontal),
            3 => (RotateMode.Rotate180, FlipMode.None),
            4 => (RotateMode.None, FlipMode.Vertical),
            5 => (RotateMode.Rotate90, FlipMode.Horizontal),
            6 => (RotateMode.Rotate90, FlipMode.None),
            7 => (RotateMode.Rotate90, FlipMode.Vertical),
            8 => (RotateMode.Rotate270, FlipMode.None),
            _ => (RotateMode.None, FlipMode.None),
        };
        if (rotate != RotateMode.None || flip != FlipMode.None) image.Mutate(c => c.RotateFlip(rotate, flip));
    }
}
