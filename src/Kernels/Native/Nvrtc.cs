using System.Runtime.InteropServices;

namespace MetaLoraNative.Kernels.Native;

/// <summary>NVRTC, the runtime CUDA C++ compiler (needs no GPU and no libcuda). nvrtcResult is an int.</summary>
public static unsafe partial class Nvrtc
{
    static Nvrtc() => NativeLibraries.EnsureRegistered();

    const string Lib = NativeLibraries.Nvrtc;

    public const int NVRTC_SUCCESS = 0;
    public const int NVRTC_ERROR_COMPILATION = 6;

    [LibraryImport(Lib)] public static partial int nvrtcVersion(out int major, out int minor);
    [LibraryImport(Lib)] public static partial IntPtr nvrtcGetErrorString(int result);
    [LibraryImport(Lib)] public static partial int nvrtcGetNumSupportedArchs(out int numArchs);
    [LibraryImport(Lib)] public static partial int nvrtcGetSupportedArchs(int* supportedArchs);

    [LibraryImport(Lib)]
    public static partial int nvrtcCreateProgram(out IntPtr prog, byte* src, byte* name, int numHeaders, byte** headers, byte** includeNames);
    [LibraryImport(Lib)] public static partial int nvrtcDestroyProgram(ref IntPtr prog);
    [LibraryImport(Lib)] public static partial int nvrtcCompileProgram(IntPtr prog, int numOptions, byte** options);
    [LibraryImport(Lib)] public static partial int nvrtcGetProgramLogSize(IntPtr prog, out nuint logSizeRet);
    [LibraryImport(Lib)] public static partial int nvrtcGetProgramLog(IntPtr prog, byte* log);
    [LibraryImport(Lib)] public static partial int nvrtcGetPTXSize(IntPtr prog, out nuint ptxSizeRet);
    [LibraryImport(Lib)] public static partial int nvrtcGetPTX(IntPtr prog, byte* ptx);
    [LibraryImport(Lib)] public static partial int nvrtcGetCUBINSize(IntPtr prog, out nuint cubinSizeRet);
    [LibraryImport(Lib)] public static partial int nvrtcGetCUBIN(IntPtr prog, byte* cubin);

    public static string ErrorString(int result)
    {
        try
        {
            IntPtr p = nvrtcGetErrorString(result);
            return p == IntPtr.Zero ? $"nvrtcResult {result}" : Marshal.PtrToStringUTF8(p)!;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return $"nvrtcResult {result}";
        }
    }
}
