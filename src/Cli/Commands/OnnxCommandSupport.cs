using MetaLoraNative.Engine;
using MetaLoraNative.Onnx.Faces;
using MetaLoraNative.Onnx.Imaging;
using MetaLoraNative.Onnx.Models;
using MetaLoraNative.Onnx.Runtime;

namespace MetaLoraNative.Cli.Commands;

/// <summary>Model-folder plumbing shared by the commands built on the ONNX side (augment, score, prepare).</summary>
internal static class OnnxCommandSupport
{
    /// <summary>Models folder from --models, else $METALORA_MODELS; null when neither is set.</summary>
    public static string? ModelsDir(string? option) =>
        !string.IsNullOrWhiteSpace(option) ? option : Environment.GetEnvironmentVariable("METALORA_MODELS") is { Length: > 0 } env ? env : null;

    public static IFaceDetector OpenDetector(string? detectorFile, string? modelsDir)
    {
        if (detectorFile is not null) return ModelSet.OpenDetector(detectorFile);
        if (modelsDir is null)
            throw new InputException("--detector", "no face detector: pass --detector FILE (BlazeFace back-256 .onnx) or --models DIR (or set METALORA_MODELS)");
        var problems = ModelsFolder.Check(modelsDir, [ModelsFolder.FaceDetector]);
        if (problems.Count > 0) throw new InputException("--models", string.Join("; ", problems));
        var manifest = ModelsFolder.ReadManifest(modelsDir);
        return ModelSet.OpenDetector(ModelsFolder.PathOf(modelsDir, manifest, ModelsFolder.FaceDetector));
    }
}
