using System.Globalization;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Quantization;

namespace MetaLoraNative.Engine.Planning;

/// <summary>
/// Whether a model fits in host memory before a CPU run builds it. The need is the memory planner's prediction for
/// the CPU engine (<see cref="MemoryPlanner.Estimate"/> with the backend's <see cref="MemoryModel"/>, a Stage-2 step at
/// the run's tokens): the weights, plus for training every other part of the step's peak (LoRA factors, gradients,
/// moments, kept activations, working set), for a forward only the working set. It is compared with what the kernel
/// says can be allocated without swapping (MemAvailable in /proc/meminfo); a model that does not fit is refused as
/// bad input naming the largest preset that would, instead of a run that swaps for hours or is killed mid-way.
/// </summary>
public static class HostMemory
{
    public const string MemInfo = "/proc/meminfo";

    /// <summary>MemAvailable of <paramref name="meminfo"/> in bytes; null where it cannot be read (not Linux).</summary>
    public static long? Available(string meminfo = MemInfo)
    {
        string[] lines;
        try { lines = File.ReadAllLines(meminfo); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
        // "MemAvailable:   23456789 kB"
        foreach (string line in lines)
            if (line.StartsWith("MemAvailable:", StringComparison.Ordinal)
                && line["MemAvailable:".Length..].Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries) is [var kb, "kB"]
                && long.TryParse(kb, NumberStyles.None, CultureInfo.InvariantCulture, out long k))
                return k * 1024;
        return null;
    }

    /// <summary>The predicted need of one run on a CPU backend of memory model <paramref name="m"/>.</summary>
    /// <param name="training">a training step (backward, LoRA gradients and moments) rather than forwards only</param>
    public static (long Weights, long Activations) Need(FluxConfig c, MemoryModel m, int imageTokens, int textTokens, bool training, bool recompute = false)
    {
        var e = MemoryPlanner.Estimate(TrainingShape.Stage2(c, imageTokens, textTokens, 16, 1), m, BaseDType.Bf16, recompute);
        return (e.Weights, training ? e.Peak - e.Weights : e.WorkingSet);
    }

    /// <summary>
    /// Throws <see cref="InputException"/> on <paramref name="flag"/> when the run will not fit in
    /// <paramref name="available"/> bytes; <paramref name="instead"/> turns a preset name into the flag value to use.
    /// </summary>
    public static void Check(FluxConfig c, MemoryModel m, int imageTokens, int textTokens, bool training, long available,
                             string flag, Func<string, string> instead, bool recompute = false)
    {
        var (weights, activations) = Need(c, m, imageTokens, textTokens, training, recompute);
        if (weights + activations <= available) return;
        long Total(FluxConfig p) { var (w, a) = Need(p, m, imageTokens, textTokens, training, recompute); return w + a; }
        var smaller = FluxConfig.Presets.Where(p => p.ParameterCount() < c.ParameterCount()).OrderByDescending(p => p.ParameterCount())
                                        .FirstOrDefault(p => Total(p) <= available);
        string G(long b) => MemoryCapExceededException.FormatBytes(b);
        throw new InputException(flag,
            $"the {c.Name} model needs about {G(weights + activations)} of memory on the CPU engine ({G(weights)} weights + {G(activations)} " +
            $"{(training ? "training step" : "activations")} at {imageTokens} image + {textTokens} text tokens), but only {G(available)} is available " +
            $"(MemAvailable); use {(smaller is null ? "a GPU" : $"{instead(smaller.Name)} ({G(Total(smaller))}) or a GPU")} (--device cuda), " +
            "or pass --no-memory-check to try anyway");
    }
}
