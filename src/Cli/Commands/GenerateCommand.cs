using System.CommandLine;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Sampling;
using MetaLoraNative.Onnx.Models;
using SixLabors.ImageSharp;

namespace MetaLoraNative.Cli.Commands;

/// <summary>`metalora generate`: text → image with FLUX and an optional LoRA, decoded by the VAE.</summary>
internal static class GenerateCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "Transformer weights (BFL or diffusers checkpoint, or random:PRESET:SEED).", Required = true };
        var lora = new Option<string?>("--lora") { Description = "LoRA to apply (PEFT, kohya or Meta D/M/U); merged into the weights at --strength." };
        var strength = new Option<float>("--strength") { Description = "LoRA strength (paper: 1.0).", DefaultValueFactory = _ => 1f };
        var models = new Option<string?>("--models") { Description = "Models folder (T5-XXL, CLIP-L, VAE decoder); default $METALORA_MODELS." };
        var prompt = new Option<string>("--prompt") { Description = "The prompt.", Required = true };
        var output = new Option<string>("--out") { Description = "PNG file to write.", Required = true };
        var width = new Option<int>("--width") { Description = "Width in pixels (multiple of 16).", DefaultValueFactory = _ => 1024 };
        var height = new Option<int>("--height") { Description = "Height in pixels (multiple of 16).", DefaultValueFactory = _ => 1024 };
        var steps = new Option<int>("--steps") { Description = "Euler steps (paper: 30).", DefaultValueFactory = _ => 30 };
        var guidance = new Option<float>("--guidance") { Description = "Distilled guidance value fed to the guidance embedding (paper: 3.5).", DefaultValueFactory = _ => 3.5f };
        var seed = new Option<ulong>("--seed") { Description = "Noise seed.", DefaultValueFactory = _ => 0UL };
        var device = Common.Device();
        var cmd = new Command("generate", "Generates an image with FLUX (30 Euler steps, guidance 3.5 and LoRA strength 1.0 by default, as the paper evaluates).")
        {
            model, lora, strength, models, prompt, output, width, height, steps, guidance, seed, device,
        };
        cmd.SetAction(r => Common.Guard(() =>
        {
            int w = r.GetValue(width), h = r.GetValue(height);
            if (w % 16 != 0 || h % 16 != 0 || w <= 0 || h <= 0) throw new ArgumentException($"--width {w} and --height {h} must be positive multiples of 16");
            string dir = OnnxCommandSupport.ModelsDir(r.GetValue(models))
                         ?? throw new ArgumentException("no models folder: pass --models DIR or set METALORA_MODELS (docs/ENCODERS.md)");
            var problems = ModelsFolder.Check(dir, [ModelsFolder.T5, ModelsFolder.ClipL, ModelsFolder.VaeDecoder]);
            if (problems.Count > 0) throw new InvalidDataException(string.Join("\n", problems));
            using var set = new ModelSet(dir);
            var embedding = set.OpenTextEncoder().Encode(r.GetValue(prompt)!);

            using var be = Common.CreateBackend(r.GetValue(device)!);
            using var weights = FluxLoader.Load(r.GetValue(model)!, be);
            if (r.GetValue(lora) is { } loraPath)
            {
                using var adapter = LoraFiles.Load(loraPath, weights.Config, be);
                if (adapter.Identities.Count == 0) throw new InvalidDataException($"{loraPath}: holds only Meta-Down factors; personalise with 'train stage2' first");
                LoraFiles.MergeInto(weights, adapter, 0, r.GetValue(strength));
                Console.WriteLine($"merged {LoraFiles.Describe(adapter)} at strength {r.GetValue(strength)}");
            }
            var flux = new FluxModel(weights);
            var c = weights.Config;
            int txtLength = embedding.T5.Length / c.ContextInDim;
            if (embedding.T5.Length % c.ContextInDim != 0 || embedding.Pooled.Length != c.VecInDim)
                throw new InvalidDataException($"the text encoders give T5 {embedding.T5.Length} values and CLIP {embedding.Pooled.Length}, " +
                                               $"but the {c.Name} model takes context width {c.ContextInDim} and vec {c.VecInDim}");
            var packed = FluxSampler.Sample(flux, null, embedding.T5, txtLength, embedding.Pooled, h / 16, w / 16,
                                            r.GetValue(steps), r.GetValue(guidance), r.GetValue(seed), Common.Log);
            using var image = set.OpenVae(encoder: false, decoder: true).DecodePacked(packed, w, h);
            string outPath = r.GetValue(output)!;
            string tmp = outPath + ".tmp.png";
            image.SaveAsPng(tmp);
            File.Move(tmp, outPath, overwrite: true);
            Console.WriteLine($"wrote {outPath} ({w}×{h})");
            return 0;
        }));
        return cmd;
    }
}
