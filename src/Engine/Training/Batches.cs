using MetaLoraNative.Engine.Flux;

namespace MetaLoraNative.Engine.Training;

/// <summary>Picks training batches and builds the transformer inputs from examples of equal image and text length.</summary>
public static class Batches
{
    /// <summary>
    /// <paramref name="batchSize"/> examples from the identities <paramref name="ids"/>, deterministic in (seed, stream):
    /// the first draw fixes the image grid and text length, the rest are drawn among the examples of that shape.
    /// Samples of one identity are grouped (stable order) so the LoRA runs one GEMM group per identity.
    /// Both stages pick this way: Stage 1 from a bucket's identities, Stage 2 from its one person.
    /// Returns the examples and each one's identity index.
    /// </summary>
    public static (Example[] Batch, int[] Ids) Sample(IReadOnlyList<Identity> identities, IReadOnlyList<int> ids, int batchSize,
                                                      ulong seed, string stream)
    {
        if (batchSize < 1) throw new InputException("--batch-size", $"batch size {batchSize}: at least one sample is needed");
        var u = new float[batchSize];
        RandomWeights.Uniform(stream, seed, 0, u);
        static int Pick(float v, int n) => Math.Min(n - 1, (int)((v + 1f) / 2f * n));   // v ∈ [−1, 1) → [0, n)
        var pool = ids.SelectMany(id => identities[id].Examples.Select(e => (Id: id, Example: e))).ToArray();
        var first = pool[Pick(u[0], pool.Length)];
        var same = pool.Where(p => p.Example.SameShape(first.Example)).ToArray();
        var picks = u.Skip(1).Select(v => same[Pick(v, same.Length)]).Prepend(first).OrderBy(p => p.Id).ToArray();
        return (picks.Select(p => p.Example).ToArray(), picks.Select(p => p.Id).ToArray());
    }

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
    /// Every example must share the image grid and text length (the trainers pick same-shape samples). The noise of
    /// example b is drawn as sample <paramref name="firstSample"/> + b of the step, so a rank holding a slice of the
    /// global batch draws what one rank running the whole batch would.
    /// </summary>
    public static (FluxInputs Inputs, Tensor Target) FlowMatchingBatch(IBackend be, FluxConfig config, IReadOnlyList<Example> batch,
        float[] timesteps, float guidance, ulong seed, long step, int firstSample = 0)
    {
        int B = batch.Count, L = batch[0].ImageTokens, C = config.InChannels;
        var img = new float[B * L * C];
        var target = new float[B * L * C];
        for (int b = 0; b < B; b++)
        {
            if (!batch[b].SameShape(batch[0])) throw new InputException("--data", "a batch needs one image size and one text length (use --batch-size 1, or a dataset of one bucket)");
            if (batch[b].PackedLatents.Length != L * C)
                throw new InputException(batch[b].Source ?? "--data", $"packed latents of {batch[b].PackedLatents.Length} values do not match {L}×{C}");
            var noise = RandomWeights.Normal($"noise.{step}.{firstSample + b}", seed, L * C);
            var (xt, v) = FlowMatching.Interpolate(batch[b].PackedLatents, noise, timesteps[b]);
            xt.CopyTo(img, b * L * C);
            v.CopyTo(target, b * L * C);
        }
        var inputs = MakeInputs(be, config, batch, img, timesteps, guidance);
        return (inputs, be.Upload(target, [B, L, config.OutChannels]));
    }

    /// <summary>Inputs with the given image tokens (B·L·in values, packed) and timesteps; text and ids from the examples.</summary>
    public static FluxInputs MakeInputs(IBackend be, FluxConfig config, IReadOnlyList<Example> batch, float[] img, float[] timesteps, float guidance)
    {
        var first = batch[0];
        int B = batch.Count, L = first.ImageTokens, Lt = first.T5Length;
        var txt = new float[B * Lt * config.ContextInDim];
        var y = new float[B * config.VecInDim];
        var imgIds = new float[B * L * 3];
        var oneIds = ImageIds(first.GridH, first.GridW);
        for (int b = 0; b < B; b++)
        {
            batch[b].T5.CopyTo(txt, b * Lt * config.ContextInDim);
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
