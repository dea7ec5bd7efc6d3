// Stage-2 augmentation of the paper (§3): from one photo, crops around the face at five aspect ratios and five sizes.
//   f_long = longer side of the face box
//   aspect ratios (width:height) 16:9, 4:3, 1:1, 3:4, 9:16; shorter crop side = f_long x {1.5, 2, 2.5, 3.5, 4.5}
//   the face is centred, the crop shifted (not shrunk) to stay inside the image
//   a crop the image cannot hold becomes the largest crop of that aspect ratio that fits ("the closest possible size"),
//   and is dropped when a crop of that size was already taken
//   each crop is flipped horizontally with probability 1/2 (seeded), at most MaxImages crops, each resized to a
//   training bucket: both sides multiples of 16, area near Resolution^2, aspect ratio near the crop's.
using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Onnx.Faces;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using SixLabors.ImageSharp.Processing;

namespace MetaLoraNative.Onnx.Augment;

public sealed record AspectRatio(string Name, int Width, int Height)
{
    public double Value => (double)Width / Height;
}

/// <summary>One augmented training image. <see cref="Crop"/> is in source-image pixels (before flip and resize).</summary>
public sealed record AugmentedCrop(AspectRatio Aspect, double Multiplier, Rectangle Crop, bool Flipped, bool Clamped,
    Image<Rgb24> Image) : IDisposable
{
    public void Dispose() => Image.Dispose();
}

public sealed record AugmentOptions
{
    public int Resolution { get; init; } = 512;
    public int Seed { get; init; } = 0;
    public int MaxImages { get; init; } = 25;
    public bool Flip { get; init; } = true;
}

public static class FaceAugmenter
{
    public static readonly IReadOnlyList<AspectRatio> AspectRatios =
    [
        new("16:9", 16, 9), new("4:3", 4, 3), new("1:1", 1, 1), new("3:4", 3, 4), new("9:16", 9, 16),
    ];

    public static readonly IReadOnlyList<double> Multipliers = [1.5, 2, 2.5, 3.5, 4.5];

    /// <summary>
    /// Crop rectangles for a face box in an image, in the order aspect ratio x multiplier, duplicates removed.
    /// Pure geometry: no pixels, no randomness.
    /// </summary>
    public static List<(AspectRatio Aspect, double Multiplier, Rectangle Crop, bool Clamped)> PlanCrops(
        int imageWidth, int imageHeight, RectangleF face)
    {
        float fLong = MathF.Max(face.Width, face.Height);
        float cx = face.X + face.Width / 2, cy = face.Y + face.Height / 2;
        var plans = new List<(AspectRatio, double, Rectangle, bool)>();
        var seen = new HashSet<(int, int)>();
        foreach (var ar in AspectRatios)
        {
            foreach (var m in Multipliers)
            {
                double shorter = fLong * m;
                // Landscape: the height is the shorter side; portrait: the width.
                double w = ar.Width >= ar.Height ? shorter * ar.Value : shorter;
                double h = ar.Width >= ar.Height ? shorter : shorter / ar.Value;
                bool clamped = false;
                double fit = Math.Min(imageWidth / w, imageHeight / h);
                if (fit < 1)
                {
                    w *= fit;
                    h *= fit;
                    clamped = true;
                }
                int cw = Math.Clamp((int)Math.Round(w), 1, imageWidth), ch = Math.Clamp((int)Math.Round(h), 1, imageHeight);
                if (!seen.Add((cw, ch))) continue;   // same size => same crop (the position is determined by the face)
                int x = Math.Clamp((int)Math.Round(cx - cw / 2.0), 0, imageWidth - cw);
                int y = Math.Clamp((int)Math.Round(cy - ch / 2.0), 0, imageHeight - ch);
                plans.Add((ar, m, new Rectangle(x, y, cw, ch), clamped));
            }
        }
        return plans;
    }

    /// <summary>
    /// Training bucket for an aspect ratio: sides multiples of 16, area close to resolution^2.
    /// E.g. 512 and 16:9 -> 688x384; 1:1 -> 512x512.
    /// </summary>
    public static (int Width, int Height) Bucket(double aspect, int resolution)
    {
        double w = resolution * Math.Sqrt(aspect), h = resolution / Math.Sqrt(aspect);
        const int side = FluxConfig.PixelsPerToken;   // whole latent tokens
        return (Math.Max(side, (int)Math.Round(w / side) * side), Math.Max(side, (int)Math.Round(h / side) * side));
    }

    /// <summary>Detects the face (largest if several, with a warning) and builds the augmented set.</summary>
    public static List<AugmentedCrop> Augment(Image<Rgb24> image, IFaceDetector detector, AugmentOptions options,
        string label, Action<string>? warn = null)
    {
        var face = FaceMath.PickLargest(detector.Detect(image), label, warn);
        return Augment(image, face.Box, options);
    }

    public static List<AugmentedCrop> Augment(Image<Rgb24> image, RectangleF face, AugmentOptions options)
    {
        if (options.Resolution < 64 || options.Resolution % FluxConfig.PixelsPerToken != 0)
            throw new InputException("--resolution", $"resolution must be a multiple of {FluxConfig.PixelsPerToken} and at least 64, got {options.Resolution}");
        var rng = new Random(options.Seed);
        var result = new List<AugmentedCrop>();
        foreach (var (aspect, m, crop, clamped) in PlanCrops(image.Width, image.Height, face).Take(options.MaxImages))
        {
            // One draw per crop whether or not flipping is on, so a seed gives the same flips at any --max.
            bool flip = rng.NextDouble() < 0.5 && options.Flip;
            var (bw, bh) = Bucket((double)crop.Width / crop.Height, options.Resolution);
            var img = image.Clone(c =>
            {
                c.Crop(crop).Resize(bw, bh, KnownResamplers.Lanczos3);
                if (flip) c.Flip(FlipMode.Horizontal);
            });
            result.Add(new AugmentedCrop(aspect, m, crop, flip, clamped, img));
        }
        return result;
    }
}
