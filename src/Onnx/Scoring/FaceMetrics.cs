// The paper's identity metrics on embeddings (appendix F, Algorithm 3).
//   FaceSim(g)          = cos(e_g, e_ref)
//   S(i, p)             = mean over generated images g of (i, p), over real images t of i other than the reference, cos(e_g, e_t)
//   R-FaceSim           = mean over (i, p) of S(i, p)
// The reference image is excluded from R-FaceSim by construction: only "others" are passed in.
using MetaLoraNative.Engine;
using MetaLoraNative.Onnx.Faces;

namespace MetaLoraNative.Onnx.Scoring;

public sealed record GeneratedEmbedding(string Identity, string Prompt, float[] Embedding);

public sealed record RFaceSimResult(double Mean, IReadOnlyDictionary<(string Identity, string Prompt), double> PerIdentityPrompt)
{
    public double MeanOfIdentity(string identity) =>
        PerIdentityPrompt.Where(kv => kv.Key.Identity == identity).Select(kv => kv.Value).DefaultIfEmpty(double.NaN).Average();
}

public static class FaceMetrics
{
    public static double FaceSim(float[] generated, float[] reference) => FaceMath.Cosine(generated, reference);

    public static RFaceSimResult RFaceSim(IEnumerable<GeneratedEmbedding> generated,
        IReadOnlyDictionary<string, IReadOnlyList<float[]>> otherRealImages)
    {
        var sums = new Dictionary<(string, string), (double Sum, int Count)>();
        foreach (var g in generated)
        {
            if (!otherRealImages.TryGetValue(g.Identity, out var others) || others.Count == 0)
                throw new InputException("--identities", $"R-FaceSim: identity '{g.Identity}' has no real images besides its reference");
            var key = (g.Identity, g.Prompt);
            sums.TryGetValue(key, out var acc);
            foreach (var t in others) acc = (acc.Sum + FaceMath.Cosine(g.Embedding, t), acc.Count + 1);
            sums[key] = acc;
        }
        var per = sums.ToDictionary(kv => kv.Key, kv => kv.Value.Sum / kv.Value.Count);
        return new RFaceSimResult(per.Count == 0 ? double.NaN : per.Values.Average(), per);
    }
}
