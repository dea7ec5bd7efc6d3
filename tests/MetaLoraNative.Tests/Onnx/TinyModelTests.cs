using MetaLoraNative.Onnx.Augment;
using MetaLoraNative.Onnx.Export;
using MetaLoraNative.Onnx.Faces;
using MetaLoraNative.Onnx.Models;
using MetaLoraNative.Onnx.Runtime;
using MetaLoraNative.Onnx.Text;
using MetaLoraNative.Onnx.Vae;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace MetaLoraNative.Tests.Onnx;

/// <summary>One tiny models folder shared by the tests of this class (writing it takes about a second).</summary>
public sealed class TinyFolderFixture : IDisposable
{
    public string Dir { get; } = TestAssets.TempDir("tiny-models");
    public TinyFolderFixture() => ModelsFolder.WriteTiny(Dir);
    public void Dispose() => Directory.Delete(Dir, true);
}

public class TinyModelTests(TinyFolderFixture tiny) : IClassFixture<TinyFolderFixture>
{
    [Fact]
    public void TinyFolderPassesTheCheck() => Assert.Empty(ModelsFolder.Check(tiny.Dir));

    [Fact]
    public void CheckNamesMissingAndWrongFiles()
    {
        string dir = TestAssets.TempDir("broken-models");
        ModelsFolder.WriteTiny(dir);
        File.Delete(Path.Combine(dir, "vae_decoder.onnx"));
        File.Delete(Path.Combine(dir, "spiece.model"));
        // The CLIP-L entry now points at the T5 model: right file format, wrong signature.
        File.Copy(Path.Combine(dir, "t5_encoder.onnx"), Path.Combine(dir, "clip_l_text.onnx"), overwrite: true);
        File.WriteAllBytes(Path.Combine(dir, "clip_b32_image.onnx"), [1, 2, 3]);
        var problems = ModelsFolder.Check(dir);
        string all = string.Join("\n", problems);
        Assert.True(problems.Any(p => p.StartsWith("vae_decoder:") && p.Contains("missing")), all);
        Assert.True(problems.Any(p => p.StartsWith("t5:") && p.Contains("spiece.model") && p.Contains("missing")), all);
        Assert.True(problems.Any(p => p.StartsWith("clip_l:") && p.Contains("clip_l_text.onnx") && p.Contains("[1, 77]")), all);
        Assert.True(problems.Any(p => p.StartsWith("clip_b32_image:") && p.Contains("clip_b32_image.onnx")), all);
        Assert.True(problems.Count == 4, all);
        Directory.Delete(dir, true);
        Assert.Contains("models.json", Assert.Single(ModelsFolder.Check(TestAssets.TempDir("empty"))));
    }

    [Fact]
    public void WrongSignatureFailsAtLoadNamingFileAndMismatch()
    {
        string vae = Path.Combine(tiny.Dir, "vae_encoder.onnx");
        var e = Assert.Throws<ModelLoadException>(() => new FacenetEmbedder(vae));
        Assert.Contains(vae, e.Message);
        Assert.Contains("'input'", e.Message);
        // Right names, wrong width: the T5 model read as CLIP-L.
        var wrongDims = new MetaLoraNative.Onnx.Runtime.ModelSignature("T5-XXL encoder",
            [new TensorSpec("input_ids", Microsoft.ML.OnnxRuntime.Tensors.TensorElementType.Int64, [1, 512])],
            [new TensorSpec("last_hidden_state", Microsoft.ML.OnnxRuntime.Tensors.TensorElementType.Float, [1, 512, 2048])]);
        string t5 = Path.Combine(tiny.Dir, "t5_encoder.onnx");
        var e2 = Assert.Throws<ModelLoadException>(() => OnnxSessionFactory.Default.Create(t5, wrongDims));
        Assert.Contains("dimension 2 = 4096", e2.Message);
        var e3 = Assert.Throws<ModelLoadException>(() => OnnxSessionFactory.Default.Create(Path.Combine(tiny.Dir, "nothing.onnx"), wrongDims));
        Assert.Contains("not found", e3.Message);
        string junk = Path.Combine(TestAssets.TempDir("junk"), "junk.onnx");
        File.WriteAllText(junk, "not a model");
        Assert.Contains("junk.onnx", Assert.Throws<ModelLoadException>(() => OnnxSessionFactory.Default.Create(junk, wrongDims)).Message);
    }

    [SkippableFact]
    public void RealDetectorFileIsNotAnEmbedder()
    {
        TestAssets.Require(TestAssets.BlazeFace);
        var e = Assert.Throws<ModelLoadException>(() => new FacenetEmbedder(TestAssets.BlazeFace));
        Assert.Contains("face_detection_back_256x256_barracuda.onnx", e.Message);
        var e2 = Assert.Throws<ModelLoadException>(() => new BlazeFaceDetector(Path.Combine(tiny.Dir, "facenet.onnx")));
        Assert.Contains("[1, 256, 256, 3]", e2.Message);
    }

    [Fact]
    public void TextEncodersProduceFluxShapes()
    {
        using var set = new ModelSet(tiny.Dir);
        var text = set.OpenTextEncoder();
        var e = text.Encode("A woman in a 1920s noir setting, wearing a vintage dress, moody lighting.");
        Assert.Equal(512 * 4096, e.T5.Length);
        Assert.Equal(768, e.Pooled.Length);
        Assert.All(e.Pooled, v => Assert.True(float.IsFinite(v)));
        var other = text.Encode("A man riding a bicycle under the Eiffel Tower, smiling at the camera.");
        Assert.NotEqual(e.Pooled, other.Pooled);
        Assert.Equal(e.T5, text.Encode("A woman in a 1920s noir setting, wearing a vintage dress, moody lighting.").T5);
    }

    [Fact]
    public void VaeRoundTripShapes()
    {
        using var set = new ModelSet(tiny.Dir);
        var vae = set.OpenVae();
        using var img = new Image<Rgb24>(96, 64, new Rgb24(200, 100, 50));
        var z = vae.Encode(img);
        Assert.Equal(16 * 8 * 12, z.Length);
        var packed = vae.EncodePacked(img);
        Assert.Equal(4 * 6 * 64, packed.Length);   // (64/16 * 96/16, 64)
        using var back = vae.DecodePacked(packed, 96, 64);
        Assert.Equal((96, 64), (back.Width, back.Height));
        Assert.Throws<ArgumentException>(() => vae.Encode(new Image<Rgb24>(100, 64)));
    }

    [Fact]
    public void PackingMatchesFluxRearrangeAndInverts()
    {
        const int c = 16, h = 6, w = 4;
        var z = Enumerable.Range(0, c * h * w).Select(i => (float)i).ToArray();
        var packed = LatentPacking.Pack(z, c, h, w);
        Assert.Equal(3 * 2 * 64, packed.Length);
        // token (row 1, col 1) = 1 * 2 + 1; channel c*4 + dy*2 + dx holds z[c, 2 + dy, 2 + dx].
        for (int ch = 0; ch < c; ch++)
            for (int dy = 0; dy < 2; dy++)
                for (int dx = 0; dx < 2; dx++)
                    Assert.Equal(z[(ch * h + 2 + dy) * w + 2 + dx], packed[3 * 64 + ch * 4 + dy * 2 + dx]);
        Assert.Equal(z, LatentPacking.Unpack(packed, c, h, w));
        var rnd = new Random(3);
        var p2 = Enumerable.Range(0, 5 * 7 * 64).Select(_ => (float)rnd.NextDouble()).ToArray();
        Assert.Equal(p2, LatentPacking.Pack(LatentPacking.Unpack(p2, 16, 10, 14), 16, 10, 14));
    }

    [Fact]
    public void ClipTIsTheCosineOfImageAndPromptEmbeddingsAndFaceModelsFeedAugmentation()
    {
        using var set = new ModelSet(tiny.Dir);
        var clip = set.OpenClipScorer();
        using var img = new Image<Rgb24>(300, 200, new Rgb24(10, 200, 30));
        double s = clip.ClipT(img, "a green field");
        float[] a = clip.EmbedImage(img), b = clip.EmbedText("a green field");
        Assert.Equal(512, a.Length);
        double dot = a.Zip(b).Sum(p => (double)p.First * p.Second);
        Assert.Equal(dot / Math.Sqrt(a.Sum(v => (double)v * v) * b.Sum(v => (double)v * v)), s, 6);
        Assert.NotEqual(s, clip.ClipT(img, "a red car parked on a rainy street"));   // the prompt matters
        var det = set.OpenFaceDetector();
        var face = Assert.Single(det.Detect(img));
        Assert.InRange(face.Center.X, 120, 180);
        var emb = set.OpenFaceEmbedder().Embed(img, face);
        Assert.Equal(512, emb.Length);
        Assert.Equal(1.0, emb.Sum(v => (double)v * v), 4);
        var crops = FaceAugmenter.Augment(img, det, new AugmentOptions { Resolution = 128 }, "green.png");
        // the detected face drives the plan: one crop per planned size, each resized to its 128² bucket
        var plan = FaceAugmenter.PlanCrops(img.Width, img.Height, face.Box);
        Assert.Equal(plan.Select(p => p.Crop), crops.Select(c => c.Crop));
        Assert.All(crops, c => Assert.Equal(FaceAugmenter.Bucket((double)c.Crop.Width / c.Crop.Height, 128), (c.Image.Width, c.Image.Height)));
        crops.ForEach(c => c.Dispose());
    }

    [Fact]
    public void TinyUnigramTokenizerRoundTripsAndPadsTo512()
    {
        var t = MetaLoraNative.Onnx.Tokenizers.T5Tokenizer.FromModelFile(Path.Combine(tiny.Dir, "spiece.model"));
        var ids = t.Encode("a cat");
        Assert.Equal(1, t.EosId);
        Assert.Equal("a cat", t.Decode(t.EncodeRaw("a cat")));
        Assert.Equal(0, ids[511]);
    }
}
