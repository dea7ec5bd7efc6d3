using MetaLoraNative.Onnx.Faces;
using MetaLoraNative.Onnx.Imaging;
using MetaLoraNative.Onnx.Models;
using MetaLoraNative.Onnx.Runtime;

namespace MetaLoraNative.Cli.Commands;

/// <summary>Error handling shared by the commands built on the ONNX side (augment, score).</summary>
internal static class OnnxCommandSupport
{
    /// <summary>Runs a command body; a bad input prints one clear line and exits 1 instead of a stack trace.</summary>
    public static int Guard(Func<int> body)
    {
        try { return body(); }
        catch (Exception e) when (e is ModelLoadException or ImageLoadException or NoFaceException or InvalidDataException
                                  or FileNotFoundException or DirectoryNotFoundException or ArgumentException or IOException
                                  or UnauthorizedAccessException or InvalidOperationException)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return 1;
        }
    }

    /// <summary>Models folder from --models, else $METALORA_MODELS; null when neither is set.</summary>
    public static string? ModelsDir(string? option) =>
        !string.IsNullOrWhiteSpace(option) ? option : Environment.GetEnvironmentVariable("METALORA_MODELS") is { Length: > 0 } env ? env : null;

    public static IFaceDetector OpenDetector(string? detectorFile, string? modelsDir)
    {
        if (detectorFile is not null) return ModelSet.OpenDetector(detectorFile);
        if (modelsDir is null)
            throw new ArgumentException("no face detector: pass --detector FILE (BlazeFace back-256 .onnx) or --models DIR (or set METALORA_MODELS)");
        var problems = ModelsFolder.Check(modelsDir, [ModelsFolder.FaceDetector]);
        if (problems.Count > 0) throw new ArgumentException(string.Join("\n", problems));
        var manifest = ModelsFolder.ReadManifest(modelsDir);
        return ModelSet.OpenDetector(ModelsFolder.PathOf(modelsDir, manifest, ModelsFolder.FaceDetector));
    }
}
