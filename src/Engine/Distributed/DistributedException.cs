namespace MetaLoraNative.Engine.Distributed;

/// <summary>
/// A multi-rank run cannot go on: a peer died, hung, left early or called a different collective, or the rendezvous
/// failed. The message says which rank and what was seen; <see cref="FailedRank"/> is that rank when known.
/// </summary>
public sealed class DistributedException : Exception
{
    public DistributedException(string message, int? failedRank, Exception? inner = null) : base(message, inner) => FailedRank = failedRank;

    /// <summary>The rank at fault (the dead or mismatched one), or null when no single rank is.</summary>
    public int? FailedRank { get; }
}
