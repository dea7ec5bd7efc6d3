// What a structure walk (PngStructure, JpegStructure) found before any pixel is decoded: the declared size, the byte
// ranges the decoder needs (every chunk or segment that shapes pixels, nothing else) and the EXIF block, read only
// for its orientation.
namespace MetaLoraNative.Onnx.Imaging;

sealed record ImageStructure(int Width, int Height, IReadOnlyList<(long Start, long Length)> Kept, byte[]? Exif);
