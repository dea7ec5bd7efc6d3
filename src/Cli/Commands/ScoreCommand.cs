using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine;
using System.CommandLine;
using MetaLoraNative.Onnx.Clip;
using MetaLoraNative.Onnx.Datasets;
using MetaLoraNative.Onnx.Faces;
using MetaLoraNative.Onnx.Models;
using MetaLoraNative.Onnx.Scoring;

namespace MetaLoraNative.Cli.Commands;

/// <summary>`metalora score`: CLIP-T, FaceSim and R-FaceSim (paper appendix F, Algorithm 3) of generated images.</summary>
public static class ScoreCommand
{
    public static Command Create()
    {
        var identities = new Option<string?>("--identities")
        {
            Description = "Real photos: one sub-folder per person. The file whose name starts with 'ref' is the reference the model was " +
                          "personalised on (else the first by name); the others are the R-FaceSim test images. Optional class.txt: man|woman.",
        };
        var generated = new Option<string?>("--generated")
        {
            Description = "Generated images: <person>/<NN>[_suffix].png, NN = 1-based prompt number in the prompt list (several seeds per prompt allowed).",
        };
        var models = new Option<string?>("--models")
        {
            Description = "Models folder with models.json (face_detector, face_embedder, clip_b32_image, clip_b32_text); default $METALORA_MODELS.",
        };
        var prompts = new Option<string>("--prompts")
        {
            Description = "Prompt list: facesim (paper Table 3), recontext (Table 1), stylistic (Table 2), clip-t (Tables 1+2), " +
                          "or a text file, one prompt per line ([man/woman], [his/her], [he/she] and {trigger} are filled in).",
            DefaultValueFactory = _ => "facesim",
        };
        var subject = new Option<string>("--class")
        {
            Description = "Subject class for identities without class.txt (chooses the man/woman prompt wording).",
            DefaultValueFactory = _ => "woman",
        }.AcceptOnlyFromAmong("woman", "man");
        var output = new Option<string>("--out")
        {
            Description = "Folder for scores.json, scores.md and scatter.png (R-FaceSim vs CLIP-T, with the paper's Table 5 methods as grey rings).",
            DefaultValueFactory = _ => "scores",
        };
        var label = new Option<string>("--label") { Description = "Name of the method being scored, written into the report.", DefaultValueFactory = _ => "generated" };
        var trigger = Trigger();
        var noClip = new Option<bool>("--no-clip") { Description = "Skip CLIP-T (no CLIP ViT-B/32 models needed)." };
        var listPrompts = new Option<bool>("--list-prompts") { Description = "Print the numbered prompt list for --prompts and --class, then exit." };

        var command = new Command("score",
            "Score generated images: CLIP-T (cosine of CLIP ViT-B/32 image and prompt embeddings), FaceSim (face embedding cosine " +
            "to the reference photo) and R-FaceSim (to every other real photo of the person, reference excluded; mean per person " +
            "and prompt, then mean). Tables show x100.");
        foreach (var o in new Option[] { identities, generated, models, prompts, subject, trigger, output, label, noClip, listPrompts }) command.Options.Add(o);

        command.SetAction(parse =>
        {
            var cls = PersonFolders.ParseClass(parse.GetValue(subject)!, "--class");
            string promptSet = parse.GetValue(prompts)!;
            if (parse.GetValue(listPrompts))
            {
                var list = PaperPrompts.Resolve(promptSet, cls, parse.GetValue(trigger));
                for (int i = 0; i < list.Count; i++) Console.WriteLine($"{i + 1:00}  {list[i]}");
                return 0;
            }
            OutputPath.CheckFolder(parse.GetValue(output), "--out");
            string idDir = parse.GetValue(identities) ?? throw new InputException("--identities", "a folder (DIR) is required");
            string genDir = parse.GetValue(generated) ?? throw new InputException("--generated", "a folder (DIR) is required");
            string modelsDir = OnnxCommandSupport.ModelsDir(parse.GetValue(models))
                               ?? throw new InputException("--models", "a folder (DIR) is required (or set METALORA_MODELS)");
            bool clip = !parse.GetValue(noClip);
            var needed = new List<string> { ModelsFolder.FaceDetector, ModelsFolder.FaceEmbedder };
            if (clip) needed.AddRange([ModelsFolder.ClipB32Image, ModelsFolder.ClipB32Text]);
            var problems = ModelsFolder.Check(modelsDir, needed);
            if (problems.Count > 0) throw new InputException("--models", "models folder: " + string.Join("; ", problems));

            using var set = new ModelSet(modelsDir);
            ClipScoreModel? scorer = clip ? set.OpenClipScorer() : null;
            var runner = new ScoreRunner(set.OpenFaceDetector(), set.OpenFaceEmbedder(), scorer, Console.WriteLine);
            var report = runner.Run(new ScoreOptions
            {
                IdentitiesDir = idDir, GeneratedDir = genDir, Prompts = promptSet, DefaultClass = cls, Label = parse.GetValue(label)!,
                Trigger = parse.GetValue(trigger),
            });
            string outDir = parse.GetValue(output)!;
            report.Write(outDir);
            foreach (var w in report.Warnings) Console.Error.WriteLine($"warning: {w}");
            static string P(double? v) => v is { } x ? (100 * x).ToString("0.00") : "n/a";
            Console.WriteLine($"{report.Images} images: CLIP-T {P(report.ClipT)}  FaceSim {P(report.FaceSim)}  R-FaceSim {P(report.RFaceSim)} -> {outDir}");
            return 0;
        });
        return command;
    }

    /// <summary>--trigger WORD, shared with evaluate: fills the prompts' {trigger} placeholder.</summary>
    internal static Option<string?> Trigger(string? defaultWord = null)
    {
        var option = new Option<string?>("--trigger")
        {
            Description = $"Trigger word of the LoRA, put into every prompt at its {PaperPrompts.TriggerPlaceholder} placeholder ('a photo of " +
                          $"{PaperPrompts.TriggerPlaceholder} person' -> 'a photo of sks person'). The built-in prompt sets carry the placeholder before " +
                          $"the subject word ('A {PaperPrompts.TriggerPlaceholder} woman in ...'); in a prompts file a line without it is an error " +
                          "naming the line when a trigger is given. Without a trigger the placeholder is dropped (the paper's wording)." +
                          (defaultWord is null ? "" : $" Default: {defaultWord}; '' for none."),
        };
        if (defaultWord is not null) option.DefaultValueFactory = _ => defaultWord;
        return option.Require(v => v is null || (v.Length > 0 ? v.Trim() == v && !v.Contains(PaperPrompts.TriggerPlaceholder) : defaultWord is not null),
                              "a word without surrounding spaces or the placeholder itself");
    }
}
