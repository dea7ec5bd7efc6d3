// From one photo and a prompt to the engine's cached Stage-2 dataset (Engine.Training.LatentDataset layout):
// augment (paper §3), VAE-encode every crop to packed latents (GridH*GridW, 64), encode the prompt once
// (T5 (512, 4096) + CLIP pooled (768)); every encoder call goes through the EncodingCache.
using MetaLoraNative.Engine.Training;
using MetaLoraNative.Onnx.Augment;
using MetaLoraNative.Onnx.Imaging;
using MetaLoraNative.Onnx.Models;
using MetaLoraNative.Onnx.Text;
using MetaLoraNative.Onnx.Vae;

namespace MetaLoraNative.Onnx.Cache;

public static class Stage2Data
{
    public static Identity Prepare(string photoPath, string prompt, ModelSet models, EncodingCache cache, AugmentOptions options,
        Action<string>? log = null)
    {
        using var photo = ImageIO.LoadRgb(photoPath);
        var detector = models.OpenFaceDetector();
        var crops = FaceAugmenter.Augment(photo, detector, options, photoPath, log);
        try
        {
            FluxTextEncoder text = models.OpenTextEncoder();
            FluxVae vae = models.OpenVae(encoder: true, decoder: false);
            var embedding = cache.Text(prompt, text);
            var examples = new List<Example>();
            foreach (var c in crops)
            {
                int gh = c.Image.Height / 16, gw = c.Image.Width / 16;
                var z = cache.Latents(c.Image, vae);
                var packed = LatentPacking.Pack(z, FluxVae.LatentChannels, c.Image.Height / FluxVae.Downsample, c.Image.Width / FluxVae.Downsample);
                examples.Add(new Example(packed, gh, gw, embedding.T5, T5TextEncoder.Length, embedding.Pooled));
            }
            log?.Invoke(cache.Summary());
            return new Identity(Path.GetFileNameWithoutExtension(photoPath), examples);
        }
        finally
        {
            crops.ForEach(c => c.Dispose());
        }
    }
}
