using MetaLoraNative.Engine;
using MetaLoraNative.Kernels.Native;
using static MetaLoraNative.Kernels.Native.CublasLt;

namespace MetaLoraNative.Kernels;

// W8A8 forward products of fp8 base weights (kernels/dev/quant/02_fp8_activations.cu + cuBLASLt FP8), reached from
// LinearQuantizedW8A8 (Ops/CudaBackend.Quant.cs), which the model issues only when METALORA_FP8_MATMUL=1. Per call:
// zero the amax word, fp8_amax_bf16, fp8_quantize_bf16 (codes and s_x on the device: no host sync), the FP8 GEMM, and
// in the ScaleEpilogue mode fp8_scale_columns. Plans live in the GEMM cache (their key's TypeAB is E4M3, and TypeC
// tells the two modes apart: bf16 D is the outer-vector mode, fp32 D the scale-epilogue mode). Where the device, the
// shape or cuBLASLt's heuristic allows neither, the product falls back to the W8A16 path and says so once.
public sealed partial class CudaBackend
{
    const string Fp8ActivationsFile = "dev/quant/02_fp8_activations.cu";
    readonly HashSet<string> fp8Notes = [];
    long? cublasLtVersion;

    long CublasLtVersion => cublasLtVersion ??= (long)cublasLtGetVersion();

    void Fp8Note(string line, string instead = "running the W8A16 dequantise path instead")
    {
        if (fp8Notes.Add(line)) Log($"note: W8A8 (METALORA_FP8_MATMUL): {line}; {instead}");
    }

    /// <summary>y = s_x·s_w[n]·Σ q_x·q_w + b as a new bf16 tensor, or null when this product must take the W8A16 path.</summary>
    CudaTensor? TryLinearW8A8(CudaTensor x, CudaQuantizedWeight q, CudaTensor? bias)
    {
        long M = x.Rows, N = q.Rows, K = q.Cols;
        var choice = Fp8Matmul.Choose(Device.Major, Device.Minor, CublasLtVersion, M, N, K, x.Precision == Precision.Compute);
        if (choice.Mode == Fp8GemmMode.Dequantize)
        {
            Fp8Note(choice.Reason);
            return null;
        }
        int[] shape = (int[])x.Shape.Clone();
        shape[^1] = q.Rows;
        using var scalars = Alloc([2], Precision.Master);                // [0] amax bits (u32), [1] s_x
        ulong amax = scalars.Ptr, sx = scalars.Ptr + 4;
        ulong codes = Pool.Rent(M * K, out long cls);
        var codeStorage = new DeviceStorage(Pool, codes, cls);
        using Borrowed<CudaTensor>? b16 = bias == null ? null : Bf16(bias, "bias");
        ulong biasBf16 = b16?.Ptr ?? 0UL;
        var y = Alloc(shape);
        CudaTensor? acc = null;
        try
        {
            var modes = choice.Mode == Fp8GemmMode.OuterVector ? new[] { Fp8GemmMode.OuterVector, Fp8GemmMode.ScaleEpilogue } : [Fp8GemmMode.ScaleEpilogue];
            bool quantised = false;
            foreach (var mode in modes)
            {
                var d = Fp8Matmul.Describe(mode, M, N, K, bias != null);
                if (d.ScaleKernel) acc ??= Alloc([(int)M, (int)N], Precision.Master);
                ulong output = d.ScaleKernel ? acc!.Ptr : y.Ptr;
                ulong biasPtr = d.BiasEpilogue ? biasBf16 : 0;
                var plan = Fp8Plan(d, codes, q.CodesPtr, output, sx, q.Scale.Ptr, biasPtr);
                if (plan.Next >= plan.Candidates.Length) continue;
                if (!quantised)
                {
                    CudaCheck.Cu(CuDriver.cuMemsetD8Async(amax, 0, 4, Stream));
                    Launch(Fp8ActivationsFile, "fp8_amax_bf16", (Grid1D(M * K), 1, 1), (Block, 1, 1), 0, amax, x.Ptr, M * K);
                    Launch1D(Fp8ActivationsFile, "fp8_quantize_bf16", M * K, codes, sx, amax, x.Ptr, M * K);
                    quantised = true;
                }
                if (!TryFp8Matmul(plan, d, codes, q.CodesPtr, output, sx, q.Scale.Ptr, biasPtr)) continue;
                Counted.Gemm("cublaslt-fp8");
                if (d.ScaleKernel)
                    Launch1D(Fp8ActivationsFile, "fp8_scale_columns", M * N, y.Ptr, acc!.Ptr, q.Scale.Ptr, biasBf16, M, (int)N);
                return y;
            }
            Fp8Note($"cuBLASLt {CublasLtVersion} has no FP8 algorithm for {M}×{K} · ({N}×{K})ᵀ on sm_{Device.Major}{Device.Minor}");
            y.Dispose();
            return null;
        }
        catch
        {
            y.Dispose();
            throw;
        }
        finally
        {
            acc?.Dispose();
            codeStorage.Release();
        }
    }

    /// <summary>Sets the per-call pointers: s_x as B's scale, s_w as A's (outer-vector mode only), the bias (its epilogue only).</summary>
    static unsafe void SetFp8Pointers(GemmPlan plan, Fp8GemmDescriptor d, ulong sx, ulong sw, ulong bias)
    {
        CudaCheck.Blas(cublasLtMatmulDescSetAttribute(plan.Desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sx, sizeof(ulong)));
        if (d.Mode == Fp8GemmMode.OuterVector)
            CudaCheck.Blas(cublasLtMatmulDescSetAttribute(plan.Desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sw, sizeof(ulong)));
        if (d.BiasEpilogue)
            CudaCheck.Blas(cublasLtMatmulDescSetAttribute(plan.Desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(ulong)));
    }

    unsafe bool TryFp8Matmul(GemmPlan plan, Fp8GemmDescriptor d, ulong xCodes, ulong wCodes, ulong output, ulong sx, ulong sw, ulong bias)
    {
        SetFp8Pointers(plan, d, sx, sw, bias);
        float alpha = 1f, beta = 0f;
        for (; plan.Next < plan.Candidates.Length; plan.Next++)
        {
            var algo = plan.Candidates[plan.Next];
            int status = cublasLtMatmul(blasLt.DangerousGetHandle(), plan.Desc, &alpha, wCodes, plan.LayoutA, xCodes, plan.LayoutB,
                                        &beta, output, plan.LayoutC, output, plan.LayoutC, &algo, workspace, (nuint)WorkspaceBytes, Stream);
            if (status == CUBLAS_STATUS_SUCCESS) return true;
            if (status != CUBLAS_STATUS_NOT_SUPPORTED)
                throw new CudaException("cuBLASLt", status, ErrorString(status), $"linear_quantized_w8a8: FP8 cublasLtMatmul ({d}), candidate {plan.Next}");
        }
        return false;
    }

    /// <summary>The cached plan of an FP8 descriptor; the heuristic is asked with this call's pointers set (it may check them).</summary>
    unsafe GemmPlan Fp8Plan(Fp8GemmDescriptor d, ulong xCodes, ulong wCodes, ulong output, ulong sx, ulong sw, ulong bias)
    {
        var key = new GemmKey(d.TypeA, d.TypeD, false, true, d.Cols, d.Rows, d.Inner, d.BiasEpilogue, d.Inner, d.Inner, d.Rows,
                              GemmRouting.Alignment(xCodes), GemmRouting.Alignment(wCodes), GemmRouting.Alignment(output));
        if (gemmPlans.TryGetValue(key, out var plan)) return plan;
        plan = new GemmPlan();
        CudaCheck.Blas(cublasLtMatmulDescCreate(out plan.Desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        int opA = d.OpA, opB = d.OpB, aMode = d.AScaleMode, bMode = d.BScaleMode;
        CudaCheck.Blas(cublasLtMatmulDescSetAttribute(plan.Desc, CUBLASLT_MATMUL_DESC_TRANSA, &opA, sizeof(int)));
        CudaCheck.Blas(cublasLtMatmulDescSetAttribute(plan.Desc, CUBLASLT_MATMUL_DESC_TRANSB, &opB, sizeof(int)));
        if (d.Mode == Fp8GemmMode.OuterVector)
        {
            // only set where needed: a cuBLASLt that refuses the attribute or the mode leaves this plan without
            // candidates, so the scale-epilogue mode runs instead
            int status = cublasLtMatmulDescSetAttribute(plan.Desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &aMode, sizeof(int));
            if (status == CUBLAS_STATUS_SUCCESS) status = cublasLtMatmulDescSetAttribute(plan.Desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &bMode, sizeof(int));
            if (status != CUBLAS_STATUS_SUCCESS)
            {
                plan.HeuristicStatus = status;
                CudaCheck.Blas(cublasLtMatrixLayoutCreate(out plan.LayoutA, d.TypeA, (ulong)d.Inner, (ulong)d.Rows, d.Inner));
                CudaCheck.Blas(cublasLtMatrixLayoutCreate(out plan.LayoutB, d.TypeB, (ulong)d.Inner, (ulong)d.Cols, d.Inner));
                CudaCheck.Blas(cublasLtMatrixLayoutCreate(out plan.LayoutC, d.TypeD, (ulong)d.Rows, (ulong)d.Cols, d.Rows));
                Fp8Note($"cuBLASLt {CublasLtVersion} refused the outer-vector scale mode ({ErrorString(status)})", "the fp32 GEMM and the column-scale kernel run instead");
                gemmPlans[key] = plan;
                return plan;
            }
        }
        if (d.BiasEpilogue)
        {
            int epilogue = CUBLASLT_EPILOGUE_BIAS, biasType = CUDA_R_16BF;
            CudaCheck.Blas(cublasLtMatmulDescSetAttribute(plan.Desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(int)));
            CudaCheck.Blas(cublasLtMatmulDescSetAttribute(plan.Desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &biasType, sizeof(int)));
        }
        SetFp8Pointers(plan, d, sx, sw, bias);
        // cuBLASLt's A = W (k × n, ld k), op T; B = x (k × m, ld k), op N; D = yᵀ (n × m, ld n)
        CudaCheck.Blas(cublasLtMatrixLayoutCreate(out plan.LayoutA, d.TypeA, (ulong)d.Inner, (ulong)d.Rows, d.Inner));
        CudaCheck.Blas(cublasLtMatrixLayoutCreate(out plan.LayoutB, d.TypeB, (ulong)d.Inner, (ulong)d.Cols, d.Inner));
        CudaCheck.Blas(cublasLtMatrixLayoutCreate(out plan.LayoutC, d.TypeD, (ulong)d.Rows, (ulong)d.Cols, d.Rows));
        QueryCandidates(plan, key.AlignA, key.AlignB, key.AlignC);   // any status but success: no candidates, so the next mode (or the W8A16 path) runs
        gemmPlans[key] = plan;
        return plan;
    }
}
