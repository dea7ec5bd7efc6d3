// CLIP's byte-level BPE (OpenAI bpe_simple_vocab_16e6), run by Microsoft.ML.Tokenizers' BpeTokenizer.
// The vocabulary is not a separate file in OpenAI's release: it is derived from the merges list exactly as CLIP does:
//   256 byte symbols, the same 256 with "</w>", one token per merge (the first 48,894 merges), then
//   <|startoftext|> (49406) and <|endoftext|> (49407): 49,408 ids in all.
// Text is cleaned as CLIP cleans it (HTML entities unescaped, whitespace collapsed, lower-cased), split with CLIP's
// regex, and every word gets "</w>" on its last symbol. Output: always ContextLength ids = BOS, up to 75 tokens, EOS, pad.
using System.Net;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace MetaLoraNative.Onnx.Tokenizers;

public sealed class ClipTokenizer
{
    public const int ContextLength = 77;
    public const int StartOfText = 49406;     // ids of the real vocabulary; a smaller merges file moves them down
    public const int EndOfText = 49407;
    const int MergeCount = 49152 - 256 - 2;   // CLIP keeps this many merges from the file

    /// <summary>Id of &lt;|startoftext|&gt;: 49406 with OpenAI's merges file.</summary>
    public int BosId { get; }
    /// <summary>Id of &lt;|endoftext|&gt;: 49407 with OpenAI's merges file.</summary>
    public int EosId => BosId + 1;

    readonly BpeTokenizer _bpe;

    /// <summary>Id written after EOS up to 77: EOS (49407) for Hugging Face CLIPTokenizer (FLUX's CLIP-L), 0 for OpenAI's clip.tokenize.</summary>
    public int PadId { get; }

    readonly string[] _tokens;   // id -> vocabulary string, for Decode

    ClipTokenizer(BpeTokenizer bpe, int padId, string[] tokens)
    {
        BosId = tokens.Length - 2;
        _bpe = bpe;
        _tokens = tokens;
        PadId = padId;
    }

    /// <summary>Loads bpe_simple_vocab_16e6.txt (plain text, optionally .gz) or a Hugging Face merges.txt.</summary>
    /// <param name="padId">null: pad with EOS (Hugging Face's choice).</param>
    public static ClipTokenizer FromMergesFile(string path, int? padId = null)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"CLIP BPE merges file not found: {path}", path);
        string text;
        if (path.EndsWith(".gz", StringComparison.OrdinalIgnoreCase))
        {
            using var gz = new System.IO.Compression.GZipStream(File.OpenRead(path), System.IO.Compression.CompressionMode.Decompress);
            using var reader = new StreamReader(gz);
            text = reader.ReadToEnd();
        }
        else text = File.ReadAllText(path);
        return FromMergesText(text, padId, path);
    }

    /// <summary>
    /// OpenAI's file holds more merges than CLIP uses; the first 48,894 are taken. A shorter file (the tiny test
    /// vocabulary) is used whole, and the special ids move down to follow its last merge.
    /// </summary>
    public static ClipTokenizer FromMergesText(string text, int? padId = null, string label = "merges")
    {
        var lines = text.Split('\n');
        if (lines.Length == 0 || !lines[0].StartsWith("#version", StringComparison.Ordinal))
            throw new InvalidDataException($"CLIP BPE file {label} does not start with a '#version' line");
        var merges = lines.Skip(1).Select(l => l.TrimEnd('\r')).Where(l => l.Length > 0).Take(MergeCount).ToList();
        if (merges.Count == 0) throw new InvalidDataException($"CLIP BPE file {label} holds no merges");

        var byteSymbols = ByteSymbols();
        var vocab = new List<KeyValuePair<string, int>>(49408);
        foreach (var s in byteSymbols) vocab.Add(new(s, vocab.Count));
        foreach (var s in byteSymbols) vocab.Add(new(s + "</w>", vocab.Count));
        foreach (var m in merges)
        {
            int sp = m.IndexOf(' ');
            if (sp <= 0) throw new InvalidDataException($"CLIP BPE file {label}: bad merge line '{m}'");
            vocab.Add(new(m.Remove(sp, 1), vocab.Count));
        }
        vocab.Add(new("<|startoftext|>", vocab.Count));
        vocab.Add(new("<|endoftext|>", vocab.Count));

        int bos = vocab.Count - 2;
        var special = new Dictionary<string, int> { ["<|startoftext|>"] = bos, ["<|endoftext|>"] = bos + 1 };
        var options = new BpeOptions(vocab)
        {
            Merges = merges,
            ByteLevel = true,
            EndOfWordSuffix = "</w>",
            PreTokenizer = new RegexPreTokenizer(WordPattern(), special),
            Normalizer = new ClipNormalizer(),
            SpecialTokens = special,
        };
        return new ClipTokenizer(BpeTokenizer.Create(options), padId ?? bos + 1, vocab.Select(kv => kv.Key).ToArray());
    }

    /// <summary>Token ids without BOS/EOS or padding.</summary>
    public IReadOnlyList<int> EncodeRaw(string text) => _bpe.EncodeToIds(text);

    /// <summary>(77) ids: BOS, the first 75 tokens, EOS, then PadId. Over-long prompts are cut, EOS kept.</summary>
    public long[] Encode(string text)
    {
        var raw = EncodeRaw(text);
        var ids = new long[ContextLength];
        ids[0] = BosId;
        int n = Math.Min(raw.Count, ContextLength - 2);
        for (int i = 0; i < n; i++) ids[1 + i] = raw[i];
        ids[1 + n] = EosId;
        for (int i = n + 2; i < ContextLength; i++) ids[i] = PadId;
        return ids;
    }

    /// <summary>Text of the given ids: "</w>" becomes a space (so "a, b" decodes as CLIP's own decoder gives it, "a , b"), byte symbols become UTF-8 bytes; special ids are dropped.</summary>
    public string Decode(IEnumerable<int> ids)
    {
        // Invert the byte -> symbol table: printable bytes map to themselves, the others to 256 + n.
        var byteOf = new Dictionary<char, byte>();
        int n = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            byteOf[printable ? (char)b : (char)(256 + n++)] = (byte)b;
        }
        var bytes = new List<byte>();
        foreach (int id in ids)
        {
            if (id < 0 || id >= BosId) continue;
            string tok = _tokens[id];
            bool endOfWord = tok.EndsWith("</w>", StringComparison.Ordinal);
            if (endOfWord) tok = tok[..^4];
            foreach (char c in tok) bytes.Add(byteOf[c]);
            if (endOfWord) bytes.Add((byte)' ');
        }
        return System.Text.Encoding.UTF8.GetString(bytes.ToArray()).TrimEnd();
    }

    // CLIP's split: contractions, letter runs, single digits, runs of other non-space characters.
    static Regex WordPattern() => new(
        @"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
        RegexOptions.IgnoreCase | RegexOptions.Compiled | RegexOptions.CultureInvariant);

    // GPT-2's reversible byte -> printable-character table, in CLIP's order: the printable bytes keep their own
    // code point, every other byte gets 256 + n in byte order.
    static List<string> ByteSymbols()
    {
        var printable = new List<int>();
        for (int b = '!'; b <= '~'; b++) printable.Add(b);
        for (int b = 0xA1; b <= 0xAC; b++) printable.Add(b);
        for (int b = 0xAE; b <= 0xFF; b++) printable.Add(b);
        var set = new HashSet<int>(printable);
        var symbols = printable.Select(b => ((char)b).ToString()).ToList();
        int n = 0;
        for (int b = 0; b < 256; b++)
            if (!set.Contains(b)) symbols.Add(((char)(256 + n++)).ToString());
        return symbols;
    }

    /// <summary>CLIP's basic_clean + whitespace_clean + lower (ftfy's mojibake repair is not reproduced).</summary>
    sealed class ClipNormalizer : Normalizer
    {
        static readonly Regex Spaces = new(@"\s+", RegexOptions.Compiled);

        public override string Normalize(string original)
        {
            string s = WebUtility.HtmlDecode(WebUtility.HtmlDecode(original));
            s = Spaces.Replace(s, " ").Trim();
            return s.ToLowerInvariant();
        }

        public override string Normalize(ReadOnlySpan<char> original) => Normalize(original.ToString());
    }
}
