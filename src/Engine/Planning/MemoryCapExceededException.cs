namespace MetaLoraNative.Engine.Planning;

/// <summary>
/// An allocation that would take a backend past its memory cap (<see cref="IBackend.CapMemory"/>, <c>--vram</c>):
/// the message names the cap, the request and what was in use, as a real out-of-memory on a card of that size would
/// have come at the same point.
/// </summary>
public sealed class MemoryCapExceededException(string backend, long capBytes, long requestBytes, long inUseBytes)
    : InvalidOperationException(
        $"{backend}: out of memory under the --vram cap of {FormatBytes(capBytes)}: {FormatBytes(requestBytes)} requested with {FormatBytes(inUseBytes)} in use")
{
    public long CapBytes { get; } = capBytes;
    public long RequestBytes { get; } = requestBytes;
    public long InUseBytes { get; } = inUseBytes;

    /// <summary>GiB, or MiB below one GiB (small caps in tests).</summary>
    public static string FormatBytes(long bytes) => bytes >= 1L << 30 ? $"{bytes / (double)(1L << 30):F2} GiB" : $"{bytes / (double)(1L << 20):F2} MiB";
}
