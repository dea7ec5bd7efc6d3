using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Quantization;

namespace MetaLoraNative.Engine.Flux;

/// <summary>One batch of transformer inputs, laid out as BFL's Flux.forward takes them.</summary>
/// <param name="Img">packed latents (B, L_img, in)</param>
/// <param name="ImgIds">(B, L_img, 3): [0, row, col] on the latent grid</param>
/// <param name="Txt">T5 embeddings (B, L_txt, context)</param>
/// <param name="TxtIds">(B, L_txt, 3): zeros</param>
/// <param name="Timesteps">(B) in [0, 1]</param>
/// <param name="Y">CLIP pooled (B, vec_in)</param>
/// <param name="Guidance">(B), or null for models without a guidance embedding</param>
public sealed record FluxInputs(Tensor Img, Tensor ImgIds, Tensor Txt, Tensor TxtIds, Tensor Timesteps, Tensor Y, Tensor? Guidance) : IDisposable
{
    public void Dispose()
    {
        Img.Dispose(); ImgIds.Dispose(); Txt.Dispose(); TxtIds.Dispose(); Timesteps.Dispose(); Y.Dispose(); Guidance?.Dispose();
    }
}

/// <summary>
/// The FLUX transformer on any backend. forward has one line per stage, as in BFL's reference; backward mirrors it
/// in reverse and stops at the image input (vec and the text embedder feed nothing trainable).
/// </summary>
public sealed class FluxModel
{
    /// <param name="fusions">Which fused elementwise forms to issue; null reads METALORA_FUSE (unset: none).</param>
    /// <param name="fp8Matmul">
    /// W8A8 forward products for the fp8 block linears (<see cref="Linear.QuantizeActivations"/>); null reads
    /// METALORA_FP8_MATMUL (unset: off). It needs an fp8 base: on a bf16 base it fails naming the variable.
    /// </param>
    public FluxModel(FluxWeights weights, Fusions? fusions = null, bool? fp8Matmul = null)
    {
        Fusions = fusions ?? FusionSettings.FromEnvironment();
        Config = weights.Config;
        Backend = weights.Backend;
        ImgIn = Linear.From(weights, "img_in");
        TimeIn = new MlpEmbedder(weights, "time_in");
        VectorIn = new MlpEmbedder(weights, "vector_in");
        GuidanceIn = Config.GuidanceEmbed ? new MlpEmbedder(weights, "guidance_in") : null;
        TxtIn = Linear.From(weights, "txt_in");
        Blocks = weights.Blocks;
        BaseDType = weights.BaseDType;
        DoubleBlocks = Enumerable.Range(0, Config.Depth).Select(i => new DoubleBlock(Blocks.For(BlockId.Double(i), weights), i, Fusions)).ToArray();
        SingleBlocks = Enumerable.Range(0, Config.DepthSingleBlocks).Select(i => new SingleBlock(Blocks.For(BlockId.Single(i), weights), i, Fusions)).ToArray();
        FinalLayer = new LastLayer(weights);
        Fp8Matmul = fp8Matmul ?? Fp8Activations.FromEnvironment();
        if (Fp8Matmul)
        {
            if (BaseDType != BaseDType.Fp8)
                throw new InputException(Fp8Activations.EnvironmentVariable,
                    $"{Fp8Activations.EnvironmentVariable}=1 (W8A8 forward products) needs an fp8 base (--base-dtype fp8); this base is {BaseDTypes.Name(BaseDType)}");
            foreach (var l in BlockLinears()) l.QuantizeActivations = l.Quantized != null;
        }
    }

    /// <summary>
    /// Whether the fp8 block linears run W8A8 forward products (x quantised to E4M3 per tensor) rather than W8A16;
    /// the backward is W8A16's either way (<see cref="Linear.QuantizeActivations"/>).
    /// </summary>
    public bool Fp8Matmul { get; }

    /// <summary>The linears inside the double and single blocks (the ones an fp8 base holds in E4M3).</summary>
    public IEnumerable<Linear> BlockLinears()
    {
        foreach (var b in DoubleBlocks)
            foreach (var s in new[] { b.Img, b.Txt })
            {
                yield return s.Mod.Lin;
                yield return s.Qkv;
                yield return s.Proj;
                yield return s.Mlp0;
                yield return s.Mlp2;
            }
        foreach (var b in SingleBlocks)
        {
            yield return b.Modulation.Lin;
            yield return b.Linear1;
            yield return b.Linear2;
        }
    }

    public FluxConfig Config { get; }
    public IBackend Backend { get; }
    /// <summary>The fused elementwise forms this model issues (<see cref="Flux.Fusions"/>); the blocks read it.</summary>
    public Fusions Fusions { get; }
    public Linear ImgIn { get; }
    public MlpEmbedder TimeIn { get; }
    public MlpEmbedder VectorIn { get; }
    public MlpEmbedder? GuidanceIn { get; }
    public Linear TxtIn { get; }
    public DoubleBlock[] DoubleBlocks { get; }
    public SingleBlock[] SingleBlocks { get; }
    public LastLayer FinalLayer { get; }
    /// <summary>Where the blocks' frozen weights live (resident, or block swap's host copies and device slots).</summary>
    public BlockWeights Blocks { get; }
    /// <summary>How the frozen base is held (bf16, or the block linears in fp8).</summary>
    public BaseDType BaseDType { get; }

    /// <summary>
    /// Everything the backward needs, an <see cref="Activations"/> record like the layers': the shared conditioning,
    /// per block its inputs and its activations, and the final layer's. Recomputation is each block entry's Saved:
    /// null means the block's activations were dropped right after its forward and the backward rebuilds them from
    /// the inputs the entry keeps.
    /// </summary>
    public sealed class State : Activations
    {
        public required Tensor ImgInput { get; init; }                    // (B, L_img, in) the caller's latents: borrowed
        public required Tensor SiluVec { get; init; }                     // (B, C) silu(vec), every modulation's input
        public required Tensor Pe { get; init; }                          // (B, L_txt + L_img, D/2, 2) RoPE (cos, sin)
        public required DoubleBlockEntry[] Double { get; init; }          // one per double block
        public required SingleBlockEntry[] Single { get; init; }          // one per single block
        public required Tensor ImgOut { get; init; }                      // (B, L_img, C) image rows after the single blocks
        public required LastLayer.LayerActivations Final { get; init; }   // final_layer's, reading ImgOut

        public int ImgLength => ImgInput.Dim(1);
        public int TxtLength => Pe.Dim(1) - ImgLength;

        protected override IEnumerable<IDisposable?> Owned() => [SiluVec, Pe, .. Double, .. Single, ImgOut, Final];
    }

    /// <summary>One double block in the model state: its inputs, and its activations unless recomputation dropped them.</summary>
    public sealed class DoubleBlockEntry : Activations
    {
        public required Tensor Img { get; init; }                             // (B, L_img, C) block input (the previous block's output)
        public required Tensor Txt { get; init; }                             // (B, L_txt, C) block input
        public required DoubleBlock.BlockActivations? Saved { get; init; }    // null: dropped after the forward, rebuilt from Img, Txt

        protected override IEnumerable<IDisposable?> Owned() => [Saved, Img, Txt];
    }

    /// <summary>One single block in the model state: its input, and its activations unless recomputation dropped them.</summary>
    public sealed class SingleBlockEntry : Activations
    {
        public required Tensor X { get; init; }                               // (B, L_txt + L_img, C) block input
        public required SingleBlock.BlockActivations? Saved { get; init; }    // null: dropped after the forward, rebuilt from X

        protected override IEnumerable<IDisposable?> Owned() => [Saved, X];
    }

    /// <summary>
    /// Inference: the velocity prediction (B, L_img, out). Runs the recomputation path so each block's internals are
    /// freed as soon as the block is done; only the block boundaries live until the end.
    /// </summary>
    public Tensor Predict(FluxInputs x, LoraBinding? lora)
    {
        var y = Forward(x, lora, out var s, recompute: true);
        s.Dispose();
        return y;
    }

    /// <summary>
    /// Forward for training: the prediction (B, L_img, out) and the state its backward needs. With
    /// <paramref name="recompute"/> each block's internals are dropped after its forward and rebuilt in the backward
    /// (one extra block forward per block, for about a third less peak memory at 1024²).
    /// </summary>
    public Tensor Forward(FluxInputs x, LoraBinding? lora, out State s, bool recompute = false)
    {
        if (Config.GuidanceEmbed && x.Guidance == null) throw new ArgumentException($"the {Config.Name} model needs a guidance value");
        var be = Backend;

        var img = ImgIn.Forward(x.Img, null);
        using var vec = Conditioning(x);
        var txt = TxtIn.Forward(x.Txt, null);
        var pe = PositionEmbedding(x.TxtIds, x.ImgIds);
        var siluVec = be.Silu(vec);

        (img, txt) = DoubleBlocksForward(img, txt, siluVec, pe, lora, recompute, out var doubles);
        var joint = SingleBlocksForward(JoinTextFirst(txt, img), siluVec, pe, lora, recompute, out var singles);
        var imgOut = ImageRows(joint, x.Txt.Dim(1));
        var y = FinalLayer.Forward(imgOut, siluVec, out var final);

        s = new State { ImgInput = x.Img, SiluVec = siluVec, Pe = pe, Double = doubles, Single = singles, ImgOut = imgOut, Final = final };
        return y;
    }

    /// <summary>pe_embedder over the joint ids, text first: (B, L_txt + L_img, D/2, 2).</summary>
    Tensor PositionEmbedding(Tensor txtIds, Tensor imgIds)
    {
        using var ids = Backend.Concat(1, txtIds, imgIds);
        return Backend.RopeTable(ids, Config.AxesDim, Config.Theta);
    }

    /// <summary>double_blocks: img, txt → img, txt; each entry owns its block's inputs.</summary>
    (Tensor Img, Tensor Txt) DoubleBlocksForward(Tensor img, Tensor txt, Tensor siluVec, Tensor pe, LoraBinding? lora, bool recompute,
                                                 out DoubleBlockEntry[] entries)
    {
        entries = new DoubleBlockEntry[DoubleBlocks.Length];
        for (int i = 0; i < DoubleBlocks.Length; i++)
        {
            using var _ = Backend.Range($"double_blocks.{i}");
            using var _w = Blocks.Use(BlockId.Double(i), backward: false);
            var (imgOut, txtOut) = DoubleBlocks[i].Forward(img, txt, siluVec, pe, lora, out var saved);
            entries[i] = new DoubleBlockEntry { Img = img, Txt = txt, Saved = Kept(saved, recompute) };
            (img, txt) = (imgOut, txtOut);
        }
        return (img, txt);
    }

    /// <summary>single_blocks over the joint sequence; each entry owns its block's input.</summary>
    Tensor SingleBlocksForward(Tensor x, Tensor siluVec, Tensor pe, LoraBinding? lora, bool recompute, out SingleBlockEntry[] entries)
    {
        entries = new SingleBlockEntry[SingleBlocks.Length];
        for (int i = 0; i < SingleBlocks.Length; i++)
        {
            using var _ = Backend.Range($"single_blocks.{i}");
            using var _w = Blocks.Use(BlockId.Single(i), backward: false);
            var y = SingleBlocks[i].Forward(x, siluVec, pe, lora, out var saved);
            entries[i] = new SingleBlockEntry { X = x, Saved = Kept(saved, recompute) };
            x = y;
        }
        return x;
    }

    /// <summary>The activations an entry keeps: all of them, or none when they are recomputed in the backward.</summary>
    static T? Kept<T>(T saved, bool recompute) where T : Activations
    {
        if (!recompute) return saved;
        saved.Dispose();
        return null;
    }

    /// <summary>cat(txt, img) along the sequence, freeing the last double block's outputs (nothing reads them again).</summary>
    Tensor JoinTextFirst(Tensor txt, Tensor img)
    {
        using (txt)
        using (img)
            return Backend.Concat(1, txt, img);
    }

    /// <summary>The image rows (B, L_img, C) of the last single block's output, which is freed.</summary>
    Tensor ImageRows(Tensor joint, int txtLength)
    {
        using (joint) return Backend.Narrow(joint, 1, txtLength, joint.Dim(1) - txtLength);
    }

    /// <summary>
    /// Bytes the per-block activations of one training step keep without recomputation, at this backend's compute
    /// precision: about 24·C values per token in a double block (qkv, norms, RoPE, attention, MLP 4C twice) and
    /// 19·C in a single block. Used by the recomputation policy to decide before the first step.
    /// </summary>
    public long ActivationBytes(int batch, int imageTokens, int textTokens, int bytesPerValue)
    {
        long tokens = (long)batch * (imageTokens + textTokens);
        long perToken = (24L * Config.Depth + 19L * Config.DepthSingleBlocks) * Config.HiddenSize;
        return tokens * perToken * bytesPerValue;
    }

    /// <summary>vec = time_in(emb(t)) + guidance_in(emb(g)) + vector_in(y): (B, C).</summary>
    Tensor Conditioning(FluxInputs x)
    {
        var be = Backend;
        using var tEmb = be.TimestepEmbedding(x.Timesteps, FluxConfig.TimestepEmbedDim);
        var vec = TimeIn.Forward(tEmb);
        if (GuidanceIn != null)
        {
            using var gEmb = be.TimestepEmbedding(x.Guidance!, FluxConfig.TimestepEmbedDim);
            using var g = GuidanceIn.Forward(gEmb);
            be.AddInPlace(vec, g);
        }
        using var yv = VectorIn.Forward(x.Y);
        be.AddInPlace(vec, yv);
        return vec;
    }

    /// <summary>
    /// Mirrors <see cref="Forward"/> from dOutput (B, L_img, out), accumulating the gradient of every LoRA factor the
    /// binding trains (training needs nothing else). The caller disposes s.
    /// </summary>
    public void Backward(State s, Tensor dOutput, LoraBinding? lora) => BackwardToImg(s, dOutput, lora).Dispose();

    /// <summary>As <see cref="Backward"/>, and returns the gradient of the latent input (B, L_img, in).</summary>
    public Tensor BackwardWithInputGrad(State s, Tensor dOutput, LoraBinding? lora)
    {
        using var dImg = BackwardToImg(s, dOutput, lora);
        return ImgIn.Backward(s.ImgInput, dImg, null);
    }

    /// <summary>dOutput (B, L_img, out) → d img_in's output (B, L_img, C).</summary>
    Tensor BackwardToImg(State s, Tensor dOutput, LoraBinding? lora)
    {
        var be = Backend;
        using var dImgOut = FinalLayer.Backward(s.Final, dOutput);
        // the text rows of the joint gradient are zero (the loss reads only img): a zero buffer, the img rows copied in
        var dJoint = be.Zeros(dImgOut.Dim(0), s.TxtLength + s.ImgLength, dImgOut.Dim(2));
        be.CopyNarrow(dJoint, dImgOut, 1, s.TxtLength);
        dJoint = SingleBlocksBackward(s, dJoint, lora);
        var dTxt = be.Narrow(dJoint, 1, 0, s.TxtLength);
        var dImg = be.Narrow(dJoint, 1, s.TxtLength, s.ImgLength);
        dJoint.Dispose();
        (dImg, dTxt) = DoubleBlocksBackward(s, dImg, dTxt, lora);
        dTxt.Dispose();             // txt_in is not trained
        lora?.FinishBackward();     // the LoRA's deferred products (grouped dM), before anyone reads the gradients
        return dImg;
    }

    /// <summary>d joint after the single blocks → d joint before them (each gradient freed once used).</summary>
    Tensor SingleBlocksBackward(State s, Tensor dJoint, LoraBinding? lora)
    {
        for (int i = SingleBlocks.Length - 1; i >= 0; i--)
        {
            using var _ = Backend.Range($"single_blocks.{i}.backward");
            using var _w = Blocks.Use(BlockId.Single(i), backward: true);
            var e = s.Single[i];
            var activations = e.Saved ?? SingleBlocks[i].Recompute(e.X, s.SiluVec, s.Pe, lora);
            var d = SingleBlocks[i].Backward(activations, dJoint, s.SiluVec, s.Pe, lora);
            if (e.Saved == null) activations.Dispose();      // rebuilt for this backward only
            dJoint.Dispose();
            dJoint = d;
        }
        return dJoint;
    }

    /// <summary>d img, d txt after the double blocks → before them (each gradient freed once used).</summary>
    (Tensor DImg, Tensor DTxt) DoubleBlocksBackward(State s, Tensor dImg, Tensor dTxt, LoraBinding? lora)
    {
        for (int i = DoubleBlocks.Length - 1; i >= 0; i--)
        {
            using var _ = Backend.Range($"double_blocks.{i}.backward");
            using var _w = Blocks.Use(BlockId.Double(i), backward: true);
            var e = s.Double[i];
            var activations = e.Saved ?? DoubleBlocks[i].Recompute(e.Img, e.Txt, s.SiluVec, s.Pe, lora);
            var (di, dt) = DoubleBlocks[i].Backward(activations, dImg, dTxt, s.SiluVec, s.Pe, lora);
            if (e.Saved == null) activations.Dispose();      // rebuilt for this backward only
            dImg.Dispose();
            dTxt.Dispose();
            (dImg, dTxt) = (di, dt);
        }
        return (dImg, dTxt);
    }
}
