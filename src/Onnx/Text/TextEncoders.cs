// FLUX's two text encoders behind ONNX Runtime.
//   T5-XXL encoder: "input_ids" int64 (1, 512) -> "last_hidden_state" float32 (1, 512, 4096)
//   CLIP-L text:    "input_ids" int64 (1, 77)  -> "pooled" float32 (1, 768)  (the EOS token's final-LN state, as
//                   Hugging Face's CLIPTextModel pooler_output; FLUX's vector_in input)
// tools/export writes models with exactly these names; a model keeping weights in fp16/bf16 casts its output to fp32.
using MetaLoraNative.Onnx.Runtime;
using MetaLoraNative.Onnx.Tokenizers;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace MetaLoraNative.Onnx.Text;

public sealed class T5TextEncoder : IDisposable
{
    public const string InputName = "input_ids", OutputName = "last_hidden_state";
    public const int Length = 512, Width = 4096;

    public static ModelSignature Signature { get; } = new("T5-XXL encoder",
        [new TensorSpec(InputName, TensorElementType.Int64, [1, Length])],
        [new TensorSpec(OutputName, TensorElementType.Float, [1, Length, Width])]);

    readonly InferenceSession _session;
    public T5Tokenizer Tokenizer { get; }

    /// <summary>Content fingerprint of the model and tokenizer files (cache keys).</summary>
    public string Fingerprint { get; }

    public T5TextEncoder(string modelPath, string tokenizerPath, OnnxSessionFactory? factory = null)
        : this(modelPath, T5Tokenizer.FromModelFile(tokenizerPath), factory, Cache.ModelFingerprint.Of(modelPath, tokenizerPath)) { }

    public T5TextEncoder(string modelPath, T5Tokenizer tokenizer, OnnxSessionFactory? factory = null, string? fingerprint = null)
    {
        if (tokenizer.Length != Length) throw new ArgumentException($"T5 tokenizer length {tokenizer.Length}, encoder needs {Length}");
        Tokenizer = tokenizer;
        _session = (factory ?? OnnxSessionFactory.Default).Create(modelPath, Signature);
        Fingerprint = fingerprint ?? Cache.ModelFingerprint.Of(modelPath);
    }

    /// <summary>(512, 4096) row-major.</summary>
    public float[] Encode(string prompt) => EncodeIds(Tokenizer.Encode(prompt));

    public float[] EncodeIds(long[] ids) => Run.Single(_session, InputName, ids, [1, Length], OutputName, Length * Width);

    public void Dispose() => _session.Dispose();
}

public sealed class ClipTextEncoder : IDisposable
{
    public const string InputName = "input_ids", OutputName = "pooled";
    public const int Width = 768;

    public static ModelSignature Signature { get; } = new("CLIP-L text encoder",
        [new TensorSpec(InputName, TensorElementType.Int64, [1, ClipTokenizer.ContextLength])],
        [new TensorSpec(OutputName, TensorElementType.Float, [1, Width])]);

    readonly InferenceSession _session;
    public ClipTokenizer Tokenizer { get; }

    /// <summary>Content fingerprint of the model and tokenizer files (cache keys).</summary>
    public string Fingerprint { get; }

    public ClipTextEncoder(string modelPath, string mergesPath, OnnxSessionFactory? factory = null)
        : this(modelPath, ClipTokenizer.FromMergesFile(mergesPath), factory, Cache.ModelFingerprint.Of(modelPath, mergesPath)) { }

    public ClipTextEncoder(string modelPath, ClipTokenizer tokenizer, OnnxSessionFactory? factory = null, string? fingerprint = null)
    {
        Tokenizer = tokenizer;
        _session = (factory ?? OnnxSessionFactory.Default).Create(modelPath, Signature);
        Fingerprint = fingerprint ?? Cache.ModelFingerprint.Of(modelPath);
    }

    /// <summary>(768) pooled embedding.</summary>
    public float[] Encode(string prompt) =>
        Run.Single(_session, InputName, Tokenizer.Encode(prompt), [1, ClipTokenizer.ContextLength], OutputName, Width);

    public void Dispose() => _session.Dispose();
}

/// <summary>What the transformer needs from a prompt: T5 tokens (512, 4096) and CLIP pooled (768).</summary>
public sealed record PromptEmbedding(float[] T5, float[] Pooled);

/// <summary>Both encoders together, as the pipeline calls them.</summary>
public sealed class FluxTextEncoder : IDisposable
{
    public T5TextEncoder T5 { get; }
    public ClipTextEncoder Clip { get; }

    public FluxTextEncoder(T5TextEncoder t5, ClipTextEncoder clip)
    {
        T5 = t5;
        Clip = clip;
    }

    public string Fingerprint => T5.Fingerprint + Clip.Fingerprint;

    public PromptEmbedding Encode(string prompt) => new(T5.Encode(prompt), Clip.Encode(prompt));

    public void Dispose()
    {
        T5.Dispose();
        Clip.Dispose();
    }
}

static class Run
{
    /// <summary>Runs a model with one int64 input and copies its one float output, checking the element count.</summary>
    public static float[] Single(InferenceSession session, string input, long[] ids, int[] shape, string output, int expected)
    {
        var tensor = new DenseTensor<long>(ids, shape);
        using var results = session.Run([NamedOnnxValue.CreateFromTensor(input, tensor)], [output]);
        var data = results[0].AsEnumerable<float>().ToArray();
        if (data.Length != expected) throw new InvalidOperationException($"{output}: got {data.Length} values, expected {expected}");
        return data;
    }
}
