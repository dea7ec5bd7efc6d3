// The FLUX autoencoder (16 latent channels, 8x downsampling) behind ONNX Runtime, and the 2x2 latent packing the
// transformer reads.
//   encoder: "image" float32 (1, 3, H, W) in [-1, 1] -> "latent" float32 (1, 16, H/8, W/8): the mean of the latent
//            distribution, before scaling (deterministic, so cached latents do not depend on a seed)
//   decoder: "latent" float32 (1, 16, h, w), unscaled -> "image" float32 (1, 3, 8h, 8w) in [-1, 1]
// Scaling as in BFL's AutoEncoder: z = 0.3611 (z_raw - 0.1159); z_raw = z / 0.3611 + 0.1159.
// Packing as FLUX's "b c (h ph) (w pw) -> b (h w) (c ph pw)": (16, H/8, W/8) -> (H/16 * W/16, 64),
// token = row * (W/16) + col, channel = c * 4 + dy * 2 + dx.
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Onnx.Imaging;
using MetaLoraNative.Onnx.Runtime;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace MetaLoraNative.Onnx.Vae;

public static class LatentPacking
{
    /// <summary>(C, h, w) -> (h/2 * w/2, C * 4).</summary>
    public static float[] Pack(ReadOnlySpan<float> z, int channels, int height, int width)
    {
        if (height % 2 != 0 || width % 2 != 0) throw new ArgumentException($"latent size {height}x{width} must be even");
        if (z.Length != channels * height * width) throw new ArgumentException($"latent has {z.Length} values, expected {channels}x{height}x{width}");
        int h2 = height / 2, w2 = width / 2, d = channels * 4;
        var packed = new float[h2 * w2 * d];
        for (int c = 0; c < channels; c++)
            for (int y = 0; y < height; y++)
                for (int x = 0; x < width; x++)
                {
                    int token = (y / 2) * w2 + x / 2;
                    int ch = c * 4 + (y % 2) * 2 + x % 2;
                    packed[token * d + ch] = z[(c * height + y) * width + x];
                }
        return packed;
    }

    /// <summary>(h/2 * w/2, C * 4) -> (C, h, w); the exact inverse of Pack.</summary>
    public static float[] Unpack(ReadOnlySpan<float> packed, int channels, int height, int width)
    {
        int h2 = height / 2, w2 = width / 2, d = channels * 4;
        if (packed.Length != h2 * w2 * d) throw new ArgumentException($"packed latent has {packed.Length} values, expected {h2 * w2}x{d}");
        var z = new float[channels * height * width];
        for (int c = 0; c < channels; c++)
            for (int y = 0; y < height; y++)
                for (int x = 0; x < width; x++)
                    z[(c * height + y) * width + x] = packed[((y / 2) * w2 + x / 2) * d + c * 4 + (y % 2) * 2 + x % 2];
        return z;
    }
}

public sealed class FluxVae : IDisposable
{
    public const int LatentChannels = 16, Downsample = 8;
    public const float ScalingFactor = 0.3611f, ShiftFactor = 0.1159f;
    public const string ImageName = "image", LatentName = "latent";

    public static ModelSignature EncoderSignature { get; } = new("FLUX VAE encoder",
        [new TensorSpec(ImageName, TensorElementType.Float, [1, 3, -1, -1])],
        [new TensorSpec(LatentName, TensorElementType.Float, [1, LatentChannels, -1, -1])]);

    public static ModelSignature DecoderSignature { get; } = new("FLUX VAE decoder",
        [new TensorSpec(LatentName, TensorElementType.Float, [1, LatentChannels, -1, -1])],
        [new TensorSpec(ImageName, TensorElementType.Float, [1, 3, -1, -1])]);

    readonly InferenceSession? _encoder, _decoder;

    /// <summary>Content fingerprint of the encoder file (cache keys); empty without an encoder.</summary>
    public string EncoderFingerprint { get; }

    /// <summary>Either path may be null when only one direction is needed (training caches latents; sampling decodes).</summary>
    public FluxVae(string? encoderPath, string? decoderPath, OnnxSessionFactory? factory = null)
    {
        factory ??= OnnxSessionFactory.Default;
        _encoder = encoderPath is null ? null : factory.Create(encoderPath, EncoderSignature);
        EncoderFingerprint = encoderPath is null ? "" : Cache.ModelFingerprint.Of(encoderPath);
        try
        {
            _decoder = decoderPath is null ? null : factory.Create(decoderPath, DecoderSignature);
        }
        catch
        {
            _encoder?.Dispose();
            throw;
        }
    }

    /// <summary>Scaled latents (16, H/8, W/8) of an image whose sides are multiples of 16.</summary>
    public float[] Encode(Image<Rgb24> image)
    {
        var enc = _encoder ?? throw new InvalidOperationException("no VAE encoder loaded");
        int w = image.Width, h = image.Height;
        if (w % FluxConfig.PixelsPerToken != 0 || h % FluxConfig.PixelsPerToken != 0)
            throw new ArgumentException($"image {w}x{h}: both sides must be multiples of {FluxConfig.PixelsPerToken} (whole latent tokens)");
        var chw = ImageIO.ToChw(image, [127.5f, 127.5f, 127.5f], [127.5f, 127.5f, 127.5f]);   // [0, 255] -> [-1, 1]
        var input = new DenseTensor<float>(chw, [1, 3, h, w]);
        using var results = enc.Run([NamedOnnxValue.CreateFromTensor(ImageName, input)], [LatentName]);
        var z = results[0].AsEnumerable<float>().ToArray();
        int expected = LatentChannels * (h / Downsample) * (w / Downsample);
        if (z.Length != expected) throw new InvalidOperationException($"VAE encoder gave {z.Length} values for {w}x{h}, expected {expected}");
        for (int i = 0; i < z.Length; i++) z[i] = ScalingFactor * (z[i] - ShiftFactor);
        return z;
    }

    /// <summary>Packed latents (H/16 * W/16, 64), the transformer's image tokens.</summary>
    public float[] EncodePacked(Image<Rgb24> image) =>
        LatentPacking.Pack(Encode(image), LatentChannels, image.Height / Downsample, image.Width / Downsample);

    /// <summary>Image (width x height) from scaled latents (16, height/8, width/8).</summary>
    public Image<Rgb24> Decode(ReadOnlySpan<float> latents, int width, int height)
    {
        var dec = _decoder ?? throw new InvalidOperationException("no VAE decoder loaded");
        int lh = height / Downsample, lw = width / Downsample;
        if (latents.Length != LatentChannels * lh * lw) throw new ArgumentException($"latents have {latents.Length} values, expected 16x{lh}x{lw}");
        var raw = new float[latents.Length];
        for (int i = 0; i < raw.Length; i++) raw[i] = latents[i] / ScalingFactor + ShiftFactor;
        var input = new DenseTensor<float>(raw, [1, LatentChannels, lh, lw]);
        using var results = dec.Run([NamedOnnxValue.CreateFromTensor(LatentName, input)], [ImageName]);
        var img = results[0].AsEnumerable<float>().ToArray();
        if (img.Length != 3 * width * height) throw new InvalidOperationException($"VAE decoder gave {img.Length} values, expected 3x{height}x{width}");
        return ImageIO.FromChwSigned(img, width, height);
    }

    public Image<Rgb24> DecodePacked(ReadOnlySpan<float> packed, int width, int height) =>
        Decode(LatentPacking.Unpack(packed, LatentChannels, height / Downsample, width / Downsample), width, height);

    public void Dispose()
    {
        _encoder?.Dispose();
        _decoder?.Dispose();
    }
}
