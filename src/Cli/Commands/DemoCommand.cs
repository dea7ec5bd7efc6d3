using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine;
using System.CommandLine;
using MetaLoraNative.Engine.Demo;

namespace MetaLoraNative.Cli.Commands;

internal static class DemoCommand
{
    public static Command Create()
    {
        var device = Common.Device();
        var output = new Option<string>("--out") { Description = "Folder for the demo's LoRA files and training state.", DefaultValueFactory = _ => "metalora-demo" };
        var stage1 = new Option<int>("--stage1-iterations") { Description = "Stage-1 (meta-training) iterations.", DefaultValueFactory = _ => 400 }.AtLeast(1);
        var stage2 = new Option<int>("--stage2-iterations") { Description = "Stage-2 (personalisation) iterations.", DefaultValueFactory = _ => 150 }.AtLeast(1);
        var verbose = new Option<bool>("--verbose") { Description = "Print every training step instead of every 20th." };
        var cmd = new Command("demo",
            "Runs the whole Meta-LoRA pipeline on the embedded default: a tiny FLUX-architecture model with deterministic " +
            "weights and synthetic identities. Stage 1 meta-trains D over six identities, Stage 2 personalises a new one with " +
            "D frozen, then the merged LoRA is written in PEFT/diffusers and kohya layouts. Under two minutes on two CPU cores.")
        {
            device, output, stage1, stage2, verbose,
        };
        cmd.SetAction(r =>
        {
            OutputPath.CheckFolder(r.GetValue(output), "--out");
            using var be = Common.CreateBackend(r.GetValue(device)!);
            Common.CheckHostMemory(r, be, $"random:{FluxConfig.Tiny.Name}:0", (TinyDemo.Grid * TinyDemo.Grid, TinyDemo.T5Length));
            var result = TinyDemo.Run(be, new TinyDemo.Options
            {
                OutputDirectory = r.GetValue(output)!, Stage1Iterations = r.GetValue(stage1), Stage2Iterations = r.GetValue(stage2),
                Verbose = r.GetValue(verbose),
            }, Common.Log);
            Console.WriteLine();
            Console.WriteLine($"Stage 1: loss {result.Stage1Before:F5} → {result.Stage1After:F5}");
            Console.WriteLine($"Stage 2: loss {result.Stage2Before:F5} → {result.Stage2After:F5} (from a random D instead of the meta-trained one: {result.Stage2RandomDown:F5})");
            Console.WriteLine($"merged LoRA (PEFT/diffusers): {Path.GetFullPath(result.PeftPath)}");
            Console.WriteLine($"merged LoRA (kohya):          {Path.GetFullPath(result.KohyaPath)}");
            Console.WriteLine($"unmerged Meta-LoRA:           {Path.GetFullPath(result.MetaPath)}");
            Console.WriteLine($"Meta-Down (Stage 1):          {Path.GetFullPath(result.DownPath)}");
            Console.WriteLine($"done in {result.Elapsed.TotalSeconds:F1} s");
            return 0;
        });
        return cmd;
    }
}
