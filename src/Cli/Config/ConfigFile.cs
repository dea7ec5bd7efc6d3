// A config file is one YAML mapping for one command: its keys are the command's long flag names without "--"
// (`lr: 4e-4`, `rank1: 16`, `include: [to_q, to_k]`), its values scalars or, for options that take several values,
// sequences. A key with no value (`state:` or `state: ~`) leaves the option at its default.
// It is read through YamlDotNet's representation model (YamlStream) and walked here, never deserialised by
// reflection, so the trimmed publish reads it too.
using MetaLoraNative.Engine;
using YamlDotNet.Core;
using YamlDotNet.RepresentationModel;

namespace MetaLoraNative.Cli.Config;

/// <summary>One key of a config file: its values as text (one for a scalar, any number for a sequence) and its line.</summary>
public sealed record ConfigEntry(string Key, IReadOnlyList<string> Values, bool IsSequence, int Line);

/// <summary>A parsed config file: its path and its entries in file order.</summary>
public sealed record ConfigFile(string Path, IReadOnlyList<ConfigEntry> Entries)
{
    public static ConfigFile Load(string path)
    {
        if (!File.Exists(path)) throw new InputException(path, "config file not found");
        string text;
        try { text = File.ReadAllText(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new InputException(path, $"cannot read the config file: {e.Message}", e); }
        return Parse(path, text);
    }

    public static ConfigFile Parse(string path, string text)
    {
        var stream = new YamlStream();
        try { stream.Load(new StringReader(text)); }
        catch (YamlException e) { throw new InputException(path, $"line {e.Start.Line}: not valid YAML: {e.Message}", e); }
        if (stream.Documents.Count == 0) return new ConfigFile(path, []);
        if (stream.Documents.Count > 1) throw new InputException(path, $"line {stream.Documents[1].RootNode.Start.Line}: holds several YAML documents; a config file is one mapping");
        var root = stream.Documents[0].RootNode;
        if (root is YamlScalarNode { Value: null or "" }) return new ConfigFile(path, []);
        if (root is not YamlMappingNode map)
            throw new InputException(path, $"line {root.Start.Line}: expected a mapping of flag names to values (lr: 4e-4), found a {Kind(root)}");
        var entries = new List<ConfigEntry>();
        var seen = new Dictionary<string, int>();
        foreach (var (keyNode, valueNode) in map.Children)
        {
            int line = (int)keyNode.Start.Line;
            if (keyNode is not YamlScalarNode { Value: { Length: > 0 } key })
                throw new InputException(path, $"line {line}: a key must be a flag name, found a {Kind(keyNode)}");
            if (key.StartsWith('-')) throw new InputException(path, $"line {line}: key '{key}': write flag names without the leading dashes");
            if (seen.TryGetValue(key, out int first)) throw new InputException(path, $"line {line}: key '{key}' is given twice (first on line {first})");
            seen[key] = line;
            entries.Add(valueNode switch
            {
                YamlScalarNode s => new ConfigEntry(key, IsNull(s) ? [] : [s.Value!], false, line),
                YamlSequenceNode seq => new ConfigEntry(key, [.. seq.Children.Select(c => c is YamlScalarNode { Value: { } v } && !IsNull((YamlScalarNode)c)
                    ? v : throw new InputException(path, $"line {c.Start.Line}: key '{key}': list items must be plain values, found a {Kind(c)}"))], true, line),
                _ => throw new InputException(path, $"line {line}: key '{key}': expected a value or a list, found a {Kind(valueNode)} (a file is for one command: no nesting)"),
            });
        }
        return new ConfigFile(path, entries);
    }

    // `key:`, `key: ~` and `key: null` (unquoted) leave the option unset.
    static bool IsNull(YamlScalarNode s) =>
        s.Style == ScalarStyle.Plain && (string.IsNullOrEmpty(s.Value) || s.Value is "~" or "null" or "Null" or "NULL");

    static string Kind(YamlNode n) => n switch { YamlMappingNode => "mapping", YamlSequenceNode => "list", _ => "value" };
}
