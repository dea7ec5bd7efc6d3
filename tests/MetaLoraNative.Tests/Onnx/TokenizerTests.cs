using MetaLoraNative.Onnx.Tokenizers;

namespace MetaLoraNative.Tests.Onnx;

public class TokenizerTests
{
    static readonly Lazy<ClipTokenizer?> Clip = new(() =>
        File.Exists(TestAssets.ClipMerges) ? ClipTokenizer.FromMergesFile(TestAssets.ClipMerges) : null);

    static ClipTokenizer RequireClip()
    {
        TestAssets.Require(TestAssets.ClipMerges);
        return Clip.Value!;
    }

    [SkippableFact]
    public void ClipReferenceSentence()
    {
        var ids = RequireClip().Encode("a photo of a cat");
        Assert.Equal(new long[] { 49406, 320, 1125, 539, 320, 2368, 49407 }, ids[..7]);
        Assert.Equal(77, ids.Length);
        Assert.All(ids[7..], id => Assert.Equal(49407, id));   // Hugging Face pads with <|endoftext|>
    }

    [SkippableFact]
    public void ClipCasingAndWhitespaceDoNotMatter()
    {
        var t = RequireClip();
        Assert.Equal(t.Encode("a photo of a cat"), t.Encode("  A   PHOTO of\ta Cat "));
    }

    [SkippableFact]
    public void ClipPunctuationNumbersAndContractions()
    {
        var t = RequireClip();
        // "cat," splits into "cat</w>" and ",</w>": the comma is its own word.
        var cat = t.EncodeRaw("cat");
        var comma = t.EncodeRaw("cat,");
        Assert.Equal(cat[0], comma[0]);
        Assert.Equal(2, comma.Count);
        // Digits are split one by one.
        Assert.Equal(4, t.EncodeRaw("1920").Count);
        Assert.Equal(t.EncodeRaw("1")[0], t.EncodeRaw("1920")[0]);
        // Contractions are separate words ("'s").
        Assert.Equal(2, t.EncodeRaw("man's").Count);
        // HTML entities are unescaped like CLIP's basic_clean.
        Assert.Equal(t.EncodeRaw("rock & roll"), t.EncodeRaw("rock &amp; roll"));
        // Byte-level: any character encodes; decoding gives CLIP's spacing (every word ends in "</w>").
        Assert.Equal("a 9 0 - year - old man , café !", t.Decode(t.EncodeRaw("A 90-year-old man, café!")));
    }

    [SkippableFact]
    public void ClipOverlongPromptKeepsEos()
    {
        var t = RequireClip();
        string prompt = string.Join(" ", Enumerable.Repeat("a photo of a cat", 40));
        var ids = t.Encode(prompt);
        Assert.Equal(77, ids.Length);
        Assert.Equal(ClipTokenizer.StartOfText, ids[0]);
        Assert.Equal(ClipTokenizer.EndOfText, ids[76]);
        Assert.Equal(320, ids[1]);
        Assert.DoesNotContain(ids[1..76], id => id == ClipTokenizer.EndOfText);
    }

    [SkippableFact]
    public void UnigramLoadsRealModelAndRoundTrips()
    {
        TestAssets.Require(TestAssets.UnigramModel);
        var t = T5Tokenizer.FromModelFile(TestAssets.UnigramModel);
        const string text = "a woman in a swimming pool, water reflecting on her face, looking straight ahead.";
        var raw = t.EncodeRaw(text);
        Assert.InRange(raw.Count, 10, 40);
        Assert.Equal(text, t.Decode(raw));
        var ids = t.Encode(text);
        Assert.Equal(512, ids.Length);
        Assert.Equal(t.EosId, ids[raw.Count]);
        Assert.All(ids[(raw.Count + 1)..], id => Assert.Equal(t.PadId, id));
        // Over-long input: cut to 511 pieces, EOS kept last.
        var longIds = t.Encode(string.Join(" ", Enumerable.Repeat(text, 60)));
        Assert.Equal(t.EosId, longIds[511]);
    }
}
