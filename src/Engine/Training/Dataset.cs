using MetaLoraNative.Engine.Flux;

namespace MetaLoraNative.Engine.Training;

/// <summary>
/// One cached training example: packed VAE latents of one image and the text embeddings of its caption.
/// Latents (GridH·GridW, in) are in FLUX's packed order; ids are rebuilt from the grid.
/// </summary>
/// <param name="Source">Where it was read from (for error messages), or null.</param>
public sealed record Example(float[] Latents, int GridH, int GridW, float[] Txt, int TxtLength, float[] Pooled, string? Source = null)
{
    public int ImageTokens => GridH * GridW;

    /// <summary>Throws with the example's file when its widths do not fit the model.</summary>
    public void CheckFits(FluxConfig c, string identity)
    {
        string where = Source ?? $"identity '{identity}'";
        if (Latents.Length != ImageTokens * c.InChannels)
            throw new InvalidDataException($"{where}: latents hold {Latents.Length} values, the {c.Name} model needs {GridH}×{GridW} tokens × {c.InChannels} channels");
        if (Txt.Length != TxtLength * c.ContextInDim)
            throw new InvalidDataException($"{where}: text embeddings are {Txt.Length / Math.Max(1, TxtLength)} wide, the {c.Name} model takes {c.ContextInDim} (T5-XXL: 4096)");
        if (Pooled.Length != c.VecInDim)
            throw new InvalidDataException($"{where}: the pooled embedding has {Pooled.Length} values, the {c.Name} model takes {c.VecInDim} (CLIP-L: 768)");
    }
}

/// <summary>A person: a name and their examples (Stage 1: ~20 images; Stage 2: the augmented crops of one photo).</summary>
public sealed record Identity(string Name, IReadOnlyList<Example> Examples);

/// <summary>Builds batches on a backend from examples of equal image and text length.</summary>
public static class Batches
{
    /// <summary>img ids [0, row, col] on the latent grid: (L_img, 3).</summary>
    public static float[] ImageIds(int gridH, int gridW)
    {
        var ids = new float[gridH * gridW * 3];
        for (int r = 0; r < gridH; r++)
            for (int c = 0; c < gridW; c++)
            {
                int i = (r * gridW + c) * 3;
                ids[i + 1] = r;
                ids[i + 2] = c;
            }
        return ids;
    }

    /// <summary>
    /// The transformer inputs for a flow-matching step: x_t from x0 and seeded noise, and the velocity target.
    /// Every example must share the image grid and text length (the trainers pick same-bucket samples).
    /// </summary>
    public static (FluxInputs Inputs, Tensor Target) FlowMatchingBatch(IBackend be, FluxConfig config, IReadOnlyList<Example> batch,
        float[] timesteps, float guidance, ulong seed, long step)
    {
        var first = batch[0];
        foreach (var e in batch)
            if (e.GridH != first.GridH || e.GridW != first.GridW || e.TxtLength != first.TxtLength)
                throw new ArgumentException("a batch needs one image size and one text length");
        int B = batch.Count, L = first.ImageTokens, C = config.InChannels, Lt = first.TxtLength;
        var img = new float[B * L * C];
        var target = new float[B * L * C];
        for (int b = 0; b < B; b++)
        {
            if (batch[b].Latents.Length != L * C) throw new ArgumentException($"latents of {batch[b].Latents.Length} values do not match {L}×{C}");
            var noise = RandomWeights.Normal($"noise.{step}.{b}", seed, L * C);
            var (xt, v) = FlowMatching.Interpolate(batch[b].Latents, noise, timesteps[b]);
            xt.CopyTo(img, b * L * C);
            v.CopyTo(target, b * L * C);
        }
        var inputs = MakeInputs(be, config, batch, img, timesteps, guidance);
        return (inputs, be.Upload(target, [B, L, config.OutChannels]));
    }

    /// <summary>Inputs with the given image latents (B·L·in values) and timesteps.</summary>
    public static FluxInputs MakeInputs(IBackend be, FluxConfig config, IReadOnlyList<Example> batch, float[] img, float[] timesteps, float guidance)
    {
        var first = batch[0];
        int B = batch.Count, L = first.ImageTokens, Lt = first.TxtLength;
        var txt = new float[B * Lt * config.ContextInDim];
        var y = new float[B * config.VecInDim];
        var imgIds = new float[B * L * 3];
        var oneIds = ImageIds(first.GridH, first.GridW);
        for (int b = 0; b < B; b++)
        {
            batch[b].Txt.CopyTo(txt, b * Lt * config.ContextInDim);
            batch[b].Pooled.CopyTo(y, b * config.VecInDim);
            oneIds.CopyTo(imgIds, b * L * 3);
        }
        return new FluxInputs(
            be.Upload(img, [B, L, config.InChannels]),
            be.Upload(imgIds, [B, L, 3]),
            be.Upload(txt, [B, Lt, config.ContextInDim]),
            be.Zeros(B, Lt, 3),
            be.Upload(timesteps, [B]),
            be.Upload(y, [B, config.VecInDim]),
            config.GuidanceEmbed ? be.Upload(Enumerable.Repeat(guidance, B).ToArray(), [B]) : null);
    }
}
