// One folder holds every ONNX model and tokenizer file, named by a models.json manifest:
//   {
//     "format": "metalora-models/1",
//     "components": {
//       "t5":             { "model": "t5_encoder.onnx",      "tokenizer": "spiece.model" },
//       "clip_l":         { "model": "clip_l_text.onnx",     "tokenizer": "bpe_simple_vocab_16e6.txt" },
//       "vae_encoder":    { "model": "vae_encoder.onnx" },
//       "vae_decoder":    { "model": "vae_decoder.onnx" },
//       "clip_b32_image": { "model": "clip_b32_image.onnx" },
//       "clip_b32_text":  { "model": "clip_b32_text.onnx",   "tokenizer": "bpe_simple_vocab_16e6.txt" },
//       "face_detector":  { "model": "blazeface_back_256.onnx", "kind": "blazeface" },
//       "face_embedder":  { "model": "facenet_vggface2.onnx", "kind": "facenet" }     // or "aligned112"
//     }
//   }
// Paths are relative to the folder. Check() reads each model's inputs/outputs from the file header (no weights
// loaded) and reports, one line per problem, what is missing or wrong.
using System.Text.Json;
using System.Text.Json.Serialization;
using MetaLoraNative.Onnx.Clip;
using MetaLoraNative.Onnx.Export;
using MetaLoraNative.Onnx.Faces;
using MetaLoraNative.Onnx.Runtime;
using MetaLoraNative.Onnx.Text;
using MetaLoraNative.Onnx.Tokenizers;
using MetaLoraNative.Onnx.Vae;

namespace MetaLoraNative.Onnx.Models;

public sealed record ComponentEntry
{
    [JsonPropertyName("model")] public string Model { get; init; } = "";
    [JsonPropertyName("tokenizer")] public string? Tokenizer { get; init; }
    [JsonPropertyName("kind")] public string? Kind { get; init; }
}

public sealed record ModelsManifest
{
    public const string CurrentFormat = "metalora-models/1";
    [JsonPropertyName("format")] public string Format { get; init; } = CurrentFormat;
    [JsonPropertyName("components")] public Dictionary<string, ComponentEntry> Components { get; init; } = [];
}

public static class ModelsFolder
{
    public const string ManifestName = "models.json";

    public const string T5 = "t5", ClipL = "clip_l", VaeEncoder = "vae_encoder", VaeDecoder = "vae_decoder",
        ClipB32Image = "clip_b32_image", ClipB32Text = "clip_b32_text", FaceDetector = "face_detector", FaceEmbedder = "face_embedder";

    /// <summary>Every component, what it is used for, and whether it needs a tokenizer file.</summary>
    public static readonly IReadOnlyList<(string Name, string Purpose, bool NeedsTokenizer)> Components =
    [
        (T5, "T5-XXL text encoder (training, sampling)", true),
        (ClipL, "CLIP-L pooled text encoder (training, sampling)", true),
        (VaeEncoder, "FLUX VAE encoder (training)", false),
        (VaeDecoder, "FLUX VAE decoder (sampling)", false),
        (ClipB32Image, "CLIP ViT-B/32 image encoder (score: CLIP-T)", false),
        (ClipB32Text, "CLIP ViT-B/32 text encoder (score: CLIP-T)", true),
        (FaceDetector, "face detector (augment, score)", false),
        (FaceEmbedder, "face embedder (score: FaceSim, R-FaceSim)", false),
    ];

    static ManifestJson Json => ManifestJson.Default;

    public static ModelsManifest ReadManifest(string dir)
    {
        string path = Path.Combine(dir, ManifestName);
        if (!File.Exists(path)) throw new FileNotFoundException($"no {ManifestName} in models folder {dir}", path);
        try
        {
            return JsonSerializer.Deserialize(File.ReadAllText(path), Json.ModelsManifest)
                   ?? throw new InvalidDataException($"{path} is empty");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path} is not valid JSON: {e.Message}", e);
        }
    }

    public static void WriteManifest(string dir, ModelsManifest manifest) =>
        File.WriteAllText(Path.Combine(dir, ManifestName), JsonSerializer.Serialize(manifest, Json.ModelsManifest));

    /// <summary>
    /// Problems with the folder, one human-readable line each; an empty list means every component is present and has
    /// the expected inputs and outputs. <paramref name="only"/> limits the check to some components.
    /// </summary>
    public static IReadOnlyList<string> Check(string dir, IEnumerable<string>? only = null)
    {
        var problems = new List<string>();
        if (!Directory.Exists(dir)) return [$"models folder {dir} does not exist"];
        ModelsManifest manifest;
        try { manifest = ReadManifest(dir); }
        catch (Exception e) when (e is FileNotFoundException or InvalidDataException)
        {
            return [e.Message + " (write one as described in docs/ENCODERS.md)"];
        }
        if (manifest.Format != ModelsManifest.CurrentFormat)
            problems.Add($"{ManifestName}: format '{manifest.Format}', expected '{ModelsManifest.CurrentFormat}'");
        var wanted = only?.ToHashSet() ?? Components.Select(c => c.Name).ToHashSet();
        foreach (var (name, purpose, needsTokenizer) in Components.Where(c => wanted.Contains(c.Name)))
        {
            if (!manifest.Components.TryGetValue(name, out var entry) || string.IsNullOrWhiteSpace(entry.Model))
            {
                problems.Add($"{name}: not listed in {ManifestName} ({purpose})");
                continue;
            }
            string model = Path.Combine(dir, entry.Model);
            if (!File.Exists(model))
                problems.Add($"{name}: model file {model} is missing ({purpose})");
            else if (SignatureProblem(name, entry, model) is { } wrong)
                problems.Add($"{name}: {wrong}");
            if (needsTokenizer)
            {
                if (string.IsNullOrWhiteSpace(entry.Tokenizer)) problems.Add($"{name}: no tokenizer file named in {ManifestName}");
                else if (!File.Exists(Path.Combine(dir, entry.Tokenizer)))
                    problems.Add($"{name}: tokenizer file {Path.Combine(dir, entry.Tokenizer)} is missing");
            }
        }
        return problems;
    }

    static string? SignatureProblem(string name, ComponentEntry entry, string model)
    {
        try
        {
            var (inputs, outputs) = OnnxHeaderReader.Read(model);
            var signature = name switch
            {
                T5 => T5TextEncoder.Signature,
                ClipL => ClipTextEncoder.Signature,
                VaeEncoder => FluxVae.EncoderSignature,
                VaeDecoder => FluxVae.DecoderSignature,
                ClipB32Image => ClipScoreModel.ImageSignature,
                ClipB32Text => ClipScoreModel.TextSignature,
                FaceEmbedder when (entry.Kind ?? "facenet") == "facenet" => FacenetEmbedder.Signature,
                _ => null,   // detector outputs are matched by shape, aligned embedders by rank: checked at load
            };
            if (name == FaceDetector && (entry.Kind ?? "blazeface") != "blazeface") return $"unknown detector kind '{entry.Kind}' (known: blazeface)";
            if (name == FaceEmbedder && entry.Kind is not (null or "facenet" or "aligned112"))
                return $"unknown embedder kind '{entry.Kind}' (known: facenet, aligned112)";
            if (name == FaceDetector && !(inputs.Count == 1 && inputs[0].Dims.SequenceEqual([1, 256, 256, 3]) && outputs.Count == 4))
                return $"{model} does not look like BlazeFace back-256 (one (1, 256, 256, 3) input and four outputs)";
            signature?.Validate(inputs, outputs, model);
            return null;
        }
        catch (ModelLoadException e)
        {
            return e.Message;
        }
        catch (IOException e)
        {
            return $"{model} cannot be read: {e.Message}";
        }
    }

    /// <summary>One line per known component: the files models.json names for it (and their sizes), or that it is absent.</summary>
    public static IReadOnlyList<string> Listing(string dir)
    {
        var manifest = ReadManifest(dir);
        int width = Components.Max(c => c.Name.Length);
        string Size(string file) => File.Exists(Path.Combine(dir, file)) ? $"{new FileInfo(Path.Combine(dir, file)).Length / 1e6:0.0} MB" : "missing";
        return [.. Components.Select(c => manifest.Components.TryGetValue(c.Name, out var e) && !string.IsNullOrWhiteSpace(e.Model)
            ? $"{c.Name.PadRight(width)}  {e.Model} ({Size(e.Model)})" + (e.Tokenizer is { Length: > 0 } t ? $", tokenizer {t} ({Size(t)})" : "") +
              (e.Kind is { } k ? $", kind {k}" : "")
            : $"{c.Name.PadRight(width)}  -  (not listed: {c.Purpose})")];
    }

    public static string PathOf(string dir, ModelsManifest manifest, string component, bool tokenizer = false)
    {
        if (!manifest.Components.TryGetValue(component, out var entry))
            throw new ModelLoadException($"models folder {dir}: {ManifestName} lists no '{component}' component");
        string? file = tokenizer ? entry.Tokenizer : entry.Model;
        if (string.IsNullOrWhiteSpace(file))
            throw new ModelLoadException($"models folder {dir}: '{component}' names no {(tokenizer ? "tokenizer" : "model")} file");
        return Path.Combine(dir, file);
    }

    /// <summary>
    /// Writes a complete folder of tiny random-weight models and small tokenizer files with the real layouts
    /// (tests, `metalora demo`). The face detector is a stub that always reports one face in the middle of the image.
    /// </summary>
    public static void WriteTiny(string dir)
    {
        Directory.CreateDirectory(dir);
        TinyModels.T5(Path.Combine(dir, "t5_encoder.onnx"));
        TinyModels.ClipL(Path.Combine(dir, "clip_l_text.onnx"));
        TinyModels.VaeEncoder(Path.Combine(dir, "vae_encoder.onnx"));
        TinyModels.VaeDecoder(Path.Combine(dir, "vae_decoder.onnx"));
        TinyModels.ClipB32Image(Path.Combine(dir, "clip_b32_image.onnx"));
        TinyModels.ClipB32Text(Path.Combine(dir, "clip_b32_text.onnx"));
        TinyModels.Detector(Path.Combine(dir, "face_detector.onnx"));
        TinyModels.Facenet(Path.Combine(dir, "facenet.onnx"));
        TinyModels.ClipMerges(Path.Combine(dir, "clip_merges.txt"));
        TinyModels.UnigramModel(Path.Combine(dir, "spiece.model"));
        WriteManifest(dir, new ModelsManifest
        {
            Components = new()
            {
                [T5] = new() { Model = "t5_encoder.onnx", Tokenizer = "spiece.model" },
                [ClipL] = new() { Model = "clip_l_text.onnx", Tokenizer = "clip_merges.txt" },
                [VaeEncoder] = new() { Model = "vae_encoder.onnx" },
                [VaeDecoder] = new() { Model = "vae_decoder.onnx" },
                [ClipB32Image] = new() { Model = "clip_b32_image.onnx" },
                [ClipB32Text] = new() { Model = "clip_b32_text.onnx", Tokenizer = "clip_merges.txt" },
                [FaceDetector] = new() { Model = "face_detector.onnx", Kind = "blazeface" },
                [FaceEmbedder] = new() { Model = "facenet.onnx", Kind = "facenet" },
            },
        });
    }
}

/// <summary>Source-generated JSON for models.json (the CLI is published trimmed): comments and trailing commas allowed.</summary>
[JsonSourceGenerationOptions(WriteIndented = true, ReadCommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true)]
[JsonSerializable(typeof(ModelsManifest))]
internal sealed partial class ManifestJson : JsonSerializerContext;
