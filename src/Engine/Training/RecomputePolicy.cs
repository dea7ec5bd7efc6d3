using MetaLoraNative.Engine.Flux;

namespace MetaLoraNative.Engine.Training;

/// <summary>
/// Per-block recomputation in the backward: the forward keeps only each block's input and the backward runs the block
/// again, trading one more forward per block for the activations' memory. The decision is made once, before the first
/// step, for the largest batch a run will see.
/// </summary>
public sealed class RecomputePolicy
{
    RecomputePolicy(string name) => Name = name;

    /// <summary>Recompute only when the kept activations, with a 25% margin for temporaries, would not fit in the device's free memory.</summary>
    public static RecomputePolicy Auto { get; } = new("auto");
    public static RecomputePolicy On { get; } = new("on");
    public static RecomputePolicy Off { get; } = new("off");

    public static IReadOnlyList<RecomputePolicy> All { get; } = [Auto, On, Off];

    /// <summary>The value that names it on the command line: auto, on or off.</summary>
    public string Name { get; }

    public override string ToString() => Name;

    public static RecomputePolicy Parse(string name) =>
        All.FirstOrDefault(p => p.Name == name)
        ?? throw new InputException("--recompute", $"unknown recompute policy '{name}' ({string.Join(", ", All)})");

    /// <summary>
    /// Whether to recompute a step of <paramref name="batch"/> samples of these token counts on the model's backend, and
    /// why (one line for the log). "auto" weighs <see cref="FluxModel.ActivationBytes"/> at 2 bytes per value (bf16, the
    /// GPU's compute precision) against the backend's free device memory.
    /// </summary>
    public bool Decide(FluxModel model, int batch, int imageTokens, int textTokens, out string reason) =>
        Decide(model.ActivationBytes(batch, imageTokens, textTokens, 2), model.Backend.MemoryInfo, out reason);

    /// <summary>
    /// The decision for activations of <paramref name="activationBytes"/>: "auto" turns recomputation on when they, with
    /// a 25% margin for temporaries, exceed the free device memory; a host-memory backend (no device memory) never needs it.
    /// </summary>
    public bool Decide(long activationBytes, (long Free, long Total)? deviceMemory, out string reason)
    {
        if (this == On) { reason = "recomputation on (asked)"; return true; }
        if (this == Off) { reason = "recomputation off (asked)"; return false; }
        if (deviceMemory is not { } mem) { reason = "recomputation off (host memory)"; return false; }
        long need = activationBytes * 5 / 4;
        bool on = need > mem.Free;
        reason = $"recomputation {(on ? "on" : "off")}: activations need ~{need / (double)(1L << 30):F1} GiB, {mem.Free / (double)(1L << 30):F1} GiB free";
        return on;
    }
}
