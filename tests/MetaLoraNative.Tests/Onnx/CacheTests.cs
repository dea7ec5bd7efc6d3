using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Training;
using MetaLoraNative.Onnx.Augment;
using MetaLoraNative.Onnx.Cache;
using MetaLoraNative.Onnx.Datasets;
using MetaLoraNative.Onnx.Vae;
using MetaLoraNative.Onnx.Models;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace MetaLoraNative.Tests.Onnx;

public class CacheTests(TinyFolderFixture tiny) : IClassFixture<TinyFolderFixture>
{
    [Fact]
    public void SecondRunEncodesNothingAndGivesTheSameData()
    {
        string dir = TestAssets.TempDir("cache");
        string photo = Path.Combine(dir, "person.png");
        using (var img = new Image<Rgb24>(640, 480))
        {
            for (int y = 0; y < 480; y++)
                for (int x = 0; x < 640; x++)
                    img[x, y] = new Rgb24((byte)x, (byte)y, (byte)(x ^ y));
            img.SaveAsPng(photo);
        }
        const string prompt = "A woman in a 1920s noir setting, wearing a vintage dress, moody lighting.";
        var options = new AugmentOptions { Resolution = 256, MaxImages = 6 };
        string cacheDir = Path.Combine(dir, "cache");

        Identity first, second;
        var cache1 = new EncodingCache(cacheDir);
        using (var models = new ModelSet(tiny.Dir)) first = Stage2Data.Prepare(photo, prompt, models, cache1, options);
        Assert.Equal(1, cache1.TextEncoded);
        Assert.Equal(6, cache1.ImagesEncoded + cache1.ImageHits);   // two crops may share pixels only if identical
        Assert.Equal(0, cache1.TextHits);

        var cache2 = new EncodingCache(cacheDir);
        using (var models = new ModelSet(tiny.Dir)) second = Stage2Data.Prepare(photo, prompt, models, cache2, options);
        Assert.Equal(0, cache2.TextEncoded);
        Assert.Equal(0, cache2.ImagesEncoded);
        Assert.Equal(1, cache2.TextHits);
        Assert.Equal(6, cache2.ImageHits);
        Assert.Contains("0 prompt(s) encoded", cache2.Summary());

        Assert.Equal(first.Examples.Count, second.Examples.Count);
        for (int i = 0; i < first.Examples.Count; i++)
        {
            Assert.Equal(first.Examples[i].PackedLatents, second.Examples[i].PackedLatents);
            Assert.Equal(first.Examples[i].Pooled, second.Examples[i].Pooled);
            Assert.Equal(first.Examples[i].GridH * first.Examples[i].GridW * 64, first.Examples[i].PackedLatents.Length);
            Assert.Equal(512 * 4096, first.Examples[i].T5.Length);
        }
        // The engine's dataset writer and reader take the result as is.
        LatentDataset.SaveIdentity(Path.Combine(dir, "dataset", "person"), second);
        var loaded = LatentDataset.LoadIdentity(Path.Combine(dir, "dataset", "person"));
        Assert.Equal(second.Examples[0].PackedLatents, loaded.Examples[0].PackedLatents);

        // A damaged entry is encoded again, not trusted.
        var entry = Directory.GetFiles(Path.Combine(cacheDir, "text")).Single();
        File.WriteAllBytes(entry, [1, 2, 3]);
        var cache3 = new EncodingCache(cacheDir);
        using (var models = new ModelSet(tiny.Dir)) Stage2Data.Prepare(photo, prompt, models, cache3, options);
        Assert.Equal(1, cache3.TextEncoded);
        Directory.Delete(dir, true);
    }

    [Fact]
    public void VaeLatentsAreCachedUnpackedAndEntriesUnderTheOldKeyAreStillHits()
    {
        string dir = TestAssets.TempDir("cache-keys");
        using var image = new Image<Rgb24>(64, 48);
        for (int y = 0; y < 48; y++)
            for (int x = 0; x < 64; x++)
                image[x, y] = new Rgb24((byte)(4 * x), (byte)(5 * y), (byte)(x * y));
        using var models = new ModelSet(tiny.Dir);
        var vae = models.OpenVae(encoder: true, decoder: false);
        var cache = new EncodingCache(dir);
        var z = cache.VaeLatents(image, vae);
        Assert.Equal(1, cache.ImagesEncoded);
        Assert.Equal(vae.Encode(image), z);                                    // (16, H/8, W/8), unpacked
        Assert.Equal(LatentPacking.Pack(z, 16, 6, 8), cache.PackedLatents(image, vae));
        Assert.Equal(1, cache.ImageHits);

        // rewrite the entry as caches wrote it before the tensor was named vae_latents
        string entry = Directory.GetFiles(Path.Combine(dir, "latents")).Single();
        using (var f = SafetensorsFile.Open(entry)) Assert.Equal([16, 6, 8], f["vae_latents"].Shape);
        SafetensorsWriter.Write(entry, [new SafetensorsTensor("latents", [16, 6, 8], z)]);
        var again = new EncodingCache(dir);
        Assert.Equal(z, again.VaeLatents(image, vae));
        Assert.Equal((1, 0), (again.ImageHits, again.ImagesEncoded));
        Directory.Delete(dir, true);
    }
}
