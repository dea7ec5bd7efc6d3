using System.CommandLine;
using MetaLoraNative.Cli.Commands;

namespace MetaLoraNative.Cli;

public static class Program
{
    public static int Main(string[] args)
    {
        var root = new RootCommand(
            "metalora: one-image face personalisation of FLUX.1-dev with Meta-LoRA (Stage 1 meta-training of a shared " +
            "Meta-Down, Stage 2 one-photo personalisation), on a hand-built CUDA/CPU training engine. " +
            "Start with 'metalora demo' to see the whole pipeline on a tiny built-in model.");
        foreach (var command in new[]
                 {
                     DemoCommand.Create(), AugmentCommand.Create(), PrepareCommand.Create(), TrainCommand.Create(), GenerateCommand.Create(), ScoreCommand.Create(),
                     LoraCommand.Create(), DataCommand.Create(), DebugCommand.Create(), BenchCommand.Create(), ProfileCommand.Create(),
                     KernelsCommand.Create(), CheckCommand.Create(), DoctorCommand.Create(),
                 })
            root.Subcommands.Add(command);
        root.Options.Add(Errors.Verbose);
        return Errors.Invoke(root, args);
    }
}
