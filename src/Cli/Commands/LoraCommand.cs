using MetaLoraNative.Engine;
using System.CommandLine;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Lora;

namespace MetaLoraNative.Cli.Commands;

/// <summary>
/// `metalora lora convert|info|bake`. "Merge" means A = M·D, B = U (a Meta-LoRA → a standard LoRA, what convert does);
/// "bake" means W0 += strength·B·A (a LoRA → new base weights).
/// </summary>
internal static class LoraCommand
{
    public static SafetensorsDType ParseDType(string s) => s switch
    {
        "bf16" => SafetensorsDType.BF16,
        "fp16" => SafetensorsDType.F16,
        "fp32" => SafetensorsDType.F32,
        _ => throw new InputException("--dtype", $"unknown dtype '{s}' (bf16, fp16, fp32)"),
    };

    /// <summary>--dtype bf16|fp16|fp32 of a written file (read it with <see cref="ParseDType"/>).</summary>
    public static Option<string> DType(string what) => new Option<string>("--dtype")
    {
        Description = $"{what} precision: bf16, fp16 or fp32.",
        DefaultValueFactory = _ => "bf16",
    }.AcceptOnlyFromAmong("bf16", "fp16", "fp32");

    /// <summary>Throws unless the file gave a personal LoRA (an identity's factors), not only a Stage-1 Meta-Down.</summary>
    public static void RequireIdentity(LoraAdapter a, string path)
    {
        if (a.Identities.Count == 0) throw new InvalidDataException($"{path}: holds only Meta-Down factors; personalise with 'train stage2' first");
    }

    static Option<string?> Preset() => new("--base")
    {
        Description = "Base model the LoRA targets: a preset (flux-dev, flux-schnell, tiny, micro) or a model checkpoint to detect it from. " +
                      "Default: the base model named in the file's metadata (metalora.base_model), else flux-dev.",
    };

    /// <summary>The base model's config: --base when given, else the file's metadata, else flux-dev; and where it came from.</summary>
    static (FluxConfig Config, string From) BaseOf(string? baseModel, string loraPath, Engine.IBackend be)
    {
        if (baseModel is not null) return (Config(baseModel, be), "--base");
        using var file = SafetensorsFile.Open(loraPath);
        if (file.Metadata.TryGetValue("metalora.base_model", out var named) && FluxConfig.Presets.Any(p => p.Name == named))
            return (FluxConfig.Preset(named), "the file's metadata");
        return (FluxConfig.FluxDev, "default: the file names no base model");
    }

    /// <summary>The file's key layout in words (<see cref="LoraFiles.Layout"/>).</summary>
    public static string Layout(string loraPath)
    {
        using var file = SafetensorsFile.Open(loraPath);
        return LoraFiles.Layout(file.Entries.Keys) switch
        {
            LoraFormat.Kohya => "kohya",
            LoraFormat.Meta => "Meta (D/M/U)",
            LoraFormat.Peft => "PEFT",
            _ => "unknown",
        };
    }

    static FluxConfig Config(string baseModel, Engine.IBackend be)
    {
        if (FluxConfig.Presets.Any(p => p.Name == baseModel)) return FluxConfig.Preset(baseModel);
        using var w = FluxLoader.Load(baseModel, be);
        return w.Config;
    }

    static void PrintSource(string path, FluxConfig config, string from) =>
        Console.WriteLine($"{path}: {Layout(path)} layout, base {config.Name} ({from})");

    public static Command Create()
    {
        var input = new Option<string>("--in") { Description = "LoRA file to read (Meta D/M/U: .metalora, or the old .meta.safetensors; PEFT or kohya).", Required = true };
        var output = new Option<string>("--out") { Description = "File to write.", Required = true };
        var format = new Option<string>("--format") { Description = "peft or kohya.", DefaultValueFactory = _ => "peft" }.AcceptOnlyFromAmong("peft", "kohya");
        var dtype = DType("Written LoRA");
        var baseModel = Preset();
        var convert = new Command("convert", "Merges a Meta-LoRA (A = M·D, B = U) or converts between PEFT and kohya layouts.") { input, output, format, dtype, baseModel };
        convert.SetAction(r =>
        {
            OutputPath.CheckFile(r.GetValue(output), "--out");
            using var be = Common.CreateBackend("cpu");
            var (config, from) = BaseOf(r.GetValue(baseModel), r.GetValue(input)!, be);
            PrintSource(r.GetValue(input)!, config, from);
            using var a = LoraFiles.Load(r.GetValue(input)!, config, be, Common.Log);
            RequireIdentity(a, r.GetValue(input)!);
            var fmt = r.GetValue(format) == "kohya" ? LoraFormat.Kohya : LoraFormat.Peft;
            LoraFiles.Export(a, 0, r.GetValue(output)!, fmt, ParseDType(r.GetValue(dtype)!), r.GetValue(input)!);
            Console.WriteLine($"{LoraFiles.Describe(a)} → {r.GetValue(output)} ({fmt})");
            return 0;
        });

        var infoIn = new Option<string>("--in") { Description = "LoRA file (PEFT, kohya, or Meta D/M/U: .metalora).", Required = true };
        var infoBase = Preset();
        var info = new Command("info", "Reads a LoRA file, checks every key against the base model's targets and prints what it holds and its metadata (the run's settings).") { infoIn, infoBase };
        info.SetAction(r =>
        {
            using var be = Common.CreateBackend("cpu");
            string path = r.GetValue(infoIn)!;
            var (config, from) = BaseOf(r.GetValue(infoBase), path, be);
            PrintSource(path, config, from);
            using var a = LoraFiles.Load(path, config, be, Common.Log);
            Console.WriteLine(LoraFiles.Describe(a));
            // the run's metadata (metalora.*, kohya ss_*, modelspec.*), one key per line in name order
            using var file = SafetensorsFile.Open(path);
            foreach (var (key, value) in file.Metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal))
                Console.WriteLine($"  {key} = {value.ReplaceLineEndings(" | ")}");
            return 0;
        });

        var bModel = new Option<string>("--model") { Description = "Base model to bake into (BFL/diffusers checkpoint or random:PRESET:SEED).", Required = true };
        var bLora = new Option<string>("--lora") { Description = "LoRA file (PEFT, kohya or Meta D/M/U: .metalora).", Required = true };
        var bOut = new Option<string>("--out") { Description = "Baked model checkpoint to write (BFL layout).", Required = true };
        var strength = new Option<float>("--strength") { Description = "LoRA strength.", DefaultValueFactory = _ => 1f }.Finite();
        var bDtype = DType("Written checkpoint");
        var bake = new Command("bake", "Bakes a LoRA into the base model's weights: W0 += strength·B·A for every target; writes a new model checkpoint.")
        {
            bModel, bLora, bOut, strength, bDtype,
        };
        bake.SetAction(r =>
        {
            OutputPath.CheckFile(r.GetValue(bOut), "--out");
            using var be = Common.CreateBackend("cpu");
            using var w = FluxLoader.Load(r.GetValue(bModel)!, be);
            using var a = LoraFiles.Load(r.GetValue(bLora)!, w.Config, be, Common.Log);
            RequireIdentity(a, r.GetValue(bLora)!);
            LoraFiles.Bake(w, a, 0, r.GetValue(strength));
            FluxLoader.Save(w, r.GetValue(bOut)!, ParseDType(r.GetValue(bDtype)!));
            Console.WriteLine($"baked {LoraFiles.Describe(a)} into {r.GetValue(bOut)}");
            return 0;
        });
        return new Command("lora", "Convert (merge M·D), inspect and bake LoRA files.") { convert, info, bake };
    }
}
