using MetaLoraNative.Engine;
using System.CommandLine;
using MetaLoraNative.Engine.Demo;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Training;

namespace MetaLoraNative.Cli.Commands;

internal static class DataCommand
{
    public static Command Create()
    {
        var output = new Option<string>("--out") { Description = "Dataset folder to create (one sub-folder per identity).", Required = true };
        var ids = new Option<int>("--identities") { Description = "Number of identities.", DefaultValueFactory = _ => 6 }.AtLeast(1);
        var images = new Option<int>("--images") { Description = "Examples per identity.", DefaultValueFactory = _ => 4 }.AtLeast(1);
        var preset = new Option<string>("--preset") { Description = "Model preset whose widths the data must match.", DefaultValueFactory = _ => "tiny" };
        var seed = new Option<ulong>("--seed") { Description = "Seed.", DefaultValueFactory = _ => 7UL };
        var synth = new Command("synth", "Writes a synthetic cached dataset (latents + text embeddings) in the training layout, to try 'train stage1/stage2' without encoders.")
        {
            output, ids, images, preset, seed,
        };
        synth.SetAction(r =>
        {
            OutputPath.CheckFolder(r.GetValue(output), "--out");
            var config = FluxConfig.Preset(r.GetValue(preset)!);
            // built aside and moved into place: a failure half-way leaves no partial dataset (AtomicFolder)
            AtomicFolder.Write(r.GetValue(output)!, folder =>
            {
                for (int k = 0; k < r.GetValue(ids); k++)
                {
                    var person = TinyDemo.MakeIdentity(config, $"person{k:D3}", r.GetValue(images), r.GetValue(seed));
                    LatentDataset.SaveIdentity(Path.Combine(folder, person.Name), person);
                }
            });
            Console.WriteLine($"wrote {r.GetValue(ids)} identities × {r.GetValue(images)} examples to {r.GetValue(output)}");
            return 0;
        });
        return new Command("data", "Cached training data.") { synth };
    }
}
