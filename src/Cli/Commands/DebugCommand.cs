using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine;
using System.CommandLine;
using MetaLoraNative.Engine.Debugging;

namespace MetaLoraNative.Cli.Commands;

internal static class DebugCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "Transformer weights: a BFL or diffusers safetensors checkpoint, or random:PRESET:SEED.", Required = true };
        var inputs = new Option<string>("--inputs") { Description = "Inputs file: img, img_ids, txt, txt_ids, timesteps, y, guidance, target (see docs/REFERENCE_CHECK.md).", Required = true };
        var lora = new Option<string>("--lora") { Description = "LoRA whose factors get gradients: Meta (lora_down/mid/up), PEFT (lora_A/B) or kohya.", Required = true };
        var output = new Option<string>("--out") { Description = "Output file: output, loss and grad.<factor key> for every factor.", Required = true };
        var device = Common.Device();
        var fp64 = new Option<bool>("--fp64") { Description = "Run the CPU engine in fp64 (the gradient-check oracle)." };
        var step = new Command("step", "One forward and backward pass on fixed inputs, written so any independent implementation " +
                                       "(tools/reference/step.py) can be compared with this engine.")
        {
            model, inputs, lora, output, device, fp64,
        };
        step.SetAction(r =>
        {
            OutputPath.CheckFile(r.GetValue(output), "--out");
            using var be = Common.CreateBackend(r.GetValue(device)!, r.GetValue(fp64));
            var result = ReferenceStep.Run(r.GetValue(model)!, r.GetValue(inputs)!, r.GetValue(lora)!, r.GetValue(output)!, be);
            Console.WriteLine($"loss {result.Loss:R}; {result.Factors} factor gradients; {result.Elapsed.TotalMilliseconds:F0} ms on {be.Name} → {r.GetValue(output)}");
            return 0;
        });
        return new Command("debug", "Tools for checking the engine against other implementations.") { step };
    }
}
