// From one photo and a prompt to the engine's cached Stage-2 dataset (Engine.Training.LatentDataset layout):
// augment (paper §3), VAE-encode every crop to packed latents (GridH·GridW, 64), encode the prompt once
// (T5 (512, 4096) + CLIP pooled (768)); every encoder call goes through the EncodingCache.
using MetaLoraNative.Engine.Training;
using MetaLoraNative.Onnx.Augment;
using MetaLoraNative.Onnx.Cache;
using MetaLoraNative.Onnx.Imaging;
using MetaLoraNative.Onnx.Models;

namespace MetaLoraNative.Onnx.Datasets;

public static class Stage2Data
{
    /// <summary><paramref name="phaseDone"/> hears "detect/augment" and "encode" as each phase ends (personalize's timings).</summary>
    public static Identity Prepare(string photoPath, string prompt, ModelSet models, EncodingCache cache, AugmentOptions options,
        Action<string>? log = null, Action<string>? phaseDone = null)
    {
        using var photo = ImageIO.LoadRgb(photoPath);
        var detector = models.OpenFaceDetector();
        var crops = FaceAugmenter.Augment(photo, detector, options, photoPath, log);
        phaseDone?.Invoke("detect/augment");
        try
        {
            var encoder = new ExampleEncoder(models, cache);
            var caption = encoder.Caption(prompt);
            var examples = crops.Select(c => encoder.Example(c.Image, caption)).ToList();
            log?.Invoke(cache.Summary());
            phaseDone?.Invoke("encode");
            return new Identity(Path.GetFileNameWithoutExtension(photoPath), examples);
        }
        finally
        {
            crops.ForEach(c => c.Dispose());
        }
    }
}
