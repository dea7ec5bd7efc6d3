using System.CommandLine;
using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Training;

namespace MetaLoraNative.Cli.Commands;

/// <summary>Options and helpers shared by several commands.</summary>
internal static class Common
{
    public static Option<string> Device() => new Option<string>("--device")
    {
        Description = "Where the transformer runs: 'auto' (CUDA when a usable GPU is found, else the CPU; the choice is logged), " +
                      "'cpu' (the C# reference engine, fp32) or 'cuda' (the GPU engine, bf16 with fp32 masters).",
        DefaultValueFactory = _ => Backends.Auto,
    }.AcceptOnlyFromAmong(Backends.Auto, "cpu", "cuda");

    /// <summary>--recompute auto|on|off (train stage1|stage2, bench); read it with <see cref="RecomputePolicy.Parse"/>.</summary>
    public static Option<string> Recompute() => new Option<string>("--recompute")
    {
        Description = "Per-block recomputation in the backward (less memory, one more forward per block): auto (only when the " +
                      "activations would not fit in free GPU memory; never on the CPU), on, off.",
        DefaultValueFactory = _ => RecomputePolicy.Auto.Name,
    }.AcceptOnlyFromAmong([.. RecomputePolicy.All.Select(p => p.Name)]);

    public static IBackend CreateBackend(string device, bool fp64 = false) => Backends.Create(device, fp64);

    /// <summary>Runs a command body; a bad input prints one clear line and exits 1 instead of a stack trace.</summary>
    public static int Guard(Func<int> body)
    {
        try { return body(); }
        catch (Exception e) when (e is InvalidDataException or FileNotFoundException or DirectoryNotFoundException
                                  or ArgumentException or IOException or KeyNotFoundException or NotSupportedException
                                  or InvalidOperationException or UnauthorizedAccessException
                                  or Onnx.Runtime.ModelLoadException or Onnx.Imaging.ImageLoadException or Onnx.Faces.NoFaceException)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return 1;
        }
        catch (RuntimeFailure e)
        {
            Console.Error.WriteLine($"error: {e.Subject}: {e.Message}");
            return 1;
        }
    }

    public static void Log(string line) => Console.WriteLine(line);
}
