// From folders of photos (one per person) to the engine's cached Stage-1 dataset (Engine.Training.LatentDataset):
// every photo is centre-cropped to the training bucket nearest its aspect ratio (area near resolution², sides multiples
// of 16), VAE-encoded to packed latents, and captioned with the prompt template ("{class}" → man/woman from the
// person's class.txt). Every encoder call goes through the EncodingCache, so a re-run encodes nothing.
using MetaLoraNative.Engine.Training;
using MetaLoraNative.Onnx.Augment;
using MetaLoraNative.Onnx.Imaging;
using MetaLoraNative.Onnx.Models;
using MetaLoraNative.Onnx.Text;
using MetaLoraNative.Onnx.Vae;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.Processing;

namespace MetaLoraNative.Onnx.Cache;

public static class Stage1Data
{
    static readonly string[] ImageExtensions = [".png", ".jpg", ".jpeg", ".webp", ".bmp"];

    /// <summary>Encodes every person folder under <paramref name="root"/> and writes each to outRoot/&lt;person&gt;.</summary>
    public static int Prepare(string root, string outRoot, string promptTemplate, string defaultClass, int resolution,
                              ModelSet models, EncodingCache cache, Action<string>? log = null)
    {
        if (!Directory.Exists(root)) throw new DirectoryNotFoundException($"{root}: no such folder of identities");
        var people = Directory.GetDirectories(root).Order(StringComparer.Ordinal).ToArray();
        if (people.Length == 0) throw new InvalidDataException($"{root}: no person sub-folders (one folder of photos per identity)");
        FluxTextEncoder text = models.OpenTextEncoder();
        FluxVae vae = models.OpenVae(encoder: true, decoder: false);
        int written = 0;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        for (int p = 0; p < people.Length; p++)
        {
            string dir = people[p], name = Path.GetFileName(dir);
            string cls = File.Exists(Path.Combine(dir, "class.txt")) ? File.ReadAllText(Path.Combine(dir, "class.txt")).Trim() : defaultClass;
            var embedding = cache.Text(promptTemplate.Replace("{class}", cls), text);
            var photos = Directory.GetFiles(dir).Where(f => ImageExtensions.Contains(Path.GetExtension(f).ToLowerInvariant()))
                                  .Order(StringComparer.Ordinal).ToArray();
            if (photos.Length == 0) { log?.Invoke($"warning: {dir} has no photos; skipped"); continue; }
            var examples = new List<Example>();
            foreach (var file in photos)
            {
                using var image = ImageIO.LoadRgb(file);
                var (w, h) = FaceAugmenter.Bucket((double)image.Width / image.Height, resolution);
                // centre crop to the bucket's aspect ratio, then resize: no distortion
                double scale = Math.Max((double)w / image.Width, (double)h / image.Height);
                int cw = Math.Min(image.Width, (int)Math.Round(w / scale)), ch = Math.Min(image.Height, (int)Math.Round(h / scale));
                image.Mutate(c => c.Crop(new Rectangle((image.Width - cw) / 2, (image.Height - ch) / 2, cw, ch)).Resize(w, h));
                var z = cache.Latents(image, vae);
                var packed = LatentPacking.Pack(z, FluxVae.LatentChannels, h / FluxVae.Downsample, w / FluxVae.Downsample);
                examples.Add(new Example(packed, h / 16, w / 16, embedding.T5, T5TextEncoder.Length, embedding.Pooled));
            }
            LatentDataset.SaveIdentity(Path.Combine(outRoot, name), new Identity(name, examples));
            written++;
            double perPerson = clock.Elapsed.TotalSeconds / (p + 1);
            log?.Invoke($"[{p + 1}/{people.Length}] {name}: {examples.Count} photos ({cls}); eta {TimeSpan.FromSeconds(perPerson * (people.Length - p - 1)):hh\\:mm\\:ss}");
        }
        log?.Invoke(cache.Summary());
        return written;
    }
}
