// Disk cache of encoder outputs, so a repeated run encodes nothing. Entries are safetensors files keyed by content:
//   text/<key>.safetensors     t5 (512, 4096), pooled (768); key = SHA-256(text-encoder fingerprint, prompt)
//   latents/<key>.safetensors  vae_latents (16, H/8, W/8) scaled, unpacked; key = SHA-256(VAE-encoder fingerprint, W, H, RGB bytes)
// (entries written before the tensor was named vae_latents call it "latents" and are still hits).
// The fingerprints cover the model and tokenizer files, so a different checkpoint never reads stale entries.
// A corrupt or mismatched entry is re-encoded and overwritten (the writer is atomic: no half-written entries).
using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Onnx.Text;
using MetaLoraNative.Onnx.Vae;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace MetaLoraNative.Onnx.Cache;

public sealed class EncodingCache
{
    const string T5Key = "t5", PooledKey = "pooled", VaeLatentsKey = "vae_latents", OldVaeLatentsKey = "latents";

    readonly string _dir;
    readonly Stopwatch _textTime = new(), _imageTime = new();

    public int TextHits { get; private set; }
    public int TextEncoded { get; private set; }
    public int ImageHits { get; private set; }
    public int ImagesEncoded { get; private set; }

    public EncodingCache(string dir)
    {
        _dir = dir;
        Directory.CreateDirectory(Path.Combine(dir, "text"));
        Directory.CreateDirectory(Path.Combine(dir, "latents"));
    }

    public PromptEmbedding Text(string prompt, FluxTextEncoder encoder)
    {
        string path = Path.Combine(_dir, "text", Key(encoder.Fingerprint, Encoding.UTF8.GetBytes(prompt)) + ".safetensors");
        var (value, hit) = GetOrEncode(path,
            f => new PromptEmbedding(f.ReadFloats(T5Key), f.ReadFloats(PooledKey)),
            e => e.T5.Length == T5TextEncoder.Length * T5TextEncoder.Width && e.Pooled.Length == ClipTextEncoder.Width,
            _textTime, () => encoder.Encode(prompt),
            e => [new(T5Key, [T5TextEncoder.Length, T5TextEncoder.Width], e.T5), new(PooledKey, [ClipTextEncoder.Width], e.Pooled)],
            new Dictionary<string, string> { ["prompt"] = prompt, ["encoder"] = encoder.Fingerprint });
        if (hit) TextHits++; else TextEncoded++;
        return value;
    }

    /// <summary>Scaled, unpacked VAE latents (16, H/8, W/8) of <paramref name="image"/>.</summary>
    public float[] VaeLatents(Image<Rgb24> image, FluxVae vae)
    {
        var pixels = new byte[image.Width * image.Height * 3];
        image.CopyPixelDataTo(pixels);
        byte[] size = [.. BitConverter.GetBytes(image.Width), .. BitConverter.GetBytes(image.Height)];
        string path = Path.Combine(_dir, "latents", Key(vae.EncoderFingerprint, [.. size, .. pixels]) + ".safetensors");
        int[] shape = [FluxVae.LatentChannels, image.Height / FluxVae.Downsample, image.Width / FluxVae.Downsample];
        var (value, hit) = GetOrEncode(path,
            f => f.ReadFloats(f.Contains(VaeLatentsKey) ? VaeLatentsKey : OldVaeLatentsKey),
            z => z.Length == shape[0] * shape[1] * shape[2],
            _imageTime, () => vae.Encode(image),
            z => [new(VaeLatentsKey, shape, z)],
            new Dictionary<string, string> { ["width"] = image.Width.ToString(), ["height"] = image.Height.ToString() });
        if (hit) ImageHits++; else ImagesEncoded++;
        return value;
    }

    /// <summary>The transformer's image tokens: <see cref="VaeLatents"/> packed to (H/16 · W/16, 64).</summary>
    public float[] PackedLatents(Image<Rgb24> image, FluxVae vae) =>
        LatentPacking.Pack(VaeLatents(image, vae), FluxVae.LatentChannels, image.Height / FluxVae.Downsample, image.Width / FluxVae.Downsample);

    /// <summary>One line for the log: what was encoded, how long it took, what came from the cache.</summary>
    public string Summary() =>
        $"encoding: {TextEncoded} prompt(s) encoded in {_textTime.Elapsed.TotalSeconds:0.00} s, {TextHits} from cache; " +
        $"{ImagesEncoded} image(s) encoded in {_imageTime.Elapsed.TotalSeconds:0.00} s, {ImageHits} from cache";

    /// <summary>The valid entry at <paramref name="path"/>, else a timed encode written there. Returns the value and whether it was a hit.</summary>
    static (T Value, bool Hit) GetOrEncode<T>(string path, Func<SafetensorsFile, T> read, Func<T, bool> valid, Stopwatch time,
        Func<T> encode, Func<T, SafetensorsTensor[]> tensors, Dictionary<string, string> metadata) where T : class
    {
        if (TryRead(path, read, valid) is { } hit) return (hit, true);
        time.Start();
        var value = encode();
        time.Stop();
        SafetensorsWriter.Write(path, tensors(value), metadata);
        return (value, false);
    }

    static T? TryRead<T>(string path, Func<SafetensorsFile, T> read, Func<T, bool> valid) where T : class
    {
        if (!File.Exists(path)) return null;
        try
        {
            using var f = SafetensorsFile.Open(path);
            var value = read(f);
            return valid(value) ? value : null;
        }
        catch (Exception e) when (e is SafetensorsFormatException or InvalidDataException or IOException or KeyNotFoundException or ArgumentException)
        {
            return null;   // unreadable entry: encode again and overwrite it
        }
    }

    static string Key(string fingerprint, byte[] content)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        sha.AppendData(Encoding.UTF8.GetBytes(fingerprint + "\n"));
        sha.AppendData(content);
        return Convert.ToHexStringLower(sha.GetHashAndReset());
    }
}
