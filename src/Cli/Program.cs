using System.CommandLine;

namespace MetaLoraNative.Cli;

public static class Program
{
    public static int Main(string[] args)
    {
        var root = new RootCommand("metalora: one-image face personalisation of FLUX.1-dev with Meta-LoRA, on a hand-built engine.");
        return root.Parse(args).Invoke();
    }
}
