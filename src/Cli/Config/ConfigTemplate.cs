using System.CommandLine;

namespace MetaLoraNative.Cli.Config;

/// <summary>
/// A commented config file for one command, generated from the command's option definitions (names, descriptions,
/// defaults), so it cannot drift from the flags: an option with a default is written as `key: default`, one without
/// (required, or unset unless given) as a commented key.
/// </summary>
public static class ConfigTemplate
{
    const int Width = 116;

    public static string Write(Command command)
    {
        var w = new StringWriter();
        string path = CommandConfig.PathOf(command);
        foreach (string line in Wrap($"metalora {path}: {command.Description}")) w.WriteLine($"# {line}".TrimEnd());
        w.WriteLine($"# Use: metalora {path} --config FILE. Keys are the long flag names without '--'; a flag on the command line");
        w.WriteLine("# overrides the file. A commented key has no default: required ones must be set here or as flags.");
        foreach (var option in CommandConfig.Settable(command))
        {
            w.WriteLine();
            foreach (string line in Wrap(option.Description ?? "")) w.WriteLine($"# {line}".TrimEnd());
            string key = CommandConfig.Key(option);
            object? value = option.HasDefaultValue ? option.GetDefaultValue() : null;
            if (value is not null) w.WriteLine($"{key}: {ConfigYaml.Value(value)}");
            else if (option.Required) w.WriteLine($"# {key}:   # required");
            else w.WriteLine(CommandConfig.TakesMany(option) ? $"# {key}: []" : $"# {key}:");
        }
        return w.ToString();
    }

    /// <summary>The commands a template can be written for: every command with an action and options.</summary>
    public static IEnumerable<Command> Configurable(Command root)
    {
        foreach (var sub in root.Subcommands)
        {
            if (sub.Action is not null && CommandConfig.Settable(sub).Any()) yield return sub;
            foreach (var deeper in Configurable(sub)) yield return deeper;
        }
    }

    /// <summary>The command named by <paramref name="names"/>: its full path ("train stage2") or a unique tail ("stage2").</summary>
    public static Command Find(Command root, IReadOnlyList<string> names)
    {
        string wanted = string.Join(' ', names);
        var all = Configurable(root).ToList();
        var matches = all.Where(c => CommandConfig.PathOf(c) == wanted).ToList();
        if (matches.Count == 0) matches = [.. all.Where(c => (" " + CommandConfig.PathOf(c)).EndsWith(" " + wanted, StringComparison.Ordinal))];
        return matches.Count switch
        {
            1 => matches[0],
            0 => throw new Engine.InputException("command", $"no command '{wanted}' takes options (known: {string.Join(", ", all.Select(CommandConfig.PathOf))})"),
            _ => throw new Engine.InputException("command", $"'{wanted}' is ambiguous: {string.Join(", ", matches.Select(CommandConfig.PathOf))}"),
        };
    }

    // Each line of a description wrapped at Width; its own line breaks (as in profile's recipe) are kept.
    static IEnumerable<string> Wrap(string text)
    {
        foreach (string paragraph in text.Replace("\r", "").Split('\n'))
        {
            var line = new System.Text.StringBuilder();
            foreach (string word in paragraph.Split(' ', StringSplitOptions.RemoveEmptyEntries))
            {
                if (line.Length > 0 && line.Length + 1 + word.Length > Width) { yield return line.ToString(); line.Clear(); }
                if (line.Length > 0) line.Append(' ');
                line.Append(word);
            }
            yield return line.ToString();
        }
    }
}
