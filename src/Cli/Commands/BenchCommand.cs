using System.CommandLine;
using System.Globalization;
using MetaLoraNative.Engine.Benchmarks;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Training;

namespace MetaLoraNative.Cli.Commands;

internal static class BenchCommand
{
    internal sealed class Shared
    {
        public Option<int> Resolution = new Option<int>("--resolution") { Description = "Image side in pixels: 512 (1,024 image tokens) or 1024 (4,096).", DefaultValueFactory = _ => 1024 }.AcceptOnlyFromAmong("512", "768", "1024");
        public Option<string> Recompute = Common.Recompute();
        public Option<string> Device = new Option<string>("--device") { Description = "cuda (default) or cpu (only sensible with --preset tiny).", DefaultValueFactory = _ => "cuda" }.AcceptOnlyFromAmong("cpu", "cuda");
        public Option<string> Preset = new Option<string>("--preset") { Description = "Model shape: flux-dev (default), flux-schnell, tiny, micro.", DefaultValueFactory = _ => "flux-dev" }.PresetName();
        public Option<int> Text = new Option<int>("--txt") { Description = "Text tokens (T5 sequence length).", DefaultValueFactory = _ => 512 }.AtLeast(1);

        public IEnumerable<Option> All => [Resolution, Recompute, Device, Preset, Text];

        public StepBenchmark.Options Options(ParseResult r, int steps, int warmup) => new()
        {
            Config = FluxConfig.Preset(r.GetValue(Preset)!), Resolution = r.GetValue(Resolution), TextTokens = r.GetValue(Text),
            Recompute = RecomputePolicy.Parse(r.GetValue(Recompute)!), Steps = steps, Warmup = warmup,
        };
    }

    public static Command Create()
    {
        var shared = new Shared();
        var steps = new Option<int>("--steps") { Description = "Timed steps (the median is reported).", DefaultValueFactory = _ => 10 }.AtLeast(1);
        var warmup = new Option<int>("--warmup") { Description = "Untimed steps first (kernel compilation, pool growth).", DefaultValueFactory = _ => 3 }.AtLeast(0);
        var json = new Option<string?>("--json") { Description = "Also write the figures as JSON to this file." };
        var cmd = new Command("bench",
            "Times a Stage-2 training step at the full model shape with random weights (batch 1, 512 text tokens, all 494 " +
            "targets, r1 16, r2 1) and an inference forward; prints ms/step (median), achieved TFLOP/s and peak GPU memory. " +
            "Run tools/bench/torch_reference.py with the same flags in the same session to get PyTorch's figures on the same GPU.")
        {
            steps, warmup, json,
        };
        foreach (var o in shared.All) cmd.Options.Add(o);
        cmd.SetAction(r =>
        {
            using var be = Common.CreateBackend(r.GetValue(shared.Device)!);
            var res = StepBenchmark.Run(be, shared.Options(r, r.GetValue(steps), r.GetValue(warmup)), Common.Log);
            Console.WriteLine();
            Console.WriteLine($"device      {be.Name}; {res.ImageTokens} image + {res.TextTokens} text tokens; {res.RecomputeReason}");
            Console.WriteLine($"train step  {res.TrainMs,9:F1} ms median of {r.GetValue(steps)}   {res.TrainTflops,7:F1} TFLOP/s ({res.TrainTflop:F1} TFLOP/step)");
            Console.WriteLine($"inference   {res.InferMs,9:F1} ms median of {r.GetValue(steps)}   {res.InferTflops,7:F1} TFLOP/s");
            Console.WriteLine($"peak memory {res.PeakBytes / (double)(1L << 30),9:F1} GiB (tensors alive at once); setup {res.LoadSeconds:F1} s");
            if (r.GetValue(json) is { } path)
            {
                var inv = CultureInfo.InvariantCulture;
                File.WriteAllText(path, string.Create(inv,
                    $"{{\"engine\": \"metalora\", \"device\": \"{be.Name}\", \"image_tokens\": {res.ImageTokens}, \"text_tokens\": {res.TextTokens}, " +
                    $"\"recompute\": {(res.Recompute ? "true" : "false")}, \"train_ms_median\": {res.TrainMs:F2}, \"train_tflops\": {res.TrainTflops:F1}, " +
                    $"\"infer_ms_median\": {res.InferMs:F2}, \"infer_tflops\": {res.InferTflops:F1}, \"peak_gib\": {res.PeakBytes / (double)(1L << 30):F2}}}\n"));
            }
            return 0;
        });
        return cmd;
    }
}
