using System.Runtime.InteropServices;

namespace MetaLoraNative.Kernels.Native;

/// <summary>cuBLASLt (libcublasLt). cublasStatus_t is an int; handles and descriptors are opaque pointers.</summary>
public static unsafe partial class CublasLt
{
    static CublasLt() => NativeLibraries.EnsureRegistered();

    const string Lib = NativeLibraries.CublasLt;

    public const int CUBLAS_STATUS_SUCCESS = 0;
    public const int CUBLAS_STATUS_INVALID_VALUE = 7;
    public const int CUBLAS_STATUS_NOT_SUPPORTED = 15;

    // cudaDataType_t
    public const int CUDA_R_32F = 0;
    public const int CUDA_R_16F = 2;
    public const int CUDA_R_16BF = 14;
    public const int CUDA_R_8F_E4M3 = 28;

    // cublasComputeType_t
    public const int CUBLAS_COMPUTE_32F = 68;

    // cublasOperation_t
    public const int CUBLAS_OP_N = 0;
    public const int CUBLAS_OP_T = 1;

    // cublasLtMatmulDescAttributes_t
    public const int CUBLASLT_MATMUL_DESC_TRANSA = 3;
    public const int CUBLASLT_MATMUL_DESC_TRANSB = 4;
    public const int CUBLASLT_MATMUL_DESC_EPILOGUE = 7;
    public const int CUBLASLT_MATMUL_DESC_BIAS_POINTER = 8;
    public const int CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE = 26;
    public const int CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER = 11;
    public const int CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD = 12;
    public const int CUBLASLT_MATMUL_DESC_A_SCALE_POINTER = 17;   // const float*: the scale(s) A is multiplied by
    public const int CUBLASLT_MATMUL_DESC_B_SCALE_POINTER = 18;
    public const int CUBLASLT_MATMUL_DESC_A_SCALE_MODE = 31;      // cublasLtMatmulMatrixScale_t (cuBLASLt 12.8+)
    public const int CUBLASLT_MATMUL_DESC_B_SCALE_MODE = 32;

    // cublasLtMatmulMatrixScale_t
    public const int CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F = 0;
    public const int CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F = 3;  // one fp32 per row of op(A) (cuBLASLt 12.9+)

    // cublasLtEpilogue_t
    public const int CUBLASLT_EPILOGUE_DEFAULT = 1;
    public const int CUBLASLT_EPILOGUE_BIAS = 4;
    public const int CUBLASLT_EPILOGUE_GELU_AUX = 32 | 128;
    public const int CUBLASLT_EPILOGUE_GELU_AUX_BIAS = CUBLASLT_EPILOGUE_GELU_AUX | CUBLASLT_EPILOGUE_BIAS;
    public const int CUBLASLT_EPILOGUE_DGELU = 64 | 128;

    // cublasLtMatmulPreferenceAttributes_t
    public const int CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1;
    public const int CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES = 5;   // uint32_t; default 256
    public const int CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES = 6;
    public const int CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES = 7;
    public const int CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES = 8;

    /// <summary>cublasLtMatmulAlgo_t: 8 opaque 64-bit words.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct cublasLtMatmulAlgo_t
    {
        public ulong D0, D1, D2, D3, D4, D5, D6, D7;
    }

    /// <summary>cublasLtMatmulHeuristicResult_t (96 bytes).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct cublasLtMatmulHeuristicResult_t
    {
        public cublasLtMatmulAlgo_t algo;
        public nuint workspaceSize;
        public int state;
        public float wavesCount;
        public int reserved0, reserved1, reserved2, reserved3;
    }

    [LibraryImport(Lib)] public static partial nuint cublasLtGetVersion();
    [LibraryImport(Lib)] public static partial IntPtr cublasLtGetStatusString(int status);
    [LibraryImport(Lib)] public static partial int cublasLtCreate(out IntPtr lightHandle);
    [LibraryImport(Lib)] public static partial int cublasLtDestroy(IntPtr lightHandle);

    [LibraryImport(Lib)] public static partial int cublasLtMatmulDescCreate(out IntPtr matmulDesc, int computeType, int scaleType);
    [LibraryImport(Lib)] public static partial int cublasLtMatmulDescDestroy(IntPtr matmulDesc);
    [LibraryImport(Lib)] public static partial int cublasLtMatmulDescSetAttribute(IntPtr matmulDesc, int attr, void* buf, nuint sizeInBytes);

    [LibraryImport(Lib)] public static partial int cublasLtMatrixLayoutCreate(out IntPtr matLayout, int type, ulong rows, ulong cols, long ld);
    [LibraryImport(Lib)] public static partial int cublasLtMatrixLayoutDestroy(IntPtr matLayout);

    [LibraryImport(Lib)] public static partial int cublasLtMatmulPreferenceCreate(out IntPtr pref);
    [LibraryImport(Lib)] public static partial int cublasLtMatmulPreferenceDestroy(IntPtr pref);
    [LibraryImport(Lib)] public static partial int cublasLtMatmulPreferenceSetAttribute(IntPtr pref, int attr, void* buf, nuint sizeInBytes);

    [LibraryImport(Lib)]
    public static partial int cublasLtMatmulAlgoGetHeuristic(IntPtr lightHandle, IntPtr operationDesc, IntPtr Adesc, IntPtr Bdesc,
        IntPtr Cdesc, IntPtr Ddesc, IntPtr preference, int requestedAlgoCount, cublasLtMatmulHeuristicResult_t* heuristicResultsArray,
        out int returnAlgoCount);

    [LibraryImport(Lib)]
    public static partial int cublasLtMatmul(IntPtr lightHandle, IntPtr computeDesc, void* alpha, ulong A, IntPtr Adesc, ulong B, IntPtr Bdesc,
        void* beta, ulong C, IntPtr Cdesc, ulong D, IntPtr Ddesc, cublasLtMatmulAlgo_t* algo, ulong workspace, nuint workspaceSizeInBytes,
        IntPtr stream);

    public static string ErrorString(int status)
    {
        try
        {
            IntPtr p = cublasLtGetStatusString(status);
            return p == IntPtr.Zero ? $"cublasStatus_t {status}" : $"{Marshal.PtrToStringUTF8(p)} ({status})";
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return $"cublasStatus_t {status}";
        }
    }
}
