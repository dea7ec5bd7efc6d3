using System.CommandLine;
using MetaLoraNative.Cli.Commands;
using MetaLoraNative.Cli.Config;

namespace MetaLoraNative.Cli;

public static class Program
{
    public static int Main(string[] args) => Errors.Invoke(CreateRoot(), args);

    /// <summary>Every command, with the recursive --verbose and --config options attached.</summary>
    public static RootCommand CreateRoot()
    {
        var root = new RootCommand(
            "metalora: one-image face personalisation of FLUX.1-dev with Meta-LoRA (Stage 1 meta-training of a shared " +
            "Meta-Down, Stage 2 one-photo personalisation), on a hand-built CUDA/CPU training engine. " +
            "Start with 'metalora demo' to see the whole pipeline on a tiny built-in model.");
        foreach (var command in new[]
                 {
                     DemoCommand.Create(), AugmentCommand.Create(), PrepareCommand.Create(), TrainCommand.Create(), PersonalizeCommand.Create(), GenerateCommand.Create(), ScoreCommand.Create(), EvaluateCommand.Create(),
                     LoraCommand.Create(), DataCommand.Create(), DebugCommand.Create(), BenchCommand.Create(), ProfileCommand.Create(),
                     KernelsCommand.Create(), CheckCommand.Create(), DoctorCommand.Create(), ModelsCommand.Create(), ConfigCommand.Create(root),
                 })
            root.Subcommands.Add(command);
        root.Options.Add(Errors.Verbose);
        root.Options.Add(Common.NoMemoryCheck);
        CommandConfig.Attach(root);
        return root;
    }
}
