// Paths of the real third-party assets fetched by .ci/fetch-assets.sh into tests/assets/ (never committed).
namespace MetaLoraNative.Tests.Onnx;

static class TestAssets
{
    public static readonly string Root = FindRoot();

    public static string BlazeFace => Path.Combine(Root, "blazeface", "face_detection_back_256x256_barracuda.onnx");
    public static string FacePluginEmbedder => Path.Combine(Root, "faceplugin", "fr_feature.onnx");
    public static string ClipMerges => Path.Combine(Root, "clip", "bpe_simple_vocab_16e6.txt");
    public static string UnigramModel => Path.Combine(Root, "sentencepiece", "albert_30k_unigram.model");
    public static string Astronaut => Path.Combine(Root, "photos", "astronaut.png");
    public static string GraceHopper => Path.Combine(Root, "photos", "grace_hopper.jpg");
    public static string Sample(int i) => Path.Combine(Root, "photos", $"sample{i}.jpg");

    /// <summary>Skips the calling test with a reason when an asset is missing.</summary>
    public static void Require(params string[] paths)
    {
        foreach (var p in paths)
            Skip.IfNot(File.Exists(p), $"asset missing: {p} (run .ci/fetch-assets.sh)");
    }

    static string FindRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "MetaLoraNative.sln"))) dir = dir.Parent;
        return Path.Combine(dir?.FullName ?? ".", "tests", "assets");
    }

    public static string TempDir(string name)
    {
        var d = Path.Combine(Path.GetTempPath(), "metalora-tests", name + "-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(d);
        return d;
    }
}
