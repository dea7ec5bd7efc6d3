// CLIP ViT-B/32, the paper's CLIP-T model, as two ONNX files (tools/export/export_clip_b32.py):
//   image: "pixel_values" float32 (1, 3, 224, 224) -> "image_embeds" float32 (1, 512)  (projected)
//   text:  "input_ids" int64 (1, 77)               -> "text_embeds"  float32 (1, 512)  (projected)
// Preprocessing as CLIP's: bicubic resize of the shorter side to 224, centre crop, RGB normalised with CLIP's
// mean (0.48145466, 0.4578275, 0.40821073) and std (0.26862954, 0.26130258, 0.27577711).
// CLIP-T = cosine(image_embeds, text_embeds); tables show it x100.
using MetaLoraNative.Onnx.Faces;
using MetaLoraNative.Onnx.Imaging;
using MetaLoraNative.Onnx.Runtime;
using MetaLoraNative.Onnx.Tokenizers;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using SixLabors.ImageSharp.Processing;

namespace MetaLoraNative.Onnx.Clip;

public sealed class ClipScoreModel : IDisposable
{
    public const int ImageSize = 224, EmbedDim = 512;
    public const string PixelName = "pixel_values", ImageEmbedName = "image_embeds", IdsName = "input_ids", TextEmbedName = "text_embeds";
    static readonly float[] Mean = [0.48145466f * 255, 0.4578275f * 255, 0.40821073f * 255];
    static readonly float[] Std = [0.26862954f * 255, 0.26130258f * 255, 0.27577711f * 255];

    public static ModelSignature ImageSignature { get; } = new("CLIP ViT-B/32 image encoder",
        [new TensorSpec(PixelName, TensorElementType.Float, [1, 3, ImageSize, ImageSize])],
        [new TensorSpec(ImageEmbedName, TensorElementType.Float, [1, EmbedDim])]);

    public static ModelSignature TextSignature { get; } = new("CLIP ViT-B/32 text encoder",
        [new TensorSpec(IdsName, TensorElementType.Int64, [1, ClipTokenizer.ContextLength])],
        [new TensorSpec(TextEmbedName, TensorElementType.Float, [1, EmbedDim])]);

    readonly InferenceSession _image, _text;
    readonly ClipTokenizer _tokenizer;

    public ClipScoreModel(string imageModel, string textModel, ClipTokenizer tokenizer, OnnxSessionFactory? factory = null)
    {
        factory ??= OnnxSessionFactory.Default;
        _tokenizer = tokenizer;
        _image = factory.Create(imageModel, ImageSignature);
        try { _text = factory.Create(textModel, TextSignature); }
        catch { _image.Dispose(); throw; }
    }

    public float[] EmbedImage(Image<Rgb24> image)
    {
        double s = (double)ImageSize / Math.Min(image.Width, image.Height);
        int w = Math.Max(ImageSize, (int)Math.Round(image.Width * s)), h = Math.Max(ImageSize, (int)Math.Round(image.Height * s));
        using var resized = image.Clone(c => c.Resize(w, h, KnownResamplers.Bicubic)
            .Crop(new Rectangle((w - ImageSize) / 2, (h - ImageSize) / 2, ImageSize, ImageSize)));
        var chw = ImageIO.ToChw(resized, Mean, Std);
        var input = new DenseTensor<float>(chw, [1, 3, ImageSize, ImageSize]);
        using var results = _image.Run([NamedOnnxValue.CreateFromTensor(PixelName, input)], [ImageEmbedName]);
        return FaceMath.Normalize(results[0].AsEnumerable<float>().ToArray());
    }

    public float[] EmbedText(string text)
    {
        var input = new DenseTensor<long>(_tokenizer.Encode(text), [1, ClipTokenizer.ContextLength]);
        using var results = _text.Run([NamedOnnxValue.CreateFromTensor(IdsName, input)], [TextEmbedName]);
        return FaceMath.Normalize(results[0].AsEnumerable<float>().ToArray());
    }

    /// <summary>Cosine of image and text embeddings, in [-1, 1].</summary>
    public double ClipT(Image<Rgb24> image, string prompt) => FaceMath.Cosine(EmbedImage(image), EmbedText(prompt));

    public void Dispose()
    {
        _image.Dispose();
        _text.Dispose();
    }
}
