using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine;
using System.CommandLine;
using MetaLoraNative.Engine.Planning;
using MetaLoraNative.Engine.Training;
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
        var model = new Option<string>("--model") { Description = "The base model (BFL or diffusers checkpoint, or random:PRESET:SEED).", Required = true };
        var lora = new Option<string?>("--lora") { Description = "LoRA to apply (PEFT, kohya or Meta D/M/U); baked into the weights in memory at --strength." };
        var strength = new Option<float>("--strength") { Description = "LoRA strength (paper: 1.0).", DefaultValueFactory = _ => 1f }.Finite();
        var models = new Option<string?>("--models") { Description = "Models folder (T5-XXL, CLIP-L, VAE decoder); default $METALORA_MODELS." };
        var prompt = new Option<string>("--prompt") { Description = "The prompt.", Required = true };
        var output = new Option<string>("--out") { Description = "PNG file to write.", Required = true };
        var width = new Option<int>("--width") { Description = $"Width in pixels (multiple of {FluxConfig.PixelsPerToken}).", DefaultValueFactory = _ => 1024 }.PositiveMultipleOf(FluxConfig.PixelsPerToken);
        var height = new Option<int>("--height") { Description = $"Height in pixels (multiple of {FluxConfig.PixelsPerToken}).", DefaultValueFactory = _ => 1024 }.PositiveMultipleOf(FluxConfig.PixelsPerToken);
        var steps = new Option<int>("--steps") { Description = "Euler steps (paper: 30).", DefaultValueFactory = _ => 30 }.AtLeast(1);
        var guidance = new Option<float>("--guidance") { Description = "Distilled guidance value fed to the guidance embedding (paper: 3.5).", DefaultValueFactory = _ => 3.5f }.Finite();
        var seed = new Option<ulong>("--seed") { Description = "Noise seed.", DefaultValueFactory = _ => 0UL };
        var device = Common.Device();
        var placement = new BenchCommand.Placement(withBaseDType: false);
        var cmd = new Command("generate", "Generates an image with FLUX (30 Euler steps, guidance 3.5 and LoRA strength 1.0 by default, as the paper evaluates).")
        {
            model, lora, strength, models, prompt, output, width, height, steps, guidance, seed, device,
        };
        foreach (var o in placement.All) cmd.Options.Add(o);
        cmd.SetAction(r =>
        {
            OutputPath.CheckFile(r.GetValue(output), "--out");
            int w = r.GetValue(width), h = r.GetValue(height);
            const int side = FluxConfig.PixelsPerToken;
            if (w % side != 0 || h % side != 0 || w <= 0 || h <= 0) throw new InputException("--width", $"--width {w} and --height {h} must be positive multiples of {side}");
            string dir = OnnxCommandSupport.ModelsDir(r.GetValue(models))
                         ?? throw new InputException("--models", "no models folder: pass --models DIR or set METALORA_MODELS (docs/ENCODERS.md)");
            var problems = ModelsFolder.Check(dir, [ModelsFolder.T5, ModelsFolder.ClipL, ModelsFolder.VaeDecoder]);
            if (problems.Count > 0) throw new InvalidDataException(string.Join("\n", problems));
            using var set = new ModelSet(dir);
            var embedding = set.OpenTextEncoder().Encode(r.GetValue(prompt)!);

            using var be = Common.CreateBackend(r.GetValue(device)!);
            Common.CheckHostMemory(r, be, r.GetValue(model)!, (w * h / (side * side), 512), training: false);
            // auto plans a training step of this shape (an upper bound for sampling: no gradients, no optimiser)
            using var weights = placement.Load(r, r.GetValue(model)!, be, c => TrainingShape.Stage2(c, h / side * (w / side), TrainingOutputs.T5Length(embedding, c),
                                                                                                  1, 1), RecomputePolicy.On);
            if (r.GetValue(lora) is { } loraPath)
            {
                if (weights.Blocks.Swapped.Count > 0)
                    throw new Engine.InputException("--swap-blocks", $"baking --lora into the base needs every block on the device, but {weights.Blocks.Swapped.Count} " +
                                                                     "were swapped to host memory; pass --swap-blocks 0 on a device with room for the bf16 base");
                using var adapter = LoraFiles.Load(loraPath, weights.Config, be, Common.Log);
                LoraCommand.RequireIdentity(adapter, loraPath);
                LoraFiles.Bake(weights, adapter, 0, r.GetValue(strength));
                Console.WriteLine($"baked {LoraFiles.Describe(adapter)} at strength {r.GetValue(strength)}");
            }
            var flux = new FluxModel(weights);
            var c = weights.Config;
            int t5Length = TrainingOutputs.T5Length(embedding, c);
            var packedLatents = FluxSampler.Sample(flux, embedding.T5, t5Length, embedding.Pooled, h / side, w / side,
                                                   r.GetValue(steps), r.GetValue(guidance), r.GetValue(seed), Common.Log);
            using var image = set.OpenVae(encoder: false, decoder: true).DecodePacked(packedLatents, w, h);
            string outPath = r.GetValue(output)!;
            string tmp = outPath + ".tmp.png";
            image.SaveAsPng(tmp);
            File.Move(tmp, outPath, overwrite: true);
            Console.WriteLine($"wrote {outPath} ({w}×{h})");
            return 0;
        });
        return cmd;
    }
}
