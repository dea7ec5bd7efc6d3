using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine;
using System.CommandLine;
using MetaLoraNative.Engine.Training;
using MetaLoraNative.Onnx.Augment;
using MetaLoraNative.Onnx.Cache;
using MetaLoraNative.Onnx.Datasets;
using MetaLoraNative.Onnx.Models;

namespace MetaLoraNative.Cli.Commands;

/// <summary>`metalora prepare PHOTO`: one photo → the cached Stage-2 dataset (augmented crops, VAE latents, prompt embeddings).</summary>
internal static class PrepareCommand
{
    public static Command Create()
    {
        var photo = new Argument<string>("photo") { Description = "The one photo of the person (Stage 2), or with --identities a folder of person folders (Stage 1)." };
        var identities = new Option<bool>("--identities") { Description = "Stage-1 data: PHOTO is a folder with one sub-folder of photos per person (optional class.txt: man|woman); each photo is centre-cropped to its bucket, no augmentation." };
        var cls = new Option<string>("--class") { Description = "With --identities: class (woman or man) of persons without class.txt; fills {class} in the prompt.", DefaultValueFactory = _ => "woman" }.AcceptOnlyFromAmong("woman", "man");
        var models = new Option<string?>("--models") { Description = "Models folder with models.json (face detector, VAE encoder, T5, CLIP-L); default $METALORA_MODELS." };
        var prompt = new Option<string>("--prompt") { Description = "Training caption, e.g. \"a photo of sks woman\" (with --identities a template: \"a photo of a {class}\").", Required = true };
        var output = new Option<string>("--out") { Description = "Dataset folder to write (the --data of 'train stage2').", Required = true };
        var resolution = new Option<int>("--resolution") { Description = "Training resolution (bucket area near resolution²).", DefaultValueFactory = _ => 512 }.AcceptOnlyFromAmong("256", "512", "768", "1024");
        var seed = new Option<int>("--seed") { Description = "Seed of the random flips.", DefaultValueFactory = _ => 0 };
        var max = new Option<int>("--max") { Description = "Most crops (paper: 25).", DefaultValueFactory = _ => 25 }.AtLeast(1);
        var cache = new Option<string?>("--cache") { Description = "Encoding cache folder (T5/CLIP outputs and VAE latents by content hash). Default: <models>/cache." };
        var cmd = new Command("prepare",
            "Turns one photo into a Stage-2 training set: detect the face, make the paper's augmented crops, VAE-encode each to " +
            "packed latents and encode the prompt with T5-XXL and CLIP-L. Repeated runs reuse the encoding cache.")
        {
            models, prompt, output, resolution, seed, max, cache, identities, cls,
        };
        cmd.Arguments.Add(photo);
        cmd.SetAction(r =>
        {
            OutputPath.CheckFolder(r.GetValue(output), "--out");
            string dir = OnnxCommandSupport.ModelsDir(r.GetValue(models))
                         ?? throw new InputException("--models", "no models folder: pass --models DIR or set METALORA_MODELS (docs/ENCODERS.md)");
            var problems = ModelsFolder.Check(dir);
            if (problems.Count > 0) throw new InvalidDataException(string.Join("\n", problems));
            using var set = new ModelSet(dir);
            var encodings = new EncodingCache(r.GetValue(cache) ?? Path.Combine(dir, "cache"));
            if (r.GetValue(identities))
            {
                int n = Stage1Data.Prepare(r.GetValue(photo)!, r.GetValue(output)!, r.GetValue(prompt)!, PersonFolders.ParseClass(r.GetValue(cls)!, "--class"),
                                           r.GetValue(resolution), set, encodings, Common.Log);
                Console.WriteLine($"wrote {n} identities to {r.GetValue(output)}");
                return 0;
            }
            var person = Stage2Data.Prepare(r.GetValue(photo)!, r.GetValue(prompt)!, set, encodings,
                new AugmentOptions { Resolution = r.GetValue(resolution), Seed = r.GetValue(seed), MaxImages = r.GetValue(max) },
                Common.Log);
            LatentDataset.SaveIdentity(r.GetValue(output)!, person);
            Console.WriteLine($"wrote {person.Examples.Count} cached examples of '{person.Name}' to {r.GetValue(output)}");
            return 0;
        });
        return cmd;
    }
}
