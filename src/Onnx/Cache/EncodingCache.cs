// Disk cache of encoder outputs, so a repeated run encodes nothing. Entries are safetensors files keyed by content:
//   text/<key>.safetensors     t5 (512, 4096), pooled (768); key = SHA-256(text-encoder fingerprint, prompt)
//   latents/<key>.safetensors  latents (16, H/8, W/8) scaled; key = SHA-256(VAE-encoder fingerprint, W, H, RGB bytes)
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
    readonly string _dir;
    readonly Stopwatch _textTime = new(), _imageTime = new();

    public int TextHits { get; private set; }
    public int TextEncoded { get; private set; }
    public int ImageHits { get; private set; }
    public int ImagesEncoded { get; private set; }
    public TimeSpan EncodingTime => _textTime.Elapsed + _imageTime.Elapsed;

    public EncodingCache(string dir)
    {
        _dir = dir;
        Directory.CreateDirectory(Path.Combine(dir, "text"));
        Directory.CreateDirectory(Path.Combine(dir, "latents"));
    }

    public PromptEmbedding Text(string prompt, FluxTextEncoder encoder)
    {
        string key = Key(encoder.Fingerprint, Encoding.UTF8.GetBytes(prompt));
        string path = Path.Combine(_dir, "text", key + ".safetensors");
        if (TryRead(path, f => new PromptEmbedding(f.ReadFloats("t5"), f.ReadFloats("pooled")),
                e => e.T5.Length == T5TextEncoder.Length * T5TextEncoder.Width && e.Pooled.Length == ClipTextEncoder.Width) is { } hit)
        {
            TextHits++;
            return hit;
        }
        _textTime.Start();
        var value = encoder.Encode(prompt);
        _textTime.Stop();
        TextEncoded++;
        SafetensorsWriter.Write(path,
        [
            new("t5", [T5TextEncoder.Length, T5TextEncoder.Width], value.T5),
            new("pooled", [ClipTextEncoder.Width], value.Pooled),
        ], new Dictionary<string, string> { ["prompt"] = prompt, ["encoder"] = encoder.Fingerprint });
        return value;
    }

    /// <summary>Scaled latents (16, H/8, W/8) of <paramref name="image"/>.</summary>
    public float[] Latents(Image<Rgb24> image, FluxVae vae)
    {
        var pixels = new byte[image.Width * image.Height * 3];
        image.CopyPixelDataTo(pixels);
        byte[] size = [.. BitConverter.GetBytes(image.Width), .. BitConverter.GetBytes(image.Height)];
        string key = Key(vae.EncoderFingerprint, [.. size, .. pixels]);
        string path = Path.Combine(_dir, "latents", key + ".safetensors");
        int expected = FluxVae.LatentChannels * (image.Height / FluxVae.Downsample) * (image.Width / FluxVae.Downsample);
        if (TryRead(path, f => f.ReadFloats("latents"), z => z.Length == expected) is { } hit)
        {
            ImageHits++;
            return hit;
        }
        _imageTime.Start();
        var value = vae.Encode(image);
        _imageTime.Stop();
        ImagesEncoded++;
        SafetensorsWriter.Write(path,
            [new("latents", [FluxVae.LatentChannels, image.Height / FluxVae.Downsample, image.Width / FluxVae.Downsample], value)],
            new Dictionary<string, string> { ["width"] = image.Width.ToString(), ["height"] = image.Height.ToString() });
        return value;
    }

    /// <summary>One line for the log: what was encoded, how long it took, what came from the cache.</summary>
    public string Summary() =>
        $"encoding: {TextEncoded} prompt(s) encoded in {_textTime.Elapsed.TotalSeconds:0.00} s, {TextHits} from cache; " +
        $"{ImagesEncoded} image(s) encoded in {_imageTime.Elapsed.TotalSeconds:0.00} s, {ImageHits} from cache";

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
