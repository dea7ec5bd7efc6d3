using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace MetaLoraNative.Kernels.Native;

/// <summary>
/// NCCL (libnccl.so.2), the collectives of multi-GPU training, C names kept so NVIDIA's documentation can be
/// searched. ncclResult_t, ncclDataType_t and ncclRedOp_t are ints; ncclComm_t and cudaStream_t opaque pointers
/// (a CUstream from the driver API is a cudaStream_t). Call through <see cref="NcclCheck"/>.
/// </summary>
public static unsafe partial class Nccl
{
    static Nccl() => NativeLibraries.EnsureRegistered();

    const string Lib = NativeLibraries.Nccl;

    // ncclResult_t
    public const int ncclSuccess = 0;
    public const int ncclUnhandledCudaError = 1;
    public const int ncclSystemError = 2;
    public const int ncclInternalError = 3;
    public const int ncclInvalidArgument = 4;
    public const int ncclInvalidUsage = 5;
    public const int ncclRemoteError = 6;
    public const int ncclInProgress = 7;

    // ncclDataType_t
    public const int ncclInt8 = 0;
    public const int ncclUint8 = 1;
    public const int ncclInt32 = 2;
    public const int ncclUint32 = 3;
    public const int ncclInt64 = 4;
    public const int ncclUint64 = 5;
    public const int ncclFloat16 = 6;
    public const int ncclFloat32 = 7;
    public const int ncclFloat64 = 8;
    public const int ncclBfloat16 = 9;

    // ncclRedOp_t
    public const int ncclSum = 0;
    public const int ncclProd = 1;
    public const int ncclMax = 2;
    public const int ncclMin = 3;
    public const int ncclAvg = 4;   // NCCL 2.10+

    /// <summary>Oldest NCCL the engine uses: 2.10 brought ncclAvg and bf16.</summary>
    public const int MinimumVersion = 21000;

    [LibraryImport(Lib)] public static partial int ncclGetVersion(out int version);
    [LibraryImport(Lib)] public static partial int ncclGetUniqueId(out ncclUniqueId uniqueId);
    /// <summary>Blocks until all <paramref name="nranks"/> ranks have called it with the same id.</summary>
    [LibraryImport(Lib)] public static partial int ncclCommInitRank(out IntPtr comm, int nranks, ncclUniqueId commId, int rank);
    [LibraryImport(Lib)] public static partial int ncclCommDestroy(IntPtr comm);
    /// <summary>Frees the communicator and makes its queued and running kernels return; callable from another thread.</summary>
    [LibraryImport(Lib)] public static partial int ncclCommAbort(IntPtr comm);
    [LibraryImport(Lib)] public static partial int ncclCommGetAsyncError(IntPtr comm, out int asyncError);
    [LibraryImport(Lib)] public static partial IntPtr ncclGetErrorString(int result);
    /// <summary>NCCL 2.13+: the detailed text of the calling thread's last error; comm may be null.</summary>
    [LibraryImport(Lib)] public static partial IntPtr ncclGetLastError(IntPtr comm);

    [LibraryImport(Lib)]
    public static partial int ncclAllReduce(void* sendbuff, void* recvbuff, nuint count, int datatype, int op, IntPtr comm, IntPtr stream);
    /// <summary>recvcount is per rank: sendbuff holds nranks · recvcount elements.</summary>
    [LibraryImport(Lib)]
    public static partial int ncclReduceScatter(void* sendbuff, void* recvbuff, nuint recvcount, int datatype, int op, IntPtr comm, IntPtr stream);
    /// <summary>sendcount is per rank: recvbuff holds nranks · sendcount elements.</summary>
    [LibraryImport(Lib)]
    public static partial int ncclAllGather(void* sendbuff, void* recvbuff, nuint sendcount, int datatype, IntPtr comm, IntPtr stream);
    [LibraryImport(Lib)]
    public static partial int ncclBroadcast(void* sendbuff, void* recvbuff, nuint count, int datatype, int root, IntPtr comm, IntPtr stream);
    [LibraryImport(Lib)] public static partial int ncclGroupStart();
    [LibraryImport(Lib)] public static partial int ncclGroupEnd();

    /// <summary>True when the library's version code is at least <see cref="MinimumVersion"/> (codes of either encoding).</summary>
    public static bool IsSupportedVersion(int code)
    {
        var (major, minor, patch) = DecodeVersion(code);
        return major * 10000 + minor * 100 + patch >= MinimumVersion;
    }

    /// <summary>NCCL_VERSION_CODE → (major, minor, patch): X·1000 + Y·100 + Z up to 2.8, X·10000 + Y·100 + Z from 2.9 on.</summary>
    public static (int Major, int Minor, int Patch) DecodeVersion(int code) =>
        code >= 10000 ? (code / 10000, code / 100 % 100, code % 100) : (code / 1000, code / 100 % 10, code % 100);

    /// <summary>NCCL's message for a result, with the last error's details where the library has them.</summary>
    public static string ErrorString(int result)
    {
        string text;
        try
        {
            IntPtr p = ncclGetErrorString(result);
            text = p == IntPtr.Zero ? $"ncclResult_t {result}" : Marshal.PtrToStringUTF8(p)!;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return $"ncclResult_t {result}";
        }
        try
        {
            IntPtr last = ncclGetLastError(IntPtr.Zero);
            string detail = last == IntPtr.Zero ? "" : Marshal.PtrToStringUTF8(last) ?? "";
            if (detail.Length > 0) text += $": {detail}";
        }
        catch (EntryPointNotFoundException) { /* NCCL before 2.13 */ }
        return text;
    }
}

/// <summary>ncclUniqueId: 128 opaque bytes made by rank 0 and handed to every rank (over the socket rendezvous).</summary>
[StructLayout(LayoutKind.Sequential, Size = Bytes)]
public unsafe struct ncclUniqueId
{
    public const int Bytes = 128;
    public fixed byte Internal[Bytes];

    public readonly byte[] ToArray()
    {
        var b = new byte[Bytes];
        fixed (byte* p = Internal) new ReadOnlySpan<byte>(p, Bytes).CopyTo(b);
        return b;
    }

    public static ncclUniqueId FromArray(ReadOnlySpan<byte> bytes)
    {
        if (bytes.Length != Bytes) throw new ArgumentException($"an NCCL unique id is {Bytes} bytes, not {bytes.Length}");
        var id = new ncclUniqueId();
        bytes.CopyTo(new Span<byte>(id.Internal, Bytes));
        return id;
    }
}

/// <summary>The one checking helper for NCCL calls: <c>NcclCheck.Call(Nccl.ncclGroupEnd());</c>.</summary>
public static class NcclCheck
{
    public static void Call(int result, [CallerArgumentExpression(nameof(result))] string expression = "")
    {
        if (result != Nccl.ncclSuccess) throw new CudaException("NCCL", result, Nccl.ErrorString(result), expression);
    }
}

/// <summary>
/// An NCCL communicator. Disposing destroys it (ncclCommDestroy, which waits for its queued work); <see cref="Abort"/>
/// frees it at once instead, for a failed run whose peers may never answer. Never throws from the finalizer.
/// </summary>
public sealed class NcclCommHandle : SafeHandle
{
    int aborted;

    public NcclCommHandle(IntPtr comm) : base(IntPtr.Zero, true) => SetHandle(comm);

    public override bool IsInvalid => handle == IntPtr.Zero;

    /// <summary>True once <see cref="Abort"/> ran.</summary>
    public bool IsAborted => Volatile.Read(ref aborted) != 0;

    /// <summary>
    /// ncclCommAbort, once, from any thread (a watchdog aborts while the owner may be blocked in a collective).
    /// The handle is then marked invalid, so Dispose does not destroy the freed communicator.
    /// </summary>
    public void Abort()
    {
        if (Interlocked.Exchange(ref aborted, 1) != 0 || IsInvalid) return;
        try { Nccl.ncclCommAbort(handle); }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { }
        SetHandleAsInvalid();
    }

    protected override bool ReleaseHandle()
    {
        if (IsAborted) return true;
        try { return Nccl.ncclCommDestroy(handle) == Nccl.ncclSuccess; }
        catch { return false; }
    }
}
