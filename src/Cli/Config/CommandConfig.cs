// `--config FILE` for every command, with no per-command code: a recursive option on the root. The command line is
// parsed once to find the command and the file; every file key the command line did not give becomes flag tokens
// (`--lr 4e-4`, a list as one `--include x` per item), so the file's values go through the very parsers, validators and
// defaults of the flags; the result is parsed again. Flags therefore override the file, key by key.
// Errors about a file's value are reported against the file, its line and the key (exit 2).
// The resolved config (every option's final value and its source: default, file or flag) is printed when a file
// was given or the run writes an --out, and then saved beside that output: OUT with extension .config.yaml, or
// config.yaml inside OUT when OUT is a folder. The saved file is itself a config file for the same command.
using System.CommandLine;
using System.CommandLine.Help;
using System.CommandLine.Parsing;
using MetaLoraNative.Engine;

namespace MetaLoraNative.Cli.Config;

public enum ValueSource { Default, File, Flag }

/// <summary>One option's final value and where it came from.</summary>
public sealed record ResolvedOption(Option Option, string Key, object? Value, ValueSource Source);

/// <summary>A command's parse with its config file applied, and what each option resolved to.</summary>
public sealed record ResolvedConfig(ParseResult Parse, Command Command, ConfigFile? File, IReadOnlyList<ResolvedOption> Options)
{
    /// <summary>"train stage2": the command's path below the root.</summary>
    public string CommandPath => CommandConfig.PathOf(Command);

    /// <summary>The resolved config as a YAML config file for the same command, each value's source in a comment.</summary>
    public string ToYaml()
    {
        var w = new StringWriter();
        w.WriteLine($"# metalora {CommandPath}: resolved config" + (File is { } f ? $" (file {f.Path})" : ""));
        foreach (var o in Options)
        {
            string source = o.Source switch { ValueSource.File => "file", ValueSource.Flag => "flag", _ => "default" };
            w.WriteLine(o.Value is null ? $"# {o.Key}:   # unset ({source})" : $"{o.Key}: {ConfigYaml.Value(o.Value)}   # {source}");
        }
        return w.ToString();
    }
}

public static class CommandConfig
{
    public const string OptionName = "--config";

    /// <summary>Commands whose --out is not a run's output (config init, models): their config is not recorded.</summary>
    static readonly HashSet<Command> Unrecorded = [];

    public static void DoNotRecord(Command command)
    {
        lock (Unrecorded) Unrecorded.Add(command);
    }

    /// <summary>Adds the recursive --config option to the root (once).</summary>
    public static Option<string?> Attach(RootCommand root)
    {
        if (root.Options.OfType<Option<string?>>().FirstOrDefault(o => o.Name == OptionName) is { } existing) return existing;
        var option = new Option<string?>(OptionName)
        {
            Description = "YAML file of this command's options (keys are the long flag names without '--'; 'metalora config init COMMAND' " +
                          "writes a template). Flags on the command line override it.",
            Recursive = true,
        };
        root.Options.Add(option);
        return option;
    }

    /// <summary>
    /// Prints the resolved config at the start of a command that writes outputs or was given a file. Returns where it
    /// will be saved once the command has succeeded (<see cref="Save"/>), or null: saving it only then keeps a failed
    /// run from leaving a folder behind and keeps folder outputs atomic.
    /// </summary>
    public static string? Print(ResolvedConfig resolved)
    {
        if (resolved.Parse.Errors.Count > 0 || resolved.Parse.Action is HelpAction || resolved.Command.Action is null) return null;
        string? record = RecordPath(resolved);
        if (record is not null || resolved.File is not null) Console.Write(resolved.ToYaml());
        return record;
    }

    /// <summary>Saves the resolved config beside the outputs (at <paramref name="record"/>, from <see cref="Print"/>).</summary>
    public static void Save(ResolvedConfig resolved, string record)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(record))!);
        File.WriteAllText(record, resolved.ToYaml());
        Console.WriteLine($"# config saved to {record}");
    }

    /// <summary>The parse of <paramref name="args"/> with the --config file's keys filled in where no flag gave them.</summary>
    public static ResolvedConfig Resolve(RootCommand root, string[] args)
    {
        var configOption = Attach(root);
        var first = root.Parse(args);
        var command = first.CommandResult.Command;
        var options = Settable(command).ToList();
        bool FromFlag(Option o) => first.GetResult(o) is OptionResult { Implicit: false };
        string? path = first.GetValue(configOption);
        if (path is null) return new ResolvedConfig(first, command, null, Resolved(first, options, FromFlag, _ => false));

        var file = ConfigFile.Load(path);
        var byKey = options.ToDictionary(Key);
        var injected = new List<string>();
        var fromFile = new Dictionary<Option, ConfigEntry>();
        foreach (var entry in file.Entries)
        {
            if (!byKey.TryGetValue(entry.Key, out var option))
                throw new InputException(path, $"line {entry.Line}: unknown key '{entry.Key}': 'metalora {PathOf(command)}' has no --{entry.Key} " +
                                               $"(its keys: {string.Join(", ", byKey.Keys)})");
            bool many = TakesMany(option);
            if (entry.IsSequence && !many)
                throw new InputException(path, $"line {entry.Line}: key '{entry.Key}' takes one value, not a list");
            if (entry.Values.Count == 0 || FromFlag(option)) continue;
            fromFile[option] = entry;
            foreach (string value in entry.Values) injected.AddRange([option.Name, value]);
        }
        // File tokens go before a "--" terminator, where they are still read as options.
        int end = Array.IndexOf(args, "--");
        string[] merged = end < 0 ? [.. args, .. injected] : [.. args[..end], .. injected, .. args[end..]];
        var second = root.Parse(merged);
        foreach (var error in second.Errors)
            if (OptionOf(error.SymbolResult) is { } o && fromFile.TryGetValue(o, out var entry))
                throw new InputException(path, $"line {entry.Line}: key '{entry.Key}': {error.Message}");
        return new ResolvedConfig(second, command, file, Resolved(second, options, FromFlag, fromFile.ContainsKey));
    }

    /// <summary>The options a config file may set: the command's own, without help, version and --config.</summary>
    public static IEnumerable<Option> Settable(Command command) =>
        command.Options.Where(o => o is not HelpOption and not VersionOption && o.Name != OptionName && !o.Hidden);

    /// <summary>The key of an option in a config file: its long name without the dashes.</summary>
    public static string Key(Option option) => option.Name.TrimStart('-');

    /// <summary>Whether the option takes several values (a list in YAML).</summary>
    public static bool TakesMany(Option option) => option.ValueType.IsArray;

    public static string PathOf(Command command)
    {
        var names = new List<string>();
        for (var c = command; c is not null and not RootCommand; c = c.Parents.OfType<Command>().FirstOrDefault()) names.Insert(0, c.Name);
        return string.Join(' ', names);
    }

    static Option? OptionOf(SymbolResult? result)
    {
        for (var r = result; r is not null; r = r.Parent)
            if (r is OptionResult o) return o.Option;
        return null;
    }

    static List<ResolvedOption> Resolved(ParseResult parse, IEnumerable<Option> options, Func<Option, bool> fromFlag, Func<Option, bool> fromFile) =>
        [.. options.Select(o => new ResolvedOption(o, Key(o), ValueOf(parse, o), fromFlag(o) ? ValueSource.Flag : fromFile(o) ? ValueSource.File : ValueSource.Default))];

    // The option's value; null when it has none (unset, or a required option still missing: the parse reports that).
    static object? ValueOf(ParseResult parse, Option option)
    {
        if (parse.GetResult(option) is not { } result) return null;
        if (parse.Errors.Any(e => OptionOf(e.SymbolResult) == option) || (option.Required && result.Implicit)) return null;
        try { return result.GetValueOrDefault<object?>(); }
        catch (InvalidOperationException) { return null; }   // a value the parse rejected: its error is in parse.Errors
    }

    /// <summary>Where the resolved config is saved: beside an --out given by flag or file; null when none was.</summary>
    static string? RecordPath(ResolvedConfig r)
    {
        lock (Unrecorded)
            if (Unrecorded.Contains(r.Command)) return null;
        if (r.Options.FirstOrDefault(o => o.Key == "out") is not { Value: string { Length: > 0 } output, Source: not ValueSource.Default }) return null;
        return Path.HasExtension(output) && !Directory.Exists(output) ? Path.ChangeExtension(output, ".config.yaml") : Path.Combine(output, "config.yaml");
    }
}
