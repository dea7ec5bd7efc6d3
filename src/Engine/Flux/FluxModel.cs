using MetaLoraNative.Engine.Lora;

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
    public FluxModel(FluxWeights weights)
    {
        Weights = weights;
        Config = weights.Config;
        ImgIn = Linear.From(weights, "img_in");
        TimeIn = new MlpEmbedder(weights, "time_in");
        VectorIn = new MlpEmbedder(weights, "vector_in");
        GuidanceIn = Config.GuidanceEmbed ? new MlpEmbedder(weights, "guidance_in") : null;
        TxtIn = Linear.From(weights, "txt_in");
        DoubleBlocks = Enumerable.Range(0, Config.Depth).Select(i => new DoubleBlock(weights, i)).ToArray();
        SingleBlocks = Enumerable.Range(0, Config.DepthSingleBlocks).Select(i => new SingleBlock(weights, i)).ToArray();
        FinalLayer = new FinalLayer(weights);
    }

    public FluxWeights Weights { get; }
    public FluxConfig Config { get; }
    public IBackend Backend => Weights.Backend;
    public Linear ImgIn { get; }
    public MlpEmbedder TimeIn { get; }
    public MlpEmbedder VectorIn { get; }
    public MlpEmbedder? GuidanceIn { get; }
    public Linear TxtIn { get; }
    public DoubleBlock[] DoubleBlocks { get; }
    public SingleBlock[] SingleBlocks { get; }
    public FinalLayer FinalLayer { get; }

    /// <summary>
    /// Everything the backward needs, block by block. With recomputation a block keeps only its inputs (which the
    /// state owns anyway as the previous block's outputs) and its internals are rebuilt during the backward.
    /// </summary>
    public sealed class State : IDisposable
    {
        public Tensor[] DoubleImgIn = [], DoubleTxtIn = [], SingleIn = [];
        readonly List<Tensor> streams = [];
        public Tensor ImgInput = null!, SiluVec = null!, Pe = null!;
        /// <summary>Block inputs and outputs: each block keeps a reference to its input, the state owns them.</summary>
        public Tensor Own(Tensor t) { streams.Add(t); return t; }
        public int TxtLength, ImgLength;
        public DoubleBlock.State[] Double = [];
        public SingleBlock.State[] Single = [];
        public FinalLayer.State Final = null!;

        public void Dispose()
        {
            SiluVec.Dispose();
            Pe.Dispose();
            foreach (var d in Double) d?.Dispose();
            foreach (var s in Single) s?.DisposeAll();
            Final.Dispose();
            foreach (var t in streams) t.Dispose();
            streams.Clear();
        }
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
        var be = Backend;
        s = new State { ImgInput = x.Img, TxtLength = x.Txt.Dim(1), ImgLength = x.Img.Dim(1) };
        if (Config.GuidanceEmbed && x.Guidance == null) throw new ArgumentException($"the {Config.Name} model needs a guidance value");

        var img = s.Own(ImgIn.Forward(x.Img, null));
        using var vec = Conditioning(x);
        var txt = s.Own(TxtIn.Forward(x.Txt, null));
        using (var ids = be.Concat(1, x.TxtIds, x.ImgIds)) s.Pe = be.RopeTable(ids, Config.AxesDim, Config.Theta);
        s.SiluVec = be.Silu(vec);

        s.Double = new DoubleBlock.State[DoubleBlocks.Length];
        (s.DoubleImgIn, s.DoubleTxtIn) = (new Tensor[DoubleBlocks.Length], new Tensor[DoubleBlocks.Length]);
        for (int i = 0; i < DoubleBlocks.Length; i++)
        {
            using var _ = be.Range($"double_blocks.{i}");
            (s.DoubleImgIn[i], s.DoubleTxtIn[i]) = (img, txt);
            (img, txt) = DoubleBlocks[i].Forward(img, txt, s.SiluVec, s.Pe, lora, out s.Double[i]);
            if (recompute) { s.Double[i].Dispose(); s.Double[i] = null!; }
            s.Own(img);
            s.Own(txt);
        }

        var joint = s.Own(be.Concat(1, txt, img));
        s.Single = new SingleBlock.State[SingleBlocks.Length];
        s.SingleIn = new Tensor[SingleBlocks.Length];
        for (int i = 0; i < SingleBlocks.Length; i++)
        {
            using var _ = be.Range($"single_blocks.{i}");
            s.SingleIn[i] = joint;
            joint = s.Own(SingleBlocks[i].Forward(joint, s.SiluVec, s.Pe, lora, out s.Single[i]));
            if (recompute) { s.Single[i].DisposeAll(); s.Single[i] = null!; }
        }

        var imgOut = s.Own(be.Narrow(joint, 1, s.TxtLength, s.ImgLength));
        return FinalLayer.Forward(imgOut, s.SiluVec, out s.Final);
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
    /// dOutput (B, L_img, out) → d img input (B, L_img, in), or null when not asked for (training needs only the
    /// LoRA gradients). Accumulates the gradient of every LoRA factor the binding trains. The caller disposes s.
    /// </summary>
    public Tensor? Backward(State s, Tensor dOutput, LoraBinding? lora, bool needInputGrad = false)
    {
        var be = Backend;
        using var dImgOut = FinalLayer.Backward(s.Final, dOutput);
        var dJoint = be.Zeros(dImgOut.Dim(0), s.TxtLength + s.ImgLength, dImgOut.Dim(2));
        be.AddNarrow(dJoint, dImgOut, 1, s.TxtLength);
        for (int i = SingleBlocks.Length - 1; i >= 0; i--)
        {
            using var _ = be.Range($"single_blocks.{i}.backward");
            var state = s.Single[i];
            if (state == null)    // recomputation: rebuild the block's internals from its kept input
                SingleBlocks[i].Forward(s.SingleIn[i], s.SiluVec, s.Pe, lora, out state).Dispose();
            var d = SingleBlocks[i].Backward(state, dJoint, s.SiluVec, s.Pe, lora);
            if (s.Single[i] == null) state.DisposeAll();
            dJoint.Dispose();
            dJoint = d;
        }

        var dTxt = be.Narrow(dJoint, 1, 0, s.TxtLength);
        var dImg = be.Narrow(dJoint, 1, s.TxtLength, s.ImgLength);
        dJoint.Dispose();
        for (int i = DoubleBlocks.Length - 1; i >= 0; i--)
        {
            using var _ = be.Range($"double_blocks.{i}.backward");
            var state = s.Double[i];
            if (state == null)
            {
                var (o1, o2) = DoubleBlocks[i].Forward(s.DoubleImgIn[i], s.DoubleTxtIn[i], s.SiluVec, s.Pe, lora, out state);
                o1.Dispose();
                o2.Dispose();
            }
            var (di, dt) = DoubleBlocks[i].Backward(state, dImg, dTxt, s.SiluVec, s.Pe, lora, needTxtGrad: i > 0);
            if (s.Double[i] == null) state.Dispose();
            dImg.Dispose();
            dTxt.Dispose();
            dImg = di;
            dTxt = dt ?? be.Zeros(1);
        }
        dTxt.Dispose();
        var dInput = needInputGrad ? ImgIn.Backward(s.ImgInput, dImg, null) : null;
        dImg.Dispose();
        return dInput;
    }
}
