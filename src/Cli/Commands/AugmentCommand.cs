using MetaLoraNative.Engine;
using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Onnx.Augment;
using MetaLoraNative.Onnx.Imaging;
using SixLabors.ImageSharp;

namespace MetaLoraNative.Cli.Commands;

/// <summary>`metalora augment IMAGE --out DIR`: the paper's Stage-2 crop set from one photo, plus a contact sheet.</summary>
public static class AugmentCommand
{
    public static Command Create()
    {
        var image = new Argument<string>("image") { Description = "The photo of the person (PNG, JPEG, WebP, BMP...)." };
        var output = new Option<string>("--out")
        {
            Description = "Folder for the crops (crop_NN_<aspect>_x<mult>[_flip].png), crops.json and contact_sheet.png.",
            Required = true,
        };
        var resolution = new Option<int>("--resolution")
        {
            Description = $"Training resolution: each crop is resized to a bucket with area near resolution^2 and both sides multiples of {Engine.Flux.FluxConfig.PixelsPerToken}.",
            DefaultValueFactory = _ => 512,
        }.AcceptOnlyFromAmong("512", "768", "1024");
        var seed = new Option<int>("--seed") { Description = "Seed of the random horizontal flips.", DefaultValueFactory = _ => 0 };
        var max = new Option<int>("--max") { Description = "Most crops to keep (the paper's plan yields at most 25).", DefaultValueFactory = _ => 25 }.AtLeast(1);
        var noFlip = new Option<bool>("--no-flip") { Description = "Turn off the random horizontal flips." };
        var detector = new Option<string?>("--detector")
        {
            Description = "Face detector .onnx (BlazeFace back-256 layout). Default: the face_detector of --models.",
        };
        var models = new Option<string?>("--models")
        {
            Description = "Models folder with a models.json (docs/ENCODERS.md); default $METALORA_MODELS. Used when --detector is not given.",
        };

        var command = new Command("augment",
            "Detect the face in one photo and write the paper's augmented training set: crops at 16:9, 4:3, 1:1, 3:4, 9:16 " +
            "with the shorter side f_long x {1.5, 2, 2.5, 3.5, 4.5} (f_long = longer side of the face box), face centred, " +
            "sizes the image cannot hold replaced by the largest that fits (duplicates dropped), random flips.");
        command.Arguments.Add(image);
        foreach (var o in new Option[] { output, resolution, seed, max, noFlip, detector, models }) command.Options.Add(o);

        command.SetAction(parse =>
        {
            string src = parse.GetValue(image)!, outDir = parse.GetValue(output)!;
            OutputPath.CheckFolder(outDir, "--out");
            int maxImages = parse.GetValue(max);
            if (maxImages < 1) throw new InputException("--max", "must be at least 1");
            using var det = OnnxCommandSupport.OpenDetector(parse.GetValue(detector), OnnxCommandSupport.ModelsDir(parse.GetValue(models)));
            using var photo = ImageIO.LoadRgb(src);
            var options = new AugmentOptions
            {
                Resolution = parse.GetValue(resolution), Seed = parse.GetValue(seed), MaxImages = maxImages, Flip = !parse.GetValue(noFlip),
            };
            var faces = det.Detect(photo);
            var crops = FaceAugmenter.Augment(photo, det, options, src);
            try
            {
                // built aside and moved into place: a failure half-way leaves no partial crop set (AtomicFolder)
                var face = faces.MaxBy(f => f.Area)!;
                AtomicFolder.Write(outDir, folder => WriteCrops(folder, src, photo, face, options, crops));
                if (SmallFaceWarning(crops, face.LongSide) is { } warning) Console.Error.WriteLine(warning);
                Console.WriteLine($"face {face.Box.Width:0}x{face.Box.Height:0} at ({face.Box.X:0}, {face.Box.Y:0}), f_long {face.LongSide:0}; " +
                                  $"{crops.Count} crops ({crops.Count(c => c.Clamped)} shrunk to fit, {crops.Count(c => c.Flipped)} flipped) -> {outDir}");
            }
            finally
            {
                crops.ForEach(c => c.Dispose());
            }
            return 0;
        });
        return command;
    }

    /// <summary>The crops, crops.json and contact_sheet.png into <paramref name="outDir"/>.</summary>
    static void WriteCrops(string outDir, string src, Image photo, Onnx.Faces.FaceDetection face, AugmentOptions options, IReadOnlyList<AugmentedCrop> crops)
    {
        var records = new JsonArray();
        var names = new List<string>();
        for (int i = 0; i < crops.Count; i++)
        {
            var c = crops[i];
            string name = $"crop_{i + 1:00}_{c.Aspect.Name.Replace(':', 'x')}_x{c.Multiplier:0.0}{(c.Flipped ? "_flip" : "")}.png";
            c.Image.SaveAsPng(Path.Combine(outDir, name));
            names.Add(Path.GetFileNameWithoutExtension(name)["crop_".Length..]);
            records.Add((JsonNode)new JsonObject
            {
                ["file"] = name, ["aspect"] = c.Aspect.Name, ["multiplier"] = c.Multiplier, ["flipped"] = c.Flipped, ["clamped"] = c.Clamped,
                ["source"] = new JsonObject { ["x"] = c.Crop.X, ["y"] = c.Crop.Y, ["width"] = c.Crop.Width, ["height"] = c.Crop.Height },
                ["width"] = c.Image.Width, ["height"] = c.Image.Height,
            });
        }
        var report = new JsonObject
        {
            ["source"] = Path.GetFullPath(src), ["width"] = photo.Width, ["height"] = photo.Height,
            ["face"] = new JsonObject { ["x"] = face.Box.X, ["y"] = face.Box.Y, ["width"] = face.Box.Width, ["height"] = face.Box.Height, ["score"] = face.Score },
            ["fLong"] = face.LongSide, ["resolution"] = options.Resolution, ["seed"] = options.Seed, ["crops"] = records,
        };
        File.WriteAllText(Path.Combine(outDir, "crops.json"), report.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        using var sheet = ContactSheet.Build(crops.Select(c => c.Image).ToList(), names);   // "01_4x3_x1.5_flip": index, aspect, scale
        sheet.SaveAsPng(Path.Combine(outDir, "contact_sheet.png"));
    }

    /// <summary>Above this, a crop resized up to the training bucket is mostly interpolation: the face is too small.</summary>
    public const double MaxUpscale = 4;

    /// <summary>How much a crop was enlarged: output pixels per source pixel along the width.</summary>
    public static double Upscale(AugmentedCrop c) => (double)c.Image.Width / c.Crop.Width;

    /// <summary>A warning when the tightest crops are upscaled more than <see cref="MaxUpscale"/>×; null otherwise.</summary>
    public static string? SmallFaceWarning(IReadOnlyList<AugmentedCrop> crops, double fLong)
    {
        var over = crops.Where(c => Upscale(c) > MaxUpscale).ToList();
        if (over.Count == 0) return null;
        return $"warning: the face is small (f_long {fLong:0} px): {over.Count} of {crops.Count} crops are upscaled more than {MaxUpscale:0}x " +
               $"(up to {over.Max(Upscale):0.0}x), so they will look soft; a photo with a larger face trains better";
    }
}
