using MetaLoraNative.Engine.Flux;

namespace MetaLoraNative.Engine.Training;

/// <summary>
/// One cached training example: the packed VAE latents of one image and the text embeddings of its caption.
///   PackedLatents (GridH·GridW, in)  FLUX's packed order (16 VAE channels × 2×2 patch = 64); ids are rebuilt from the grid
///   T5            (T5Length, ctx)    T5-XXL embeddings of the caption
///   Pooled        (vec)              CLIP-L pooled embedding
/// </summary>
/// <param name="Source">Where it was read from (for error messages), or null.</param>
public sealed record Example(float[] PackedLatents, int GridH, int GridW, float[] T5, int T5Length, float[] Pooled, string? Source = null)
{
    public int ImageTokens => GridH * GridW;

    /// <summary>Whether two examples can share a batch: one image grid and one text length.</summary>
    public bool SameShape(Example other) => GridH == other.GridH && GridW == other.GridW && T5Length == other.T5Length;

    /// <summary>Throws with the example's file when its widths do not fit the model.</summary>
    public void CheckFits(FluxConfig c, string identity)
    {
        string where = Source ?? $"identity '{identity}'";
        if (PackedLatents.Length != ImageTokens * c.InChannels)
            throw new InvalidDataException($"{where}: packed latents hold {PackedLatents.Length} values, the {c.Name} model needs {GridH}×{GridW} tokens × {c.InChannels} channels");
        if (T5.Length != T5Length * c.ContextInDim)
            throw new InvalidDataException($"{where}: T5 embeddings are {T5.Length / Math.Max(1, T5Length)} wide, the {c.Name} model takes {c.ContextInDim} (T5-XXL: 4096)");
        if (Pooled.Length != c.VecInDim)
            throw new InvalidDataException($"{where}: the pooled embedding has {Pooled.Length} values, the {c.Name} model takes {c.VecInDim} (CLIP-L: 768)");
    }
}

/// <summary>A person: a name and their examples (Stage 1: ~20 images; Stage 2: the augmented crops of one photo).</summary>
public sealed record Identity(string Name, IReadOnlyList<Example> Examples)
{
    /// <summary>Throws when the identity has no examples or one of them does not fit the model.</summary>
    public void CheckFits(FluxConfig c)
    {
        if (Examples.Count == 0) throw new InvalidDataException($"identity '{Name}' has no examples");
        foreach (var e in Examples) e.CheckFits(c, Name);
    }
}
