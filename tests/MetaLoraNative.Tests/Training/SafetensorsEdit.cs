using MetaLoraNative.Engine.IO;

namespace MetaLoraNative.Tests.Training;

/// <summary>Rewrites a safetensors file (a state, a cached example) after editing its tensors and metadata in memory.</summary>
internal static class SafetensorsEdit
{
    public static void Rewrite(string path, Action<List<SafetensorsTensor>, Dictionary<string, string>> edit)
    {
        List<SafetensorsTensor> tensors;
        Dictionary<string, string> meta;
        using (var f = SafetensorsFile.Open(path))
        {
            tensors = f.Entries.Keys.Select(k => new SafetensorsTensor(k, f[k].Shape, f.ReadFloats(k))).ToList();
            meta = new Dictionary<string, string>(f.Metadata);
        }
        edit(tensors, meta);
        SafetensorsWriter.Write(path, tensors, meta);
    }
}
