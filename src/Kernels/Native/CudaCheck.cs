using System.Runtime.CompilerServices;

namespace MetaLoraNative.Kernels.Native;

/// <summary>A failed CUDA driver, NVRTC or cuBLASLt call: the native message and the C# expression that made it.</summary>
public sealed class CudaException : Exception
{
    public CudaException(string library, int code, string nativeMessage, string expression)
        : base($"{library} error {code} ({nativeMessage}) in `{expression}`")
    {
        Library = library;
        Code = code;
        NativeMessage = nativeMessage;
        Expression = expression;
    }

    public string Library { get; }
    public int Code { get; }
    public string NativeMessage { get; }
    public string Expression { get; }
}

/// <summary>The one checking helper per library: <c>CudaCheck.Cu(CuDriver.cuInit(0));</c>.</summary>
public static class CudaCheck
{
    public static void Cu(int result, [CallerArgumentExpression(nameof(result))] string expression = "")
    {
        if (result != CuDriver.CUDA_SUCCESS)
            throw new CudaException("CUDA driver", result, CuDriver.ErrorString(result), expression);
    }

    public static void Nvrtc(int result, [CallerArgumentExpression(nameof(result))] string expression = "")
    {
        if (result != Native.Nvrtc.NVRTC_SUCCESS)
            throw new CudaException("NVRTC", result, Native.Nvrtc.ErrorString(result), expression);
    }

    public static void Blas(int status, [CallerArgumentExpression(nameof(status))] string expression = "")
    {
        if (status != CublasLt.CUBLAS_STATUS_SUCCESS)
            throw new CudaException("cuBLASLt", status, CublasLt.ErrorString(status), expression);
    }
}
