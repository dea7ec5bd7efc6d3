// The one error every image load raises: the message names the file (or the label given to ImageIO.Decode) and says
// what is wrong with it, so a bad photo in a folder of hundreds can be found and replaced.
namespace MetaLoraNative.Onnx.Imaging;

public sealed class ImageLoadException : Exception
{
    public ImageLoadException(string message, Exception? inner = null) : base(message, inner) { }

    /// <summary>The file ends (or its image data ends) before the image is complete.</summary>
    internal static ImageLoadException Truncated(string label, string detail) => new($"image {label} is truncated: {detail}");

    /// <summary>The file's structure is broken in a way that is not a plain early end.</summary>
    internal static ImageLoadException Corrupt(string label, string detail) => new($"image {label} is corrupt: {detail}");
}
