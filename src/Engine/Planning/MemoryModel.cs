namespace MetaLoraNative.Engine.Planning;

/// <summary>
/// How one backend stores what the memory planner counts: element sizes per kind of tensor, the allocator's
/// rounding, and what it holds before any tensor.
/// </summary>
/// <param name="ComputeBytes">activations, frozen weights, inputs (Precision.Compute): 2 on CUDA (bf16), the element size on the CPU</param>
/// <param name="MasterBytes">LoRA factors, their gradients and AdamW moments (Precision.Master): 4 on CUDA</param>
/// <param name="StatsBytes">saved statistics and tables (LayerNorm stats, RMSNorm rstd, attention lse, RoPE table): fp32 on CUDA</param>
/// <param name="Allocation">bytes one allocation of n bytes takes (the CUDA pool's size classes; identity on the CPU)</param>
/// <param name="GemmWorkspaceBytes">held from creation for the GEMMs (cuBLASLt's workspace on CUDA; none on the CPU)</param>
/// <param name="DequantizeScratch">whether fp8 products decode into a bf16 copy of the largest layer (CUDA) rather than block by block (CPU)</param>
/// <param name="AttentionRowSums">whether the attention backward allocates its rowsum(dO ∘ O) as a tensor (CUDA: (B, H, L) fp32)</param>
/// <param name="AttentionDqAccumulator">whether the attention backward also holds an fp32 (B, H, L, D) dq accumulator while
/// it runs (CUDA with attention version 4, METALORA_ATTENTION=onepass: kernels/dev/attention/04_onepass_backward.cu)</param>
public sealed record MemoryModel(string Name, int ComputeBytes, int MasterBytes, int StatsBytes, Func<long, long> Allocation,
                                 long GemmWorkspaceBytes, bool DequantizeScratch, bool AttentionRowSums, bool AttentionDqAccumulator = false)
{
    /// <summary>CudaBackend.Gemm's cuBLASLt workspace, rented from the pool when the backend is created.</summary>
    public const long CublasWorkspaceBytes = 32L << 20;

    /// <summary>The fp32 CPU engine: every kind fp32, arrays exactly as large as their elements.</summary>
    public static MemoryModel CpuF32 { get; } = new("cpu-f32", 4, 4, 4, b => b, 0, false, false);

    /// <summary>The fp64 CPU oracle.</summary>
    public static MemoryModel CpuF64 { get; } = new("cpu-f64", 8, 8, 8, b => b, 0, false, false);

    /// <summary>
    /// The CUDA engine: bf16 compute, fp32 masters and statistics, the pool's size classes
    /// (<paramref name="sizeClass"/>: DevicePool.SizeClass) and what the backend held at creation;
    /// <paramref name="attentionDqAccumulator"/> when the one-pass attention backward (version 4) is switched on.
    /// </summary>
    public static MemoryModel Cuda(Func<long, long> sizeClass, long gemmWorkspaceBytes = CublasWorkspaceBytes, bool attentionDqAccumulator = false) =>
        new("cuda", 2, 4, 4, sizeClass, gemmWorkspaceBytes, true, true, attentionDqAccumulator);

    /// <summary>The model of a CPU backend by its name; null for any other backend (CUDA needs its pool's rule: <see cref="Cuda"/>).</summary>
    public static MemoryModel? For(IBackend backend) => backend.Name switch
    {
        "cpu-f32" => CpuF32,
        "cpu-f64" => CpuF64,
        _ => null,
    };

    public long Compute(long elements) => Allocation(elements * ComputeBytes);
    public long Master(long elements) => Allocation(elements * MasterBytes);
    public long Stats(long elements) => Allocation(elements * StatsBytes);
    public long Raw(long bytes) => Allocation(bytes);
}
