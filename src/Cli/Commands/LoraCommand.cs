using System.CommandLine;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Lora;

namespace MetaLoraNative.Cli.Commands;

internal static class LoraCommand
{
    public static SafetensorsDType ParseDType(string s) => s switch
    {
        "bf16" => SafetensorsDType.BF16,
        "fp16" => SafetensorsDType.F16,
        "fp32" => SafetensorsDType.F32,
        _ => throw new ArgumentException($"unknown dtype '{s}' (bf16, fp16, fp32)"),
    };

    static Option<string> Preset() => new("--base")
    {
        Description = "Base model the LoRA targets: a preset (flux-dev, flux-schnell, tiny, micro) or a checkpoint to detect it from.",
        DefaultValueFactory = _ => "flux-dev",
    };

    static FluxConfig Config(string baseModel, Engine.IBackend be)
    {
        if (FluxConfig.Presets.Any(p => p.Name == baseModel)) return FluxConfig.Preset(baseModel);
        using var w = FluxLoader.Load(baseModel, be);
        return w.Config;
    }

    public static Command Create()
    {
        var input = new Option<string>("--in") { Description = "LoRA file to read (Meta D/M/U, PEFT or kohya).", Required = true };
        var output = new Option<string>("--out") { Description = "File to write.", Required = true };
        var format = new Option<string>("--format") { Description = "peft or kohya.", DefaultValueFactory = _ => "peft" }.AcceptOnlyFromAmong("peft", "kohya");
        var dtype = new Option<string>("--dtype") { Description = "bf16, fp16 or fp32.", DefaultValueFactory = _ => "bf16" }.AcceptOnlyFromAmong("bf16", "fp16", "fp32");
        var baseModel = Preset();
        var convert = new Command("convert", "Merges a Meta-LoRA (A = M·D, B = U) or converts between PEFT and kohya layouts.") { input, output, format, dtype, baseModel };
        convert.SetAction(r => Common.Guard(() =>
        {
            using var be = Common.CreateBackend("cpu");
            var config = Config(r.GetValue(baseModel)!, be);
            using var a = LoraFiles.Load(r.GetValue(input)!, config, be);
            if (a.Identities.Count == 0) throw new InvalidDataException($"{r.GetValue(input)}: holds only Meta-Down factors; personalise with 'train stage2' first");
            var fmt = r.GetValue(format) == "kohya" ? LoraFormat.Kohya : LoraFormat.Peft;
            LoraFiles.Export(a, 0, r.GetValue(output)!, fmt, ParseDType(r.GetValue(dtype)!), r.GetValue(input)!);
            Console.WriteLine($"{LoraFiles.Describe(a)} → {r.GetValue(output)} ({fmt})");
            return 0;
        }));

        var infoIn = new Option<string>("--in") { Description = "LoRA file.", Required = true };
        var infoBase = Preset();
        var info = new Command("info", "Reads a LoRA file, checks every key against the base model's targets and prints what it holds.") { infoIn, infoBase };
        info.SetAction(r => Common.Guard(() =>
        {
            using var be = Common.CreateBackend("cpu");
            using var a = LoraFiles.Load(r.GetValue(infoIn)!, Config(r.GetValue(infoBase)!, be), be);
            Console.WriteLine(LoraFiles.Describe(a));
            return 0;
        }));

        var mModel = new Option<string>("--model") { Description = "Base transformer to merge into (BFL/diffusers checkpoint or random:PRESET:SEED).", Required = true };
        var mLora = new Option<string>("--lora") { Description = "LoRA file.", Required = true };
        var mOut = new Option<string>("--out") { Description = "Merged BFL-layout checkpoint to write.", Required = true };
        var strength = new Option<float>("--strength") { Description = "LoRA strength.", DefaultValueFactory = _ => 1f };
        var mDtype = new Option<string>("--dtype") { Description = "bf16, fp16 or fp32.", DefaultValueFactory = _ => "bf16" }.AcceptOnlyFromAmong("bf16", "fp16", "fp32");
        var merge = new Command("merge", "Bakes a LoRA into the base weights: W0 += strength·B·A for every target.") { mModel, mLora, mOut, strength, mDtype };
        merge.SetAction(r => Common.Guard(() =>
        {
            using var be = Common.CreateBackend("cpu");
            using var w = FluxLoader.Load(r.GetValue(mModel)!, be);
            using var a = LoraFiles.Load(r.GetValue(mLora)!, w.Config, be);
            LoraFiles.MergeInto(w, a, 0, r.GetValue(strength));
            FluxLoader.Save(w, r.GetValue(mOut)!, ParseDType(r.GetValue(mDtype)!));
            Console.WriteLine($"merged {LoraFiles.Describe(a)} into {r.GetValue(mOut)}");
            return 0;
        }));
        return new Command("lora", "Convert, inspect and merge LoRA files.") { convert, info, merge };
    }
}
