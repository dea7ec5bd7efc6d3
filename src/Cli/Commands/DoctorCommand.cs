using System.CommandLine;
using System.Runtime.InteropServices;

namespace MetaLoraNative.Cli.Commands;

/// <summary>Reports what this machine offers: .NET, CPU, the CUDA stack and ONNX Runtime. One line per missing piece.</summary>
internal static class DoctorCommand
{
    public static Command Create()
    {
        var models = new Option<string?>("--models") { Description = "Also check a models folder (models.json and every file it names: signatures, tokenizers)." };
        var cmd = new Command("doctor", "Checks .NET, the CPU, CUDA (driver, NVRTC, cuBLASLt) and ONNX Runtime, with versions; one clear line for each missing piece.")
        {
            models,
        };
        cmd.SetAction(r =>
        {
            foreach (var line in Report()) Console.WriteLine(line);
            return r.GetValue(models) is { } dir ? ModelsCommand.PrintCheck(dir) : 0;
        });
        return cmd;
    }

    public static IEnumerable<string> Report()
    {
        yield return $".NET        {RuntimeInformation.FrameworkDescription} on {RuntimeInformation.RuntimeIdentifier}";
        yield return $"CPU         {Environment.ProcessorCount} logical cores, {RuntimeInformation.ProcessArchitecture}, " +
                     $"{GC.GetGCMemoryInfo().TotalAvailableMemoryBytes / (1L << 30)} GiB available to .NET";
        foreach (var line in Kernels.CudaProbe.Report()) yield return line;
        yield return Kernels.NcclProbe.Report();
        foreach (var line in OnnxRuntimeLines()) yield return line;
    }

    static IEnumerable<string> OnnxRuntimeLines()
    {
        string? version = null, error = null;
        try { version = Microsoft.ML.OnnxRuntime.OrtEnv.Instance().GetVersionString(); }
        catch (Exception e) { error = e.Message; }
        if (version != null)
        {
            string providers = string.Join(", ", Microsoft.ML.OnnxRuntime.OrtEnv.Instance().GetAvailableProviders());
            yield return $"ONNX Runtime {version} (providers: {providers})";
        }
        else yield return $"ONNX Runtime MISSING: {error}";
    }
}
