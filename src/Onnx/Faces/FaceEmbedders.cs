// Face identity embedders. Both return L2-normalised vectors so cosine similarity is a dot product.
//
// FacenetEmbedder: facenet-pytorch InceptionResnetV1 trained on VGGFace2 (the paper's FaceSim model), exported by
//   tools/export/export_facenet.py. Model file contract: input "input" (1, 3, 160, 160) RGB, (x - 127.5) / 128;
//   output "embedding" (1, 512). The crop is a square around the detector box (side = CropScale x longer side),
//   resampled to 160x160, standing in for facenet-pytorch's MTCNN crop.
//
// AlignedFaceEmbedder: ArcFace-style 112x112 models (e.g. npm faceplugin-face-recognition-js fr_feature.onnx):
//   one input (1, 3, 112, 112), one output (1, D); the face is warped by the least-squares similarity that takes the
//   detector's eyes, nose tip and mouth centre onto the standard ArcFace 5-point template (mouth corners averaged).
using MetaLoraNative.Onnx.Imaging;
using MetaLoraNative.Onnx.Runtime;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace MetaLoraNative.Onnx.Faces;

public sealed class FacenetEmbedder : IFaceEmbedder
{
    public const int Size = 160;
    public const string InputName = "input", OutputName = "embedding";

    public static ModelSignature Signature { get; } = new("facenet face embedder",
        [new TensorSpec(InputName, TensorElementType.Float, [1, 3, Size, Size])],
        [new TensorSpec(OutputName, TensorElementType.Float, [1, 512])]);

    readonly InferenceSession _session;
    public int Dimension => 512;
    public float CropScale { get; init; } = 1.2f;

    public FacenetEmbedder(string modelPath, OnnxSessionFactory? factory = null) =>
        _session = (factory ?? OnnxSessionFactory.Default).Create(modelPath, Signature);

    public float[] Embed(Image<Rgb24> image, FaceDetection face)
    {
        float side = face.LongSide * CropScale;
        var c = face.Center;
        var map = Affine.FromRect(new RectangleF(c.X - side / 2, c.Y - side / 2, side, side), Size, Size);
        var chw = Warp.ToChw(image, map, Size, Size, 127.5f, 128f);
        return OnnxRun.Vector(_session, InputName, chw, [1, 3, Size, Size], OutputName);
    }

    public void Dispose() => _session.Dispose();
}

public sealed class AlignedFaceEmbedder : IFaceEmbedder
{
    public const int Size = 112;

    // ArcFace's reference landmarks in a 112x112 crop: left eye, right eye, nose tip, mouth centre (mean of corners).
    static readonly PointF[] Template =
    [
        new(38.2946f, 51.6963f), new(73.5318f, 51.5014f), new(56.0252f, 71.7366f),
        new((41.5493f + 70.7299f) / 2, (92.3655f + 92.2041f) / 2),
    ];

    readonly InferenceSession _session;
    readonly string _input, _output;
    public int Dimension { get; }
    public float Mean { get; init; } = 127.5f;
    public float Std { get; init; } = 128f;
    public bool Bgr { get; init; }

    public AlignedFaceEmbedder(string modelPath, OnnxSessionFactory? factory = null)
    {
        _session = (factory ?? OnnxSessionFactory.Default).Create(modelPath, new ModelSignature("aligned face embedder", [], []));
        try
        {
            if (_session.InputMetadata.Count != 1 || _session.OutputMetadata.Count < 1)
                throw new ModelLoadException($"aligned face embedder model {modelPath}: expected one input and one output");
            _input = _session.InputMetadata.Keys.First();
            _output = _session.OutputMetadata.Keys.First();
            int dim = _session.OutputMetadata[_output].Dimensions is [_, var d] ? d : -1;
            if (dim <= 0) throw new ModelLoadException($"aligned face embedder model {modelPath}: output '{_output}' is not (1, D)");
            new ModelSignature("aligned face embedder",
                [new TensorSpec(_input, TensorElementType.Float, [1, 3, Size, Size])],
                [new TensorSpec(_output, TensorElementType.Float, [1, dim])]).Validate(_session, modelPath);
            Dimension = dim;
        }
        catch
        {
            _session.Dispose();
            throw;
        }
    }

    public float[] Embed(Image<Rgb24> image, FaceDetection face)
    {
        if (face.Landmarks.Length < 4)
            throw new ArgumentException("aligned face embedder needs eye, nose and mouth landmarks from the detector");
        var map = Affine.SimilarityInverse(face.Landmarks[..4], Template);
        var chw = Warp.ToChw(image, map, Size, Size, Mean, Std, Bgr);
        return OnnxRun.Vector(_session, _input, chw, [1, 3, Size, Size], _output);
    }

    public void Dispose() => _session.Dispose();
}

static class OnnxRun
{
    /// <summary>Runs a one-input model and returns its output as an L2-normalised vector.</summary>
    public static float[] Vector(InferenceSession session, string input, float[] data, int[] shape, string output)
    {
        var tensor = new DenseTensor<float>(data, shape);
        using var results = session.Run([NamedOnnxValue.CreateFromTensor(input, tensor)], [output]);
        return FaceMath.Normalize(results[0].AsEnumerable<float>().ToArray());
    }
}
