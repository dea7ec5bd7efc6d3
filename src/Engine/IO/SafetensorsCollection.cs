using System.Text.Json;

namespace MetaLoraNative.Engine.IO;

/// <summary>
/// The tensors of one checkpoint, whether stored in a single .safetensors file or sharded diffusers-style as
/// "*.safetensors.index.json" plus shard files (the index's "weight_map" maps each tensor name to a shard file name
/// in the index's folder). Every shard is opened and validated up front, and every name in the weight map is checked
/// to exist in its shard, so a half-downloaded checkpoint fails at load, not mid-run.
/// </summary>
public sealed class SafetensorsCollection : IDisposable
{
    private readonly SafetensorsFile[] _files;
    private readonly Dictionary<string, SafetensorsFile> _owner;

    private SafetensorsCollection(string path, SafetensorsFile[] files, Dictionary<string, SafetensorsFile> owner)
    {
        Path = path;
        _files = files;
        _owner = owner;
        Files = files.Select(f => f.Path).ToArray();
    }

    /// <summary>The file, index or folder this collection was opened from.</summary>
    public string Path { get; }

    public IReadOnlyCollection<string> Names => _owner.Keys;

    /// <summary>Paths of the opened files: one for a single file, the shards (sorted by name) for an index.</summary>
    public IReadOnlyList<string> Files { get; }

    /// <summary>The first file's "__metadata__" (diffusers shards usually carry the same, or none).</summary>
    public IReadOnlyDictionary<string, string> Metadata => _files[0].Metadata;

    public bool Contains(string name) => _owner.ContainsKey(name);

    public SafetensorsEntry Entry(string name) => FileOf(name)[name];

    /// <summary>The open file that holds <paramref name="name"/> (for raw access from the GPU upload path).</summary>
    public SafetensorsFile FileOf(string name) =>
        _owner.TryGetValue(name, out var file)
            ? file
            : throw new KeyNotFoundException($"Tensor {SafetensorsHeader.Quote(name)} is not in safetensors checkpoint '{Path}'");

    public float[] ReadFloats(string name) => FileOf(name).ReadFloats(name);

    public void ReadFloats(string name, Span<float> destination) => FileOf(name).ReadFloats(name, destination);

    /// <summary>
    /// Opens a .safetensors file, a "*.safetensors.index.json", or a folder holding exactly one index (preferred)
    /// or, failing that, exactly one .safetensors file.
    /// </summary>
    public static SafetensorsCollection Open(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (Directory.Exists(path)) return Open(ResolveFolder(path));
        if (!File.Exists(path)) throw new FileNotFoundException($"No safetensors file, index or folder at '{path}'", path);

        if (path.EndsWith(".json", StringComparison.OrdinalIgnoreCase)) return OpenIndex(path);

        var file = SafetensorsFile.Open(path);
        return new SafetensorsCollection(path, [file], file.Entries.Keys.ToDictionary(n => n, _ => file, StringComparer.Ordinal));
    }

    private static string ResolveFolder(string folder)
    {
        string[] indexes = Directory.GetFiles(folder, "*.safetensors.index.json");
        if (indexes.Length == 1) return indexes[0];
        if (indexes.Length > 1)
            throw new SafetensorsFormatException(folder,
                $"folder holds {indexes.Length} index files ({string.Join(", ", indexes.Select(System.IO.Path.GetFileName).Order())}); open one of them directly");
        string[] files = Directory.GetFiles(folder, "*.safetensors");
        if (files.Length == 1) return files[0];
        throw new SafetensorsFormatException(folder, files.Length == 0
            ? "folder holds no .safetensors file and no *.safetensors.index.json"
            : $"folder holds {files.Length} .safetensors files and no *.safetensors.index.json to say how they fit together");
    }

    private static SafetensorsCollection OpenIndex(string indexPath)
    {
        // Index files are a few hundred KB; the same cap as for headers keeps a corrupt one from exhausting memory.
        long length = new FileInfo(indexPath).Length;
        if (length > SafetensorsHeader.MaxHeaderBytes)
            throw new SafetensorsFormatException(indexPath, $"index is {length} bytes, larger than the {SafetensorsHeader.MaxHeaderBytes}-byte limit");
        var weightMap = ReadWeightMap(indexPath, File.ReadAllBytes(indexPath));

        string folder = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(indexPath))!;
        var opened = new Dictionary<string, SafetensorsFile>(StringComparer.Ordinal);
        try
        {
            foreach (string shard in weightMap.Values.Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal))
            {
                string shardPath = System.IO.Path.Combine(folder, shard);
                if (!File.Exists(shardPath))
                    throw new SafetensorsFormatException(indexPath, $"shard file '{shard}' named in weight_map does not exist (looked for '{shardPath}')");
                opened.Add(shard, SafetensorsFile.Open(shardPath));
            }

            var owner = new Dictionary<string, SafetensorsFile>(StringComparer.Ordinal);
            foreach (var (name, shard) in weightMap)
            {
                var file = opened[shard];
                if (!file.Contains(name))
                    throw new SafetensorsFormatException(indexPath,
                        $"weight_map puts tensor {SafetensorsHeader.Quote(name)} in shard '{shard}', which does not contain it");
                owner.Add(name, file);
            }
            if (opened.Count == 0)
                throw new SafetensorsFormatException(indexPath, "weight_map is empty");
            return new SafetensorsCollection(indexPath, opened.Values.ToArray(), owner);
        }
        catch
        {
            foreach (var f in opened.Values) f.Dispose();
            throw;
        }
    }

    private static Dictionary<string, string> ReadWeightMap(string indexPath, byte[] bytes)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(bytes);
        }
        catch (JsonException e)
        {
            throw new SafetensorsFormatException(indexPath, $"index is not valid JSON ({e.Message})", e);
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object
                || !doc.RootElement.TryGetProperty("weight_map", out var map)
                || map.ValueKind != JsonValueKind.Object)
                throw new SafetensorsFormatException(indexPath, "index has no \"weight_map\" object");

            var result = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var p in map.EnumerateObject())
            {
                if (p.Value.ValueKind != JsonValueKind.String)
                    throw new SafetensorsFormatException(indexPath, $"weight_map entry {SafetensorsHeader.Quote(p.Name)} is not a file name string");
                string shard = p.Value.GetString()!;
                // Shards live next to the index; refusing paths keeps a crafted index from reading files elsewhere.
                if (shard.Length == 0 || shard != System.IO.Path.GetFileName(shard) || shard is "." or "..")
                    throw new SafetensorsFormatException(indexPath,
                        $"weight_map entry {SafetensorsHeader.Quote(p.Name)} names shard {SafetensorsHeader.Quote(shard)}, which is not a plain file name");
                if (!result.TryAdd(p.Name, shard))
                    throw new SafetensorsFormatException(indexPath, $"weight_map lists tensor {SafetensorsHeader.Quote(p.Name)} twice");
            }
            return result;
        }
    }

    public void Dispose()
    {
        foreach (var f in _files) f.Dispose();
    }
}
