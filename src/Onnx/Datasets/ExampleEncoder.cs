// What both dataset builders do per image and per caption, every call through the EncodingCache:
//   caption → T5 (512, 4096) + CLIP pooled (768);  image (sides multiples of 16) → packed latents (H/16 · W/16, 64).
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Training;
using MetaLoraNative.Onnx.Cache;
using MetaLoraNative.Onnx.Models;
using MetaLoraNative.Onnx.Text;
using MetaLoraNative.Onnx.Vae;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace MetaLoraNative.Onnx.Datasets;

internal sealed class ExampleEncoder(ModelSet models, EncodingCache cache)
{
    readonly FluxTextEncoder _text = models.OpenTextEncoder();
    readonly FluxVae _vae = models.OpenVae(encoder: true, decoder: false);

    public PromptEmbedding Caption(string caption) => cache.Text(caption, _text);

    /// <summary>One training example: the image's packed latents on its token grid, captioned by <paramref name="caption"/>.</summary>
    public Example Example(Image<Rgb24> image, PromptEmbedding caption) =>
        new(cache.PackedLatents(image, _vae), image.Height / FluxConfig.PixelsPerToken, image.Width / FluxConfig.PixelsPerToken,
            caption.T5, T5TextEncoder.Length, caption.Pooled);
}
