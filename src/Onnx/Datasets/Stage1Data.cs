// From folders of photos (one per person, PersonFolders) to the engine's cached Stage-1 dataset
// (Engine.Training.LatentDataset): every photo is centre-cropped to the training bucket nearest its aspect ratio (area
// near resolution², sides multiples of 16), VAE-encoded to packed latents, and captioned with the prompt template
// ("{class}" → man/woman from the person's class.txt). Every encoder call goes through the EncodingCache, so a re-run
// encodes nothing.
using MetaLoraNative.Engine.Training;
using MetaLoraNative.Onnx.Augment;
using MetaLoraNative.Onnx.Cache;
using MetaLoraNative.Onnx.Imaging;
using MetaLoraNative.Onnx.Models;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.Processing;

namespace MetaLoraNative.Onnx.Datasets;

public static class Stage1Data
{
    /// <summary>Encodes every person folder under <paramref name="root"/> and writes each to outRoot/&lt;person&gt;.</summary>
    public static int Prepare(string root, string outRoot, string promptTemplate, SubjectClass defaultClass, int resolution,
                              ModelSet models, EncodingCache cache, Action<string>? log = null)
    {
        var people = PersonFolders.Read(root, defaultClass, w => log?.Invoke($"warning: {w}"));
        var encoder = new ExampleEncoder(models, cache);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        for (int p = 0; p < people.Count; p++)
        {
            var person = people[p];
            var caption = encoder.Caption(promptTemplate.Replace("{class}", person.Class.Word()));
            var examples = new List<Example>();
            foreach (var file in person.Photos)
            {
                using var image = ImageIO.LoadRgb(file);
                var (w, h) = FaceAugmenter.Bucket((double)image.Width / image.Height, resolution);
                // centre crop to the bucket's aspect ratio, then resize: no distortion
                double scale = Math.Max((double)w / image.Width, (double)h / image.Height);
                int cw = Math.Min(image.Width, (int)Math.Round(w / scale)), ch = Math.Min(image.Height, (int)Math.Round(h / scale));
                image.Mutate(c => c.Crop(new Rectangle((image.Width - cw) / 2, (image.Height - ch) / 2, cw, ch)).Resize(w, h));
                examples.Add(encoder.Example(image, caption));
            }
            LatentDataset.SaveIdentity(Path.Combine(outRoot, person.Name), new Identity(person.Name, examples));
            double perPerson = clock.Elapsed.TotalSeconds / (p + 1);
            log?.Invoke($"[{p + 1}/{people.Count}] {person.Name}: {examples.Count} photos ({person.Class.Word()}); " +
                        $"eta {TimeSpan.FromSeconds(perPerson * (people.Count - p - 1)):hh\\:mm\\:ss}");
        }
        log?.Invoke(cache.Summary());
        return people.Count;
    }
}
