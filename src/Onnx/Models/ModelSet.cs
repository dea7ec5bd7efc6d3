// Opens the components of a models folder on demand (a training run never loads the CLIP ViT-B/32 scorer, a scoring
// run never loads T5). Each accessor checks the file's signature at load.
using MetaLoraNative.Onnx.Clip;
using MetaLoraNative.Onnx.Faces;
using MetaLoraNative.Onnx.Runtime;
using MetaLoraNative.Onnx.Text;
using MetaLoraNative.Onnx.Tokenizers;
using MetaLoraNative.Onnx.Vae;

namespace MetaLoraNative.Onnx.Models;

public sealed class ModelSet : IDisposable
{
    readonly List<IDisposable> _owned = [];
    readonly OnnxSessionFactory _factory;

    public string Directory { get; }
    public ModelsManifest Manifest { get; }

    public ModelSet(string directory, OnnxSessionFactory? factory = null)
    {
        Directory = directory;
        Manifest = ModelsFolder.ReadManifest(directory);
        _factory = factory ?? OnnxSessionFactory.Default;
    }

    string Path(string component, bool tokenizer = false) => ModelsFolder.PathOf(Directory, Manifest, component, tokenizer);

    T Own<T>(T d) where T : IDisposable
    {
        _owned.Add(d);
        return d;
    }

    public FluxTextEncoder OpenTextEncoder()
    {
        var t5 = new T5TextEncoder(Path(ModelsFolder.T5), Path(ModelsFolder.T5, true), _factory);
        try
        {
            var clip = new ClipTextEncoder(Path(ModelsFolder.ClipL), Path(ModelsFolder.ClipL, true), _factory);
            return Own(new FluxTextEncoder(t5, clip));
        }
        catch
        {
            t5.Dispose();
            throw;
        }
    }

    public FluxVae OpenVae(bool encoder = true, bool decoder = true) =>
        Own(new FluxVae(encoder ? Path(ModelsFolder.VaeEncoder) : null, decoder ? Path(ModelsFolder.VaeDecoder) : null, _factory));

    public ClipScoreModel OpenClipScorer() =>
        Own(new ClipScoreModel(Path(ModelsFolder.ClipB32Image), Path(ModelsFolder.ClipB32Text),
            ClipTokenizer.FromMergesFile(Path(ModelsFolder.ClipB32Text, true)), _factory));

    public IFaceDetector OpenFaceDetector() => Own(OpenDetector(Path(ModelsFolder.FaceDetector), _factory));

    public IFaceEmbedder OpenFaceEmbedder()
    {
        var kind = Manifest.Components[ModelsFolder.FaceEmbedder].Kind ?? "facenet";
        string path = Path(ModelsFolder.FaceEmbedder);
        return Own<IFaceEmbedder>(kind switch
        {
            "facenet" => new FacenetEmbedder(path, _factory),
            "aligned112" => new AlignedFaceEmbedder(path, _factory),
            _ => throw new ModelLoadException($"face embedder {path}: unknown kind '{kind}' (known: facenet, aligned112)"),
        });
    }

    /// <summary>The default detector for a model file (BlazeFace back-256 layout).</summary>
    public static IFaceDetector OpenDetector(string path, OnnxSessionFactory? factory = null) => new BlazeFaceDetector(path, factory);

    public void Dispose()
    {
        foreach (var d in _owned) d.Dispose();
        _owned.Clear();
    }
}
