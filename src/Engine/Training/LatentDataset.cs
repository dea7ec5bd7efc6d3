using System.Globalization;
using MetaLoraNative.Engine.IO;

namespace MetaLoraNative.Engine.Training;

/// <summary>
/// Cached training data on disk. A dataset folder holds one sub-folder per identity; each example is one
/// safetensors file with
///   latents (GridH·GridW, in)  packed VAE latents,   txt (L_txt, ctx)  T5 embeddings,   pooled (vec)  CLIP pooled,
/// and metadata grid_h / grid_w. A Stage-2 folder is a single identity folder (the augmented crops of one photo).
/// </summary>
public static class LatentDataset
{
    public static void SaveExample(string path, Example e) =>
        SafetensorsWriter.Write(path,
        [
            new("latents", [e.ImageTokens, e.Latents.Length / e.ImageTokens], e.Latents),
            new("txt", [e.TxtLength, e.Txt.Length / e.TxtLength], e.Txt),
            new("pooled", [e.Pooled.Length], e.Pooled),
        ], new Dictionary<string, string>
        {
            ["grid_h"] = e.GridH.ToString(CultureInfo.InvariantCulture),
            ["grid_w"] = e.GridW.ToString(CultureInfo.InvariantCulture),
        });

    public static Example LoadExample(string path)
    {
        using var f = SafetensorsFile.Open(path);
        int Meta(string k) => f.Metadata.TryGetValue(k, out var v) && int.TryParse(v, CultureInfo.InvariantCulture, out int n) && n > 0 ? n
            : throw new InvalidDataException($"{path}: metadata '{k}' is missing or not a positive integer");
        foreach (var n in new[] { "latents", "txt", "pooled" })
            if (!f.Contains(n)) throw new InvalidDataException($"{path}: tensor '{n}' is missing (a cached example holds latents, txt and pooled)");
        int gh = Meta("grid_h"), gw = Meta("grid_w");
        var lat = f["latents"];
        if (lat.Shape.Length != 2 || lat.Shape[0] != gh * gw)
            throw new InvalidDataException($"{path}: latents {Shapes.Format(lat.Shape)} do not match the {gh}×{gw} grid");
        var txt = f["txt"];
        if (txt.Shape.Length != 2) throw new InvalidDataException($"{path}: txt must be (L_txt, ctx), got {Shapes.Format(txt.Shape)}");
        return new Example(f.ReadFloats("latents"), gh, gw, f.ReadFloats("txt"), txt.Shape[0], f.ReadFloats("pooled"), path);
    }

    public static void SaveIdentity(string folder, Identity id)
    {
        Directory.CreateDirectory(folder);
        for (int i = 0; i < id.Examples.Count; i++) SaveExample(Path.Combine(folder, $"{i:D4}.safetensors"), id.Examples[i]);
    }

    public static Identity LoadIdentity(string folder)
    {
        if (!Directory.Exists(folder)) throw new DirectoryNotFoundException($"{folder}: no such identity folder");
        var files = Directory.GetFiles(folder, "*.safetensors").Order(StringComparer.Ordinal).ToArray();
        if (files.Length == 0) throw new InvalidDataException($"{folder}: no cached examples (*.safetensors)");
        return new Identity(Path.GetFileName(Path.TrimEndingDirectorySeparator(folder)), files.Select(LoadExample).ToList());
    }

    /// <summary>Every identity sub-folder of a Stage-1 dataset, in name order.</summary>
    public static List<Identity> LoadIdentities(string root)
    {
        if (!Directory.Exists(root)) throw new DirectoryNotFoundException($"{root}: no such dataset folder");
        var dirs = Directory.GetDirectories(root).Order(StringComparer.Ordinal).ToArray();
        if (dirs.Length == 0) throw new InvalidDataException($"{root}: no identity sub-folders");
        return dirs.Select(LoadIdentity).ToList();
    }
}
