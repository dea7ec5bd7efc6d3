// Tiny random-weight stand-ins with exactly the real models' input/output names, element types and layouts, so the
// whole pipeline runs (tests, demo) without the multi-gigabyte checkpoints. They compute nothing meaningful:
//   T5 (1,512) ids -> Mod 64 -> Gather from a (64, 4096) table -> Tanh -> (1, 512, 4096)
//   CLIP-L (1,77) ids -> Mod 64 -> Gather (64, 768) -> ReduceMean over tokens -> Tanh -> (1, 768)
//   VAE encoder (1,3,H,W) -> Conv 3->16, kernel 8, stride 8 -> (1,16,H/8,W/8)
//   VAE decoder (1,16,h,w) -> ConvTranspose 16->3, kernel 8, stride 8 -> Tanh -> (1,3,8h,8w)
//   CLIP B/32 image (1,3,224,224) -> Conv 3->512, kernel 32, stride 32 -> ReduceMean over 7x7 -> (1,512)
//   CLIP B/32 text (1,77) -> Mod 64 -> Gather (64, 512) -> ReduceMean -> (1,512)
//   facenet (1,3,160,160) -> Conv 3->8, kernel 16, stride 16 -> Reshape (1,800) -> MatMul (800,512) -> (1,512)
//   detector: BlazeFace's four outputs as constants (one confident anchor: a face in the middle of the letterbox);
//             the input only enters through ReduceMean x 0 so the graph depends on it
using System.Text;

namespace MetaLoraNative.Onnx.Export;

public static class TinyModels
{
    const int Table = 64;   // rows of the tiny embedding tables; ids are reduced modulo this

    public static void T5(string path, int seed = 1)
    {
        var g = new OnnxGraphBuilder("tiny_t5_encoder");
        var rng = new Random(seed);
        g.Input("input_ids", OnnxDataType.Int64, 1, 512);
        var idx = g.Node("Mod", ["input_ids", g.Initializer("table_rows", new long[] { Table })]);
        var emb = g.Node("Gather", [g.RandomInitializer("embed", rng, 1f, Table, 4096), idx], attributes: ("axis", 0));
        g.Node("Tanh", [emb], "last_hidden_state");
        g.Output("last_hidden_state", OnnxDataType.Float, 1, 512, 4096);
        g.Save(path);
    }

    public static void ClipL(string path, int seed = 2) => PooledText(path, "tiny_clip_l_text", "pooled", 768, seed, tanh: true);

    public static void ClipB32Text(string path, int seed = 3) => PooledText(path, "tiny_clip_b32_text", "text_embeds", 512, seed, tanh: false);

    static void PooledText(string path, string name, string output, int width, int seed, bool tanh)
    {
        var g = new OnnxGraphBuilder(name);
        var rng = new Random(seed);
        g.Input("input_ids", OnnxDataType.Int64, 1, 77);
        var idx = g.Node("Mod", ["input_ids", g.Initializer("table_rows", new long[] { Table })]);
        var emb = g.Node("Gather", [g.RandomInitializer("embed", rng, 1f, Table, width), idx], attributes: ("axis", 0));
        var mean = g.Node("ReduceMean", [emb], tanh ? null : output, ("axes", new long[] { 1 }), ("keepdims", 0));
        if (tanh) g.Node("Tanh", [mean], output);
        g.Output(output, OnnxDataType.Float, 1, width);
        g.Save(path);
    }

    public static void VaeEncoder(string path, int seed = 4)
    {
        var g = new OnnxGraphBuilder("tiny_vae_encoder");
        var rng = new Random(seed);
        g.Input("image", OnnxDataType.Float, 1, 3, "height", "width");
        g.Node("Conv", ["image", g.RandomInitializer("w", rng, 0.05f, 16, 3, 8, 8), g.RandomInitializer("b", rng, 0.1f, 16)], "latent",
            ("kernel_shape", new long[] { 8, 8 }), ("strides", new long[] { 8, 8 }));
        g.Output("latent", OnnxDataType.Float, 1, 16, "latent_height", "latent_width");
        g.Save(path);
    }

    public static void VaeDecoder(string path, int seed = 5)
    {
        var g = new OnnxGraphBuilder("tiny_vae_decoder");
        var rng = new Random(seed);
        g.Input("latent", OnnxDataType.Float, 1, 16, "latent_height", "latent_width");
        var up = g.Node("ConvTranspose", ["latent", g.RandomInitializer("w", rng, 0.1f, 16, 3, 8, 8), g.RandomInitializer("b", rng, 0.1f, 3)], null,
            ("kernel_shape", new long[] { 8, 8 }), ("strides", new long[] { 8, 8 }));
        g.Node("Tanh", [up], "image");
        g.Output("image", OnnxDataType.Float, 1, 3, "height", "width");
        g.Save(path);
    }

    public static void ClipB32Image(string path, int seed = 6)
    {
        var g = new OnnxGraphBuilder("tiny_clip_b32_image");
        var rng = new Random(seed);
        g.Input("pixel_values", OnnxDataType.Float, 1, 3, 224, 224);
        var conv = g.Node("Conv", ["pixel_values", g.RandomInitializer("w", rng, 0.02f, 512, 3, 32, 32)], null,
            ("kernel_shape", new long[] { 32, 32 }), ("strides", new long[] { 32, 32 }));
        g.Node("ReduceMean", [conv], "image_embeds", ("axes", new long[] { 2, 3 }), ("keepdims", 0));
        g.Output("image_embeds", OnnxDataType.Float, 1, 512);
        g.Save(path);
    }

    public static void Facenet(string path, int seed = 7)
    {
        var g = new OnnxGraphBuilder("tiny_facenet");
        var rng = new Random(seed);
        g.Input("input", OnnxDataType.Float, 1, 3, 160, 160);
        var conv = g.Node("Conv", ["input", g.RandomInitializer("w", rng, 0.05f, 8, 3, 16, 16)], null,
            ("kernel_shape", new long[] { 16, 16 }), ("strides", new long[] { 16, 16 }));
        var flat = g.Node("Reshape", [conv, g.Initializer("shape", new long[] { 1, 800 }, 2)]);
        g.Node("MatMul", [flat, g.RandomInitializer("proj", rng, 0.05f, 800, 512)], "embedding");
        g.Output("embedding", OnnxDataType.Float, 1, 512);
        g.Save(path);
    }

    /// <summary>A stand-in with BlazeFace's signature that always "sees" one face filling the middle of the frame.</summary>
    public static void Detector(string path)
    {
        var g = new OnnxGraphBuilder("tiny_blazeface");
        g.Input("input", OnnxDataType.Float, 1, 256, 256, 3);
        var zero = g.Node("Mul", [g.Node("ReduceMean", ["input"], null, ("keepdims", 1)), g.Initializer("zero", [0f], 1)]);
        var zero3 = g.Node("Reshape", [zero, g.Initializer("shape3", new long[] { 1, 1, 1 }, 3)]);
        // Fine layer: 16x16 cells x 2 anchors; the anchor of cell (8, 8) is at (136, 136) in the 256 square.
        var scoresFine = Enumerable.Repeat(-10f, 512).ToArray();
        var boxesFine = new float[512 * 16];
        int a = (8 * 16 + 8) * 2;
        scoresFine[a] = 10f;
        // Box 110 px square centred 8 px up-left of the anchor (at 128, 128); keypoints: eyes, nose, mouth, ears.
        float[] box = [-8, -8, 110, 110, -30, -28, 14, -28, -8, 0, -8, 24, -54, -20, 38, -20];
        Array.Copy(box, 0, boxesFine, a * 16, 16);
        var scoresCoarse = Enumerable.Repeat(-10f, 384).ToArray();
        var boxesCoarse = new float[384 * 16];
        g.Node("Add", [zero3, g.Initializer("scores_fine", scoresFine, 1, 512, 1)], "scores_fine_out");
        g.Node("Add", [zero3, g.Initializer("scores_coarse", scoresCoarse, 1, 384, 1)], "scores_coarse_out");
        g.Node("Add", [zero3, g.Initializer("boxes_fine", boxesFine, 1, 512, 16)], "boxes_fine_out");
        g.Node("Add", [zero3, g.Initializer("boxes_coarse", boxesCoarse, 1, 384, 16)], "boxes_coarse_out");
        g.Output("scores_fine_out", OnnxDataType.Float, 1, 512, 1);
        g.Output("scores_coarse_out", OnnxDataType.Float, 1, 384, 1);
        g.Output("boxes_fine_out", OnnxDataType.Float, 1, 512, 16);
        g.Output("boxes_coarse_out", OnnxDataType.Float, 1, 384, 16);
        g.Save(path);
    }

    /// <summary>
    /// A small valid CLIP BPE merges file: every lower-case letter pair, inside a word and at its end (1,352 merges),
    /// so the tokenizer code path is the real one with a 1,866-id vocabulary.
    /// </summary>
    public static void ClipMerges(string path)
    {
        var sb = new StringBuilder("#version: 0.2\n");
        for (char x = 'a'; x <= 'z'; x++)
            for (char y = 'a'; y <= 'z'; y++)
                sb.Append(x).Append(' ').Append(y).Append('\n').Append(x).Append(' ').Append(y).Append("</w>\n");
        File.WriteAllText(path, sb.ToString());
    }

    /// <summary>
    /// A small SentencePiece Unigram model (protobuf written by hand): T5's special layout (pad 0, eos 1, unk 2), then
    /// "▁", the letters, digits, punctuation and "▁"+letter pieces with decreasing scores.
    /// Fields: ModelProto.pieces 1 {piece 1, score 2, type 3 (1 normal, 2 unknown, 3 control)},
    /// trainer_spec 2 {model_type 3 (1 = unigram), unk_id 40, bos_id 41, eos_id 42, pad_id 43},
    /// normalizer_spec 3 {name 1, add_dummy_prefix 3, remove_extra_whitespaces 4, escape_whitespaces 5}.
    /// </summary>
    public static void UnigramModel(string path)
    {
        var m = new ProtoWriter();
        void Piece(string p, float score, int type) => m.Message(1, new ProtoWriter().String(1, p).Float(2, score).Varint(3, type));
        Piece("<pad>", 0, 3);
        Piece("</s>", 0, 3);
        Piece("<unk>", 0, 2);
        float s = -2;
        Piece("\u2581", s, 1);
        foreach (char c in "abcdefghijklmnopqrstuvwxyz") Piece("\u2581" + c, s -= 0.1f, 1);
        foreach (char c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"-()[]/") Piece(c.ToString(), s -= 0.1f, 1);
        m.Message(2, new ProtoWriter().Varint(3, 1).Varint(40, 2).Varint(41, -1).Varint(42, 1).Varint(43, 0));
        m.Message(3, new ProtoWriter().String(1, "identity").Varint(3, 1).Varint(4, 1).Varint(5, 1));
        File.WriteAllBytes(path, m.ToArray());
    }
}
