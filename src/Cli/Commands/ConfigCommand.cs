using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine;
using System.CommandLine;
using MetaLoraNative.Cli.Config;

namespace MetaLoraNative.Cli.Commands;

/// <summary>`metalora config init COMMAND [--out FILE]`: a commented config-file template with the command's defaults.</summary>
internal static class ConfigCommand
{
    public static Command Create(RootCommand root)
    {
        var names = new Argument<string[]>("command")
        {
            Description = "The command: its path (train stage2) or a unique last name (stage2, stage1, bench).",
            Arity = ArgumentArity.OneOrMore,
        };
        var output = new Option<string?>("--out") { Description = "File to write; default: standard output." };
        var init = new Command("init", "Writes a commented YAML template of a command's options with their defaults (the paper's settings), " +
                                       "to edit and pass back with --config.") { names, output };
        CommandConfig.DoNotRecord(init);
        init.SetAction(r =>
        {
            OutputPath.CheckFile(r.GetValue(output), "--out");
            string text = ConfigTemplate.Write(ConfigTemplate.Find(root, r.GetValue(names)!));
            if (r.GetValue(output) is not { } path) Console.Write(text);
            else
            {
                File.WriteAllText(path, text);
                Console.WriteLine($"wrote {path}");
            }
            return 0;
        });
        return new Command("config", "Config files: every flag of a command is also a key of a YAML file passed with --config.") { init };
    }
}
