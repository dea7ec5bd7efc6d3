using MetaLoraNative.Engine.Quantization;

namespace MetaLoraNative.Engine;

/// <summary>
/// The op interface the model is written against. The CPU backend (the reference and test oracle) and the CUDA
/// backend implement it; the model, the LoRA layers and the trainers never see which one runs.
///
/// Contract shared by every op:
/// - Tensors are row-major and contiguous; "rows" means the product of every dimension but the last.
/// - Ops that return a tensor allocate it; the caller owns it and disposes it when done.
/// - Ops named *InPlace or taking an output argument write into it and allocate nothing.
/// - Backward ops return gradients for their inputs only. Frozen weights never get gradients: the only weight
///   gradients in this engine are the LoRA factors', which the layers form with <see cref="Gemm"/>.
/// - Any op accepts inputs of either <see cref="Precision"/> and returns Compute tensors. Gemm writes into the
///   given c whatever its precision; AdamW updates Master tensors; Copy converts.
/// - Reductions (GEMM dot products, norms, softmax sums, losses) accumulate in at least fp32 (fp64 on the CPU).
///
/// The ops come in groups, each a section below. A group has the same stem everywhere: CpuBackend.&lt;Group&gt;.cs,
/// src/Kernels/Ops/CudaBackend.&lt;Group&gt;.cs, kernels/&lt;group&gt;.cu, CudaParity.&lt;Group&gt;.cs and the tests
/// Cpu&lt;Group&gt;Tests / Cuda&lt;Group&gt;ParityTests (the table in docs/ARCHITECTURE.md).
/// </summary>
public interface IBackend : IDisposable
{
    /// <summary>Short name for messages ("cpu-f32", "cpu-f64", "cuda").</summary>
    string Name { get; }

    // ---------------------------------------------------------------- Memory

    /// <summary>A zero tensor in the backend's compute precision (bf16 on CUDA, the element type on the CPU).</summary>
    Tensor Zeros(params int[] shape);
    /// <summary>A zero tensor in the asked precision: Master is fp32 everywhere (trainable factors, gradients, moments).</summary>
    Tensor Zeros(int[] shape, Precision precision);
    /// <summary>
    /// An uninitialised tensor in the compute precision, for a buffer the caller's next ops fully write with "="
    /// (a GEMM with beta 0, "=" slice copies, ops writing into a given output) before anything reads it: where any
    /// element is accumulated into (beta 1, AddNarrow, AddInPlace) or may stay unwritten, use <see cref="Zeros(int[])"/>.
    /// CUDA: the pool block without the memset (its old contents, NaN patterns included; METALORA_POISON_EMPTY=1
    /// fills it with NaN, a check aid). CPU: filled with NaN (poison, always: only the test that compares against the
    /// all-Zeros step turns it off), so a read before the write propagates NaN into the outputs and gradients the
    /// tests check. Counted as an allocation, never as a memset.
    /// </summary>
    Tensor Empty(params int[] shape);
    /// <summary>As <see cref="Empty(int[])"/> in the asked precision (Master is fp32 everywhere).</summary>
    Tensor Empty(int[] shape, Precision precision);
    Tensor Upload(ReadOnlySpan<float> values, params int[] shape);
    Tensor Upload(ReadOnlySpan<float> values, int[] shape, Precision precision);
    /// <summary>Exact on the fp64 CPU backend (used by the gradient checks); rounded elsewhere.</summary>
    Tensor Upload(ReadOnlySpan<double> values, params int[] shape);
    float[] Download(Tensor t);
    double[] DownloadDouble(Tensor t);
    /// <summary>dst = src, converting precision when they differ; element counts must match (shapes may differ).</summary>
    void Copy(Tensor src, Tensor dst);
    void Fill(Tensor t, float value);

    // ---------------------------------------------------------------- Gemm

    /// <summary>
    /// c = alpha · op(a) · op(b) + beta · c, with a, b and c viewed as matrices (Rows × Cols) and op a transpose
    /// when asked. With beta = 1 it accumulates, which is how LoRA factor gradients and input gradients are summed.
    /// </summary>
    void Gemm(Tensor a, bool transA, Tensor b, bool transB, Tensor c, float alpha = 1f, float beta = 0f);

    /// <summary>y = x·Wᵀ + b. x (.., d_in), w (d_out, d_in), bias (d_out) or null → (.., d_out).</summary>
    Tensor Linear(Tensor x, Tensor w, Tensor? bias);

    /// <summary>dx = dy·W. dy (.., d_out), w (d_out, d_in) → (.., d_in). The weight itself is frozen.</summary>
    Tensor LinearBackward(Tensor dy, Tensor w);

    /// <summary>
    /// <see cref="Gemm"/> on blocks of wider matrices: c's block = alpha · op(a's block) · op(b's block) + beta · c's
    /// block, each a <see cref="MatrixSlice"/> of a tensor viewed as a row-major matrix (leading dimension = the
    /// tensor's Cols); the rest of c is untouched. The fused Stage-2 LoRA writes a target's y += a·Uᵀ straight into
    /// the target's column slice of y, and reads dyₛ as a column slice of dy, so no narrow copy is made.
    /// </summary>
    void GemmSlice(MatrixSlice a, bool transA, MatrixSlice b, bool transB, MatrixSlice c, float alpha = 1f, float beta = 0f);

    /// <summary>
    /// Many independent <see cref="GemmSlice"/> products in one call: for each entry, c's block = alpha · op(a's block)
    /// · op(b's block) + beta · c's block. No entry's c may overlap another entry's a, b or c (the entries may run in any
    /// order, or all at once). With beta = 0, c's old contents are ignored. The fused Stage-2 LoRA forms every
    /// target's A = M·D in one call and makes every dM += Gⱼ·Dᵀ of a backward in another
    /// (<c>METALORA_LORA_GROUPED=1</c>, FusedStage2Cache); on CUDA the fp32 entries are one launch of
    /// kernels/dev/gemm/02_grouped.cu when <c>CudaBackend.GroupedGemm</c> is on.
    /// </summary>
    void GemmGroup(IReadOnlyList<GemmEntry> entries);

    /// <summary>
    /// The two products of a LoRA up factor's backward that read the same dy: dU += dyᵀ·a and dmid = dy·u. dy is a
    /// block (n × rows) of a wider matrix (a target's columns of the module's output gradient), u (rows × r2) the up
    /// factor, a a block (n × r2) (the down product kept from the forward), dU (rows × r2) u's gradient, accumulated
    /// (+=, fp32 Master on CUDA), dmid a block (n × r2) written (=; the rest of its tensor untouched). a and dU are
    /// both given or both null (then only dmid is formed). Sums are fp64 on the CPU and fp32 on CUDA. The fused
    /// Stage-2 LoRA's backward calls it per target (FusedStage2.cs); on CUDA it is the two GEMMs GemmSlice runs, or,
    /// with <c>METALORA_LORA_UPBACK=1</c> (<c>CudaBackend.LoraUpBackwardKernel</c>) and r2 ≤ 4, one pass over dy in
    /// kernels/dev/lora/02_up_backward.cu.
    /// </summary>
    void LoraUpBackward(MatrixSlice dy, Tensor u, MatrixSlice? a, Tensor? dU, MatrixSlice dmid);

    /// <summary>
    /// A linear followed by FLUX's MLP activation, in one product (the GELU epilogue): pre = x·Wᵀ + b + c0 and
    /// act = gelu_tanh(pre). x (.., d_in), w (d_out, d_in), bias (d_out) or null, c0 (.., d_out) or null: a tensor
    /// already holding the LoRA delta, added before the GELU (the LoRA delta is formed first and the product
    /// accumulates onto it). Both outputs are new, (.., d_out); pre is what <see cref="LinearBackwardGelu"/> reads.
    /// </summary>
    (Tensor Pre, Tensor Act) LinearGelu(Tensor x, Tensor w, Tensor? bias, Tensor? c0);

    /// <summary>
    /// The input gradient of a linear whose input was gelu_tanh(pre), through the GELU: dPre = (dy·W + c0) ⊙ gelu_tanh'(pre).
    /// dy (.., d_out), w (d_out, d_in), pre (.., d_in), c0 (.., d_in) or null: the LoRA part of d act, formed first.
    /// Returns a new dPre (.., d_in).
    /// </summary>
    Tensor LinearBackwardGelu(Tensor dy, Tensor w, Tensor pre, Tensor? c0);

    // ---------------------------------------------------------------- Elementwise

    /// <summary>acc += alpha · x (same element count).</summary>
    void AddInPlace(Tensor acc, Tensor x, float alpha = 1f);
    void ScaleInPlace(Tensor t, float alpha);
    /// <summary>x·σ(x). No backward: the model applies it only on the frozen conditioning path (vec, the MLP embedders).</summary>
    Tensor Silu(Tensor x);
    /// <summary>GELU with the tanh approximation, as FLUX's MLPs use it.</summary>
    Tensor GeluTanh(Tensor x);
    Tensor GeluTanhBackward(Tensor x, Tensor dy);
    /// <summary>
    /// y's block = gelu_tanh(x's block): the strided form, on blocks of wider matrices (<see cref="MatrixSlice"/>, same
    /// Rows × Columns), e.g. linear1's MLP columns into the MLP columns of the single block's cat. Writes (=) only y's block.
    /// </summary>
    void GeluTanhSlice(MatrixSlice x, MatrixSlice y);
    /// <summary>dx's block = gelu_tanh'(x's block) ⊙ dy's block (=): the strided form of <see cref="GeluTanhBackward"/>.</summary>
    void GeluTanhBackwardSlice(MatrixSlice x, MatrixSlice dy, MatrixSlice dx);

    // ---------------------------------------------------------------- Layout

    /// <summary>A copy of x restricted to [start, start+length) along axis.</summary>
    Tensor Narrow(Tensor x, int axis, int start, int length);
    /// <summary>dst[.., start:start+src.Dim(axis), ..] += src along axis (the backward of Narrow, and LoRA slices).</summary>
    void AddNarrow(Tensor dst, Tensor src, int axis, int start);
    /// <summary>
    /// dst[.., start:start+src.Dim(axis), ..] = src along axis (=, converting precision as <see cref="Copy"/>): the
    /// slice written into a wider buffer, e.g. one from <see cref="Empty(int[])"/>; the rest of dst is untouched.
    /// </summary>
    void CopyNarrow(Tensor dst, Tensor src, int axis, int start);
    /// <summary>Concatenation along axis; every other dimension must agree.</summary>
    Tensor Concat(int axis, params Tensor[] parts);
    /// <summary>qkv (B, L, 3·H·D) → q, k, v each (B, H, L, D): BFL's "B L (K H D) -> K B H L D".</summary>
    (Tensor Q, Tensor K, Tensor V) SplitQkv(Tensor qkv, int heads);
    /// <summary>Backward of <see cref="SplitQkv"/>: dq, dk, dv (B, H, L, D) → (B, L, 3·H·D).</summary>
    Tensor MergeQkv(Tensor dq, Tensor dk, Tensor dv);

    // ---------------------------------------------------------------- Norm

    /// <summary>
    /// y = (1 + scale[b]) · LN(x) + shift[b]: LayerNorm without affine over the last dim, then FLUX's modulation.
    /// x (B, L, C); shift, scale (B, C). stats (B·L, 2) holds (mean, rstd) for the backward.
    /// </summary>
    Tensor LayerNormModulate(Tensor x, Tensor shift, Tensor scale, float eps, out Tensor stats);
    (Tensor Dx, Tensor DShift, Tensor DScale) LayerNormModulateBackward(Tensor dy, Tensor x, Tensor scale, Tensor stats);

    /// <summary>
    /// <see cref="GatedResidual"/> then <see cref="LayerNormModulate"/> in one pass: x1 = x + gate[b] · y, and
    /// modulated = (1 + scale[b]) · LN(x1) + shift[b], where a block half's residual feeds the next half's norm.
    /// x, y (B, L, C); gate, shift, scale (B, C). stats (B·L, 2) are (mean, rstd) of x1 as stored.
    /// </summary>
    (Tensor X1, Tensor Modulated) ResidualLayerNormModulate(Tensor x, Tensor gate, Tensor y, Tensor shift, Tensor scale, float eps,
                                                            out Tensor stats);
    /// <summary>
    /// Its backward in one pass. dModulated (B, L, C); dOut (B, L, C) the gradient already reaching x1 along the
    /// residual. Dx1 = dOut + the LayerNormModulate backward of dModulated (also d x, the residual's input);
    /// Dy = gate·Dx1; DGate = Σ_L Dx1·y, DShift = Σ_L dModulated, DScale = Σ_L dModulated·x̂, each shaped like scale.
    /// </summary>
    (Tensor Dx1, Tensor Dy, Tensor DGate, Tensor DShift, Tensor DScale) ResidualLayerNormModulateBackward(
        Tensor dModulated, Tensor dOut, Tensor x1, Tensor scale, Tensor stats, Tensor gate, Tensor y);

    /// <summary>y = x · rsqrt(mean(x²) + eps) · weight over the last dim (QK norm). rstd has one value per row.</summary>
    Tensor RmsNorm(Tensor x, Tensor weight, float eps, out Tensor rstd);
    Tensor RmsNormBackward(Tensor dy, Tensor x, Tensor weight, Tensor rstd);

    // ---------------------------------------------------------------- Attention (RoPE and attention)

    /// <summary>
    /// ids (B, L, n_axes) → pe (B, L, D/2, 2) holding (cos, sin) per channel pair; axis i owns axesDim[i]/2 pairs,
    /// angle = id · theta^(−2k/axesDim[i]), computed in fp64 then stored.
    /// </summary>
    Tensor RopeTable(Tensor ids, int[] axesDim, float theta);
    /// <summary>Rotates adjacent pairs (x0, x1) → (cos·x0 − sin·x1, sin·x0 + cos·x1). x (B, H, L, D), pe (B, L, D/2, 2).</summary>
    Tensor ApplyRope(Tensor x, Tensor pe);
    /// <summary>The transpose rotation.</summary>
    Tensor ApplyRopeBackward(Tensor dy, Tensor pe);

    /// <summary>
    /// softmax(q·kᵀ/√D)·v over the joint sequence. q, k, v (B, H, L, D) → out (B, L, H·D) ("B H L D -> B L (H D)").
    /// lse (B, H, L) is the log-sum-exp of each score row, kept for the backward.
    /// </summary>
    Tensor Attention(Tensor q, Tensor k, Tensor v, out Tensor lse);
    (Tensor Dq, Tensor Dk, Tensor Dv) AttentionBackward(Tensor dOut, Tensor q, Tensor k, Tensor v, Tensor output, Tensor lse);

    /// <summary>
    /// One stream's split-qkv, QK RMSNorm and RoPE in one pass, written into the joint sequence (the fused form of
    /// SplitQkv → RmsNorm(q), RmsNorm(k) → Concat → ApplyRope(q), ApplyRope(k)). qkv: B·L rows of 3·H·D columns read as
    /// "B L (K H D)", a block of a wider matrix allowed (the single block's linear1 columns [0, 3C)); joint q, k, v
    /// (B, H, L_joint, D) get tokens [start, start + L) written (=): q = rope(q·rstd_q·queryScale), k likewise,
    /// v copied; the rest of them is untouched. pe (B or 1, L_joint, D/2, 2). Returns rstd of every q and k row, (B, H, L).
    /// </summary>
    (Tensor QRstd, Tensor KRstd) QkvNormRope(MatrixSlice qkv, QkNorm norm, Tensor pe, QkvJoint joint, int start);
    /// <summary>
    /// Backward of <see cref="QkvNormRope"/>: gradients w.r.t. the joint roped q, k and v (what AttentionBackward
    /// returns), tokens [start, start + L) → d qkv written (=) into <paramref name="dQkv"/> (B·L rows of 3·H·D, a
    /// block of a wider matrix allowed). qkv is the forward's input (q, k before the norm are re-read from it).
    /// </summary>
    void QkvNormRopeBackward(QkvJoint grads, int start, MatrixSlice qkv, QkNorm norm, Tensor pe, Tensor qRstd, Tensor kRstd, MatrixSlice dQkv);

    // ---------------------------------------------------------------- Conditioning (timestep embedding, gated residual)

    /// <summary>
    /// t (B) → (B, dim): [cos(args), sin(args)] with args = timeFactor·t·exp(−ln(maxPeriod)·k/half), k &lt; half = dim/2.
    /// No backward: the timesteps are inputs, not trained.
    /// </summary>
    Tensor TimestepEmbedding(Tensor t, int dim, float timeFactor = 1000f, float maxPeriod = 10000f);

    /// <summary>out = x + gate[b] · y. x, y (B, L, C); gate (B, C).</summary>
    Tensor GatedResidual(Tensor x, Tensor gate, Tensor y);
    /// <summary>dx = dOut (the caller reuses it); returns dy = gate·dOut and dgate = Σ_L dOut·y.</summary>
    (Tensor Dy, Tensor DGate) GatedResidualBackward(Tensor dOut, Tensor gate, Tensor y);

    // ---------------------------------------------------------------- Objective (MSE, sums of squares, AdamW)

    /// <summary>mean((pred − target)²) over every element; dPred = 2(pred − target)/N.</summary>
    double MseLoss(Tensor pred, Tensor target, out Tensor dPred);
    /// <summary>Σ x² in fp64 (gradient norms).</summary>
    double SumSquares(Tensor t);
    /// <summary>Σ x² over many tensors: the global gradient norm of a step. A GPU reads its result back once, not per tensor.</summary>
    double SumSquares(IReadOnlyList<Tensor> tensors)
    {
        double s = 0;
        foreach (var t in tensors) s += SumSquares(t);
        return s;
    }
    /// <summary>
    /// One AdamW update of an fp32 master tensor: m, v moments; decoupled weight decay; bias correction from the
    /// step number; grad is multiplied by gradScale first (gradient clipping).
    /// </summary>
    void AdamW(Tensor param, Tensor grad, Tensor m, Tensor v, in AdamWStep step);

    // The same step with its scalars kept on the device (Trainer's device step): the loss and the gradient norm go into
    // a StepScalars, the clip scale and the non-finite check are formed there, and AdamW reads them there; the host
    // sees them through one asynchronous read-back per step.

    /// <summary>A step's scalars in device memory (fp64): loss, Σ g², clip scale, and whether the update applies.</summary>
    StepScalars NewStepScalars();
    /// <summary>As <see cref="MseLoss(Tensor, Tensor, out Tensor)"/>, the loss written to <paramref name="scalars"/> on the device instead of returned.</summary>
    void MseLoss(Tensor pred, Tensor target, out Tensor dPred, StepScalars scalars);
    /// <summary>
    /// On the device: Σ g² over <paramref name="grads"/> (summed as <see cref="SumSquares(IReadOnlyList{Tensor})"/> sums
    /// them), norm = √Σ; the update applies when the loss and the norm are finite; the clip scale is
    /// maxNorm / norm when 0 &lt; maxNorm &lt; norm, else 1 (rounded to fp32, as AdamWStep.GradScale is).
    /// </summary>
    void ClipScale(IReadOnlyList<Tensor> grads, float maxNorm, StepScalars scalars);
    /// <summary>
    /// Multi-tensor AdamW: every entry updated as <see cref="AdamW(Tensor, Tensor, Tensor, Tensor, in AdamWStep)"/> with
    /// <paramref name="step"/>'s hyper-parameters, the entry's own step count and the clip scale of
    /// <paramref name="scalars"/>; nothing at all when <paramref name="scalars"/> say the update does not apply.
    /// Entries that are consecutive views of flat buffers (<see cref="Tensor.Slice"/>) with one step count are one range:
    /// a GPU updates all the ranges of a call in one launch.
    /// </summary>
    void AdamW(IReadOnlyList<AdamWTensors> tensors, in AdamWStep step, StepScalars scalars);
    /// <summary>Queues the copy of <paramref name="scalars"/> to host memory; <see cref="StepScalars.Read"/> waits for it.</summary>
    void ReadBack(StepScalars scalars);

    // ---------------------------------------------------------------- Quant (fp8 base weights, W8A16)

    /// <summary>
    /// A frozen weight (rows = d_out, cols = d_in) from OCP E4M3 codes (rows·cols, row-major) and one fp32 scale per
    /// row: W[j, k] = scale[j] · e4m3(codes[j·cols + k]). The backend keeps the codes as they are (one byte each).
    /// </summary>
    QuantizedWeight UploadQuantized(ReadOnlySpan<byte> codes, ReadOnlySpan<float> scale, int rows, int cols);
    /// <summary>The weight the products use, as a Compute tensor (d_out, d_in): exact on the CPU, rounded to bf16 on CUDA.</summary>
    Tensor Dequantize(QuantizedWeight w);
    /// <summary>y = x·Wᵀ + b, W dequantised inside the product. x (.., d_in), bias (d_out) or null → (.., d_out).</summary>
    Tensor LinearQuantized(Tensor x, QuantizedWeight w, Tensor? bias);
    /// <summary>dx = dy·W. dy (.., d_out) → (.., d_in). The weight is frozen.</summary>
    Tensor LinearQuantizedBackward(Tensor dy, QuantizedWeight w);
    /// <summary>
    /// W8A8 forward (opt-in, <see cref="Quantization.Fp8Activations"/>): y = x·Wᵀ + b with x quantised to E4M3 on the
    /// fly under one per-tensor scale s_x = amax(|x|)/448: y[m, n] = s_x · s_w[n] · Σ_k q_x[m, k]·q_w[n, k] + b[n].
    /// x (.., d_in), bias (d_out) or null → (.., d_out). Its backward is <see cref="LinearQuantizedBackward"/> (the
    /// straight-through gradient: the activation rounding is treated as the identity).
    /// </summary>
    Tensor LinearQuantizedW8A8(Tensor x, QuantizedWeight w, Tensor? bias);

    // ---------------------------------------------------------------- device services (defaults fit the CPU)

    /// <summary>A named profiling range around model stages (NVTX on CUDA): <c>using var _ = be.Range("double_blocks.3");</c></summary>
    IDisposable Range(string name) => NoRange.Instance;
    /// <summary>Blocks until every queued op has finished (for timing).</summary>
    void Synchronize() { }
    /// <summary>Free and total bytes of the device's own memory, or null when the backend uses host memory.</summary>
    (long Free, long Total)? MemoryInfo => null;
    /// <summary>Peak bytes of tensors alive at once on the device (0 when not tracked).</summary>
    long PeakBytes => 0;
    /// <summary>Bytes of tensors (and quantised weights) alive now (0 when not tracked).</summary>
    long LiveBytes => 0;
    /// <summary>
    /// A hard cap on the bytes alive at once (<c>--vram</c>): an allocation past it throws
    /// <see cref="Planning.MemoryCapExceededException"/> naming the cap and the request, so a capped run on a large
    /// device behaves as a smaller one would. 0 removes the cap. Backends that do not count their memory refuse.
    /// </summary>
    void CapMemory(long bytes) => throw new NotSupportedException($"{Name} does not count its memory, so it cannot be capped");
    /// <summary>
    /// Records <paramref name="step"/>'s device work as one replayable graph (a CUDA graph), or null when the backend
    /// cannot. The step must allocate only what the allocator already holds (run it before, at least twice) and must
    /// not synchronise; every replay reuses the addresses it captured, so nothing else may allocate between replays.
    /// </summary>
    IStepGraph? CaptureGraph(Action step) => null;
    /// <summary>What this backend issued (launches, GEMMs, syncs, read-backs, allocations), or null when it does not count.</summary>
    Benchmarks.LaunchCounters? Counters => null;
}

/// <summary>The range of a backend that does not profile.</summary>
public sealed class NoRange : IDisposable
{
    public static readonly NoRange Instance = new();
    public void Dispose() { }
}

/// <summary>Storage precision of a tensor. On the CPU both are the backend's element type.</summary>
public enum Precision
{
    /// <summary>The backend's working type: bf16 on CUDA (fp32 accumulation inside ops).</summary>
    Compute,
    /// <summary>fp32: trainable factors' masters, their gradients and optimiser moments.</summary>
    Master,
}

/// <summary>
/// The block rows [Row, Row + Rows) × columns [Column, Column + Columns) of a tensor viewed as a row-major matrix
/// (Tensor.Rows × Tensor.Cols). Its leading dimension is Tensor.Cols and its first element is Row·Cols + Column.
/// A tensor converts to the slice of all of it.
/// </summary>
public readonly record struct MatrixSlice(Tensor Tensor, long Row, long Rows, int Column, int Columns)
{
    public static implicit operator MatrixSlice(Tensor t) => new(t, 0, t.Rows, 0, t.Cols);

    /// <summary>Columns [column, column + count) of every row of t.</summary>
    public static MatrixSlice ColumnsOf(Tensor t, int column, int count) => new(t, 0, t.Rows, column, count);

    /// <summary>Rows [row, row + count) of this slice.</summary>
    public MatrixSlice RowsOf(long row, long count) => this with { Row = Row + row, Rows = count };

    /// <summary>Columns [column, column + count) of this slice.</summary>
    public MatrixSlice ColumnsOf(int column, int count) => this with { Column = Column + column, Columns = count };

    /// <summary>Offset of the first element in the tensor's storage, in elements.</summary>
    public long Offset => Row * Tensor.Cols + Column;

    /// <summary>The whole tensor: contiguous, leading dimension = Columns.</summary>
    public bool IsWhole => Row == 0 && Rows == Tensor.Rows && Column == 0 && Columns == Tensor.Cols;

    /// <summary>Every row complete (Column 0, all columns): the block is contiguous in storage.</summary>
    public bool IsContiguous => Column == 0 && Columns == Tensor.Cols;

    /// <summary>Throws naming the op and the operand when the block does not lie inside the tensor.</summary>
    public void Check(string op, string operand)
    {
        if (Row < 0 || Rows < 0 || Row + Rows > Tensor.Rows || Column < 0 || Columns < 0 || Column + Columns > Tensor.Cols)
            throw new ArgumentException($"{op}: {operand} block rows [{Row}, {Row + Rows}) × columns [{Column}, {Column + Columns}) " +
                                        $"lies outside its tensor ({Tensor.Rows} × {Tensor.Cols}) {Tensor}");
    }

    public override string ToString() => $"rows [{Row}, {Row + Rows}) × cols [{Column}, {Column + Columns}) of {Tensor}";
}

/// <summary>One product of <see cref="IBackend.GemmGroup"/>: c = alpha · op(a) · op(b) + beta · c on the three blocks.</summary>
public readonly record struct GemmEntry(MatrixSlice A, bool TransA, MatrixSlice B, bool TransB, MatrixSlice C, float Alpha = 1f, float Beta = 0f)
{
    /// <summary>(M, N, K) of the product: op(a) (M × K), op(b) (K × N), c (M × N).</summary>
    public (long M, long N, long K) Dims => (TransA ? A.Columns : A.Rows, TransB ? B.Rows : B.Columns, TransA ? A.Rows : A.Columns);

    public override string ToString() => $"c {C} = {Alpha}·a{(TransA ? "ᵀ" : "")} {A} · b{(TransB ? "ᵀ" : "")} {B} + {Beta}·c";
}

/// <summary>The joint q, k, v of one attention (or their gradients), each (B, H, L_joint, D).</summary>
public readonly record struct QkvJoint(Tensor Q, Tensor K, Tensor V) : IDisposable
{
    /// <summary>Disposes the three (for the holder that owns them).</summary>
    public void Dispose()
    {
        Q.Dispose();
        K.Dispose();
        V.Dispose();
    }
}

/// <summary>BFL's QKNorm of one stream: the frozen query_norm and key_norm scales (D each) and the RMS epsilon.</summary>
public readonly record struct QkNorm(Tensor QueryScale, Tensor KeyScale, float Eps);

/// <summary>Hyper-parameters of one AdamW update.</summary>
/// <param name="Step">1-based step count of this tensor (for bias correction).</param>
public readonly record struct AdamWStep(
    int Step, float LearningRate, float Beta1 = 0.9f, float Beta2 = 0.999f, float Epsilon = 1e-8f,
    float WeightDecay = 1e-2f, float GradScale = 1f);

/// <summary>A captured step (<see cref="IBackend.CaptureGraph"/>): each <see cref="Launch"/> queues all of its work at once.</summary>
public interface IStepGraph : IDisposable
{
    void Launch();
}

/// <summary>One tensor of a multi-tensor AdamW: the fp32 master, its gradient, its moments and its 1-based step count.</summary>
public readonly record struct AdamWTensors(Tensor Param, Tensor Grad, Tensor M, Tensor V, int Step);

/// <summary>The host's copy of a step's scalars (<see cref="StepScalars"/>).</summary>
/// <param name="Applied">whether the device applied the update (the loss and the norm were finite)</param>
public readonly record struct StepValues(double Loss, double SumSquares, float Scale, bool Applied)
{
    public double GradNorm => Math.Sqrt(SumSquares);
}

/// <summary>
/// A step's scalars in device memory, written by the device ops of the Objective group (MseLoss into it,
/// ClipScale, AdamW reading it) and copied to the host by <see cref="IBackend.ReadBack"/>. The host reads the copy
/// with <see cref="Read"/>, which waits for the copy of the last read-back (a step later it has long landed).
/// </summary>
public abstract class StepScalars : IDisposable
{
    /// <summary>The values of the last <see cref="IBackend.ReadBack"/> of these scalars, once the copy has landed.</summary>
    public abstract StepValues Read();

    public virtual void Dispose() => GC.SuppressFinalize(this);
}
