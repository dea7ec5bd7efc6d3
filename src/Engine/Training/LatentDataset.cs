using System.Globalization;
using MetaLoraNative.Engine.IO;

namespace MetaLoraNative.Engine.Training;

/// <summary>
/// Cached training data on disk. A dataset folder holds one sub-folder per identity; each example is one
/// safetensors file with
///   packed_latents (GridH·GridW, in)  packed VAE latents,   t5 (L_t5, ctx)  T5 embeddings,   pooled (vec)  CLIP pooled,
/// and metadata grid_h / grid_w. A Stage-2 folder is a single identity folder (the augmented crops of one photo).
/// Files written before the keys were named for what they hold ("latents", "txt") still load.
/// </summary>
public static class LatentDataset
{
    const string PackedLatentsKey = "packed_latents", T5Key = "t5", PooledKey = "pooled";
    const string OldPackedLatentsKey = "latents", OldT5Key = "txt";

    public static void SaveExample(string path, Example e) =>
        SafetensorsWriter.Write(path,
        [
            new(PackedLatentsKey, [e.ImageTokens, e.PackedLatents.Length / e.ImageTokens], e.PackedLatents),
            new(T5Key, [e.T5Length, e.T5.Length / e.T5Length], e.T5),
            new(PooledKey, [e.Pooled.Length], e.Pooled),
        ], new Dictionary<string, string>
        {
            ["grid_h"] = e.GridH.ToString(CultureInfo.InvariantCulture),
            ["grid_w"] = e.GridW.ToString(CultureInfo.InvariantCulture),
        });

    /// <summary>
    /// Loads one example, refused (<see cref="InputFileException"/> naming the file and the tensor) when a key or the
    /// grid metadata is missing, a shape does not match, or a value is NaN or infinite (it would poison every step).
    /// </summary>
    public static Example LoadExample(string path)
    {
        using var f = SafetensorsFile.Open(path);
        int Meta(string k) => f.Metadata.TryGetValue(k, out var v) && int.TryParse(v, NumberStyles.None, CultureInfo.InvariantCulture, out int n) && n > 0 ? n
            : throw new InputFileException(path, $"metadata '{k}' is missing or not a positive integer");
        string Key(string key, string? old = null) => f.Contains(key) ? key : old != null && f.Contains(old) ? old
            : throw new InputFileException(path, $"tensor '{key}' is missing (a cached example holds {PackedLatentsKey}, {T5Key} and {PooledKey})");
        string latentsKey = Key(PackedLatentsKey, OldPackedLatentsKey), t5Key = Key(T5Key, OldT5Key), pooledKey = Key(PooledKey);
        int gh = Meta("grid_h"), gw = Meta("grid_w");
        var lat = f[latentsKey];
        if (lat.Shape.Length != 2 || (long)gh * gw > int.MaxValue || lat.Shape[0] != gh * gw)
            throw new InputFileException(path, $"{latentsKey} {Shapes.Format(lat.Shape)} do not match the {gh}×{gw} grid");
        var t5 = f[t5Key];
        if (t5.Shape.Length != 2) throw new InputFileException(path, $"{t5Key} must be (L_t5, ctx), got {Shapes.Format(t5.Shape)}");
        if (t5.Shape[0] == 0) throw new InputFileException(path, $"{t5Key} {Shapes.Format(t5.Shape)} holds no text tokens");
        return new Example(f.ReadFiniteFloats(latentsKey), gh, gw, f.ReadFiniteFloats(t5Key), t5.Shape[0], f.ReadFiniteFloats(pooledKey), path);
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
        if (files.Length == 0) throw new InputFileException(folder, "no cached examples (*.safetensors)");
        return new Identity(Path.GetFileName(Path.TrimEndingDirectorySeparator(folder)), files.Select(LoadExample).ToList());
    }

    /// <summary>Every identity sub-folder of a Stage-1 dataset, in name order.</summary>
    public static List<Identity> LoadIdentities(string root)
    {
        if (!Directory.Exists(root)) throw new DirectoryNotFoundException($"{root}: no such dataset folder");
        var dirs = Directory.GetDirectories(root).Order(StringComparer.Ordinal).ToArray();
        if (dirs.Length == 0) throw new InputFileException(root, "no identity sub-folders");
        return dirs.Select(LoadIdentity).ToList();
    }
}
