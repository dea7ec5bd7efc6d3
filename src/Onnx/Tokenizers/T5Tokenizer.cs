// T5's SentencePiece Unigram tokenizer (spiece.model), run by Microsoft.ML.Tokenizers' SentencePieceTokenizer.
// FLUX feeds T5-XXL exactly 512 ids: the text's pieces cut to 511, then </s>, then <pad> (id 0) up to 512,
// as Hugging Face's T5TokenizerFast does with max_length=512, truncation and padding="max_length".
using MetaLoraNative.Onnx.Export;
using Microsoft.ML.Tokenizers;

namespace MetaLoraNative.Onnx.Tokenizers;

public sealed class T5Tokenizer
{
    public const int DefaultLength = 512;
    readonly SentencePieceTokenizer _sp;

    public int Length { get; }
    public int EosId => _sp.EndOfSentenceId;
    public int PadId { get; }

    T5Tokenizer(SentencePieceTokenizer sp, int length, int padId)
    {
        _sp = sp;
        Length = length;
        PadId = padId;
    }

    /// <summary>Loads a SentencePiece .model protobuf (T5's spiece.model or any Unigram/BPE model).</summary>
    public static T5Tokenizer FromModelFile(string path, int length = DefaultLength, int padId = 0)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"SentencePiece model not found: {path}", path);
        SentencePieceTokenizer sp;
        try
        {
            using var stream = new MemoryStream(WithSpecialIds(File.ReadAllBytes(path)));
            sp = SentencePieceTokenizer.Create(stream, addBeginningOfSentence: false, addEndOfSentence: false);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            throw new InvalidDataException($"SentencePiece model {path} could not be read: {e.Message}", e);
        }
        return new T5Tokenizer(sp, length, padId);
    }

    // Models trained without BOS or EOS store id -1 (ALBERT has neither; T5 has no BOS), which
    // Microsoft.ML.Tokenizers 2.0 indexes without a check. We never emit BOS and append EOS ourselves, so a -1 is
    // replaced by the id of the piece the trainer names for it ("<s>", "</s>") when present, else by the unknown id.
    // Protobuf merges a repeated singular sub-message, so appending a second trainer_spec (field 2) carrying only
    // bos_id (41) / eos_id (42) overrides those two values and leaves the rest of the model byte-identical.
    static byte[] WithSpecialIds(byte[] model)
    {
        var pieces = new Dictionary<string, int>();
        long unk = 0, bos = -1, eos = -1;
        string bosPiece = "<s>", eosPiece = "</s>";
        foreach (var f in ProtoReader.Fields(model))
        {
            if (f.Number == 1 && f.WireType == 2)
            {
                foreach (var p in ProtoReader.Fields(f.Bytes))
                    if (p.Number == 1 && p.WireType == 2) pieces.TryAdd(System.Text.Encoding.UTF8.GetString(p.Bytes.Span), pieces.Count);
            }
            else if (f.Number == 2 && f.WireType == 2)
            {
                foreach (var t in ProtoReader.Fields(f.Bytes))
                {
                    if (t.Number == 40) unk = (long)t.Value;
                    else if (t.Number == 41) bos = (long)t.Value;
                    else if (t.Number == 42) eos = (long)t.Value;
                    else if (t.Number == 46 && t.WireType == 2) bosPiece = System.Text.Encoding.UTF8.GetString(t.Bytes.Span);
                    else if (t.Number == 47 && t.WireType == 2) eosPiece = System.Text.Encoding.UTF8.GetString(t.Bytes.Span);
                }
            }
        }
        if (bos >= 0 && eos >= 0) return model;
        var patch = new ProtoWriter();
        if (bos < 0) patch.Varint(41, pieces.TryGetValue(bosPiece, out int b) ? b : unk);
        if (eos < 0) patch.Varint(42, pieces.TryGetValue(eosPiece, out int e) ? e : unk);
        var tail = new ProtoWriter().Message(2, patch).ToArray();
        return [.. model, .. tail];
    }

    public IReadOnlyList<int> EncodeRaw(string text) => _sp.EncodeToIds(text, addBeginningOfSentence: false, addEndOfSentence: false);

    /// <summary>(Length) ids: pieces (cut to Length-1), EOS, then PadId.</summary>
    public long[] Encode(string text)
    {
        var raw = EncodeRaw(text);
        var ids = new long[Length];
        int n = Math.Min(raw.Count, Length - 1);
        for (int i = 0; i < n; i++) ids[i] = raw[i];
        ids[n] = EosId;
        for (int i = n + 1; i < Length; i++) ids[i] = PadId;
        return ids;
    }

    public string Decode(IEnumerable<int> ids) => _sp.Decode(ids, considerSpecialTokens: false) ?? "";
}
