using System.Globalization;
using MetaLoraNative.Engine.Flux;

namespace MetaLoraNative.Engine.Distributed;

/// <summary>
/// What data-parallel Stage 1 all-reduces per step, from the LoRA targets' shapes: every rank holds the shared D and
/// the bucket's identities' M/U (fp32 masters), and each step averages D's gradient plus the gradients of the
/// identities the global batch touched. Used for the 8-GPU scaling estimate in docs/DISTRIBUTED.md.
/// </summary>
/// <param name="DownParameters">Σ over targets of r1 · d_in (D).</param>
/// <param name="MidParametersPerIdentity">Σ over targets of r2 · r1 (M).</param>
/// <param name="UpParametersPerIdentity">Σ over targets of d_out · r2 (U).</param>
public sealed record GradientTraffic(string Model, int Targets, int Rank1, int Rank2, long DownParameters,
    long MidParametersPerIdentity, long UpParametersPerIdentity)
{
    const int MasterBytes = 4;

    public static GradientTraffic For(FluxConfig config, int rank1, int rank2, IReadOnlyList<LoraTarget>? targets = null)
    {
        targets ??= FluxNames.LoraTargets(config);
        return new GradientTraffic(config.Name, targets.Count, rank1, rank2,
            targets.Sum(t => (long)rank1 * t.InFeatures), (long)targets.Count * rank2 * rank1, targets.Sum(t => (long)t.Rows * rank2));
    }

    /// <summary>fp32 gradient bytes one step all-reduces when the global batch touches <paramref name="identities"/> identities.</summary>
    public long BytesPerStep(int identities) =>
        MasterBytes * (DownParameters + identities * (MidParametersPerIdentity + UpParametersPerIdentity));

    /// <summary>
    /// A ring all-reduce of <paramref name="bytes"/> over <paramref name="ranks"/> GPUs sends 2(N−1)/N · bytes out of
    /// each GPU (reduce-scatter then all-gather); at <paramref name="linkBytesPerSecond"/> per direction that takes this long.
    /// </summary>
    public static double RingAllReduceSeconds(long bytes, int ranks, double linkBytesPerSecond) =>
        2.0 * (ranks - 1) / ranks * bytes / linkBytesPerSecond;

    /// <summary>Fraction of ideal N× throughput when communication does not overlap compute: step / (step + comm).</summary>
    public static double Efficiency(double stepSeconds, double commSeconds) => stepSeconds / (stepSeconds + commSeconds);

    /// <summary>The estimate as text: parameter counts, bytes per step, then per link the all-reduce time and efficiency.</summary>
    public IReadOnlyList<string> Report(int ranks, int identitiesPerStep, IReadOnlyList<(string Name, double BytesPerSecond)> links,
        IReadOnlyList<double> stepSeconds)
    {
        var c = CultureInfo.InvariantCulture;
        long bytes = BytesPerStep(identitiesPerStep);
        var lines = new List<string>
        {
            string.Format(c, "{0}, r1 {1}, r2 {2}: {3} targets; D {4:N0} parameters; per identity M {5:N0} + U {6:N0}",
                Model, Rank1, Rank2, Targets, DownParameters, MidParametersPerIdentity, UpParametersPerIdentity),
            string.Format(c, "{0} GPUs, {1} identities per step: {2:N1} MB of fp32 gradients; each GPU sends 2({0}-1)/{0} of it = {3:N1} MB",
                ranks, identitiesPerStep, bytes / 1e6, 2.0 * (ranks - 1) / ranks * bytes / 1e6),
        };
        foreach (var (name, bw) in links)
        {
            double t = RingAllReduceSeconds(bytes, ranks, bw);
            string eff = string.Join(", ", stepSeconds.Select(s => string.Format(c, "{0:F1} % at a {1:0.0#} s step", 100 * Efficiency(s, t), s)));
            lines.Add(string.Format(c, "  {0} ({1:0} GB/s per direction): all-reduce {2:F2} ms -> {3}", name, bw / 1e9, t * 1e3, eff));
        }
        return lines;
    }
}
