using System.Security.Cryptography;
using MetaLoraNative.Engine.Distributed;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;

namespace MetaLoraNative.Engine.Training;

/// <summary>
/// Data-parallel Stage 1 over an <see cref="ICommunicator"/>: every rank holds a replica of D and of the identity
/// bank, picks the same global batch (a function of seed and iteration), and runs the forward and backward only on
/// its slice of it. Contract:
/// - Rank r of N takes samples [start, start + count) of the global batch of B (<see cref="Slice"/>); sample b's
///   timestep and noise are drawn as sample b of the step, so the draws do not depend on N.
/// - Each rank scales its slice's mean-loss gradients by count / B and one summed all-reduce (the step's trainable
///   factors, D and the batch's M/U, bucketed by the communicator, plus the loss) gives every rank
///   Σ_b ∂ℓ_b / B: the gradient one rank computes for the whole batch.
/// - Every rank then clips and applies AdamW to the same numbers, so the replicas stay identical;
///   <see cref="CheckReplicas"/> compares a hash of D across ranks and throws on divergence.
/// - Only rank 0 writes (<see cref="WritesOutputs"/>); the training state carries no rank count, so a run resumes with
///   any number of ranks.
/// </summary>
public sealed class Stage1Parallel(ICommunicator communicator)
{
    public ICommunicator Communicator { get; } = communicator;
    public int Rank => Communicator.Rank;
    public int WorldSize => Communicator.WorldSize;

    /// <summary>Whether this rank writes the state and the outputs (rank 0).</summary>
    public bool WritesOutputs => Rank == 0;

    /// <summary>What the latest step's gradient all-reduce moved (bytes and buckets; for the scaling figures).</summary>
    public CollectiveStats LastReduce { get; private set; }

    /// <summary>Steps run, their milliseconds in all and the part of those spent in the gradient all-reduce (scaling figures).</summary>
    public (long Steps, double Milliseconds, double ReduceMilliseconds) Totals { get; private set; }

    /// <summary>
    /// Rank <paramref name="rank"/>'s samples of a global batch of <paramref name="batch"/>: B = q·N + e, the first e
    /// ranks take q + 1, the rest q (none when B &lt; N and rank ≥ B).
    /// </summary>
    public static (int Start, int Count) Slice(int batch, int rank, int worldSize)
    {
        int q = batch / worldSize, extra = batch % worldSize;
        return (rank * q + Math.Min(rank, extra), q + (rank < extra ? 1 : 0));
    }

    /// <summary>
    /// One data-parallel step on the global batch (<paramref name="batch"/>, <paramref name="ids"/>) with the
    /// trainable factors of <paramref name="global"/> (the binding one rank would train with). Returns the global
    /// batch's loss and the gradient norm before clipping, the same on every rank.
    /// </summary>
    public (double Loss, double GradNorm) Step(FluxModel model, LoraBinding global, IReadOnlyList<Example> batch, int[] ids,
                                               TrainOptions o, long step, bool recompute, NonFiniteGuard? guard = null)
    {
        var be = model.Backend;
        var stepClock = System.Diagnostics.Stopwatch.StartNew();
        var parameters = global.TrainableParameters().ToArray();
        foreach (var p in parameters) p.ZeroGrad();
        var (start, count) = Slice(batch.Count, Rank, WorldSize);
        double weight = (double)count / batch.Count, loss = 0;
        if (count > 0)
        {
            var local = new LoraBinding(global.Adapter, ids[start..(start + count)], global.TrainDown, global.TrainIdentity);
            var (inputs, target) = Trainer.StepInputs(model, batch.Skip(start).Take(count).ToArray(), o, step, start);
            using (inputs)
            using (target)
            {
                loss = Trainer.LossAndGradients(model, inputs, target, local, recompute, out var prediction) * weight;
                prediction.Dispose();
            }
            // the slice's mean-loss gradient, weighted by its share of the global batch (1/2 for 2 ranks: exact)
            if (count != batch.Count)
                foreach (var p in local.TrainableParameters()) be.ScaleInPlace(p.Grad, (float)weight);
        }

        using var lossSum = be.Upload([(float)loss], [1], Precision.Master);
        var reduceClock = System.Diagnostics.Stopwatch.StartNew();
        Communicator.AllReduce([.. parameters.Select(p => p.Grad), lossSum], ReduceOp.Sum);
        double reduceMs = reduceClock.Elapsed.TotalMilliseconds;
        LastReduce = Communicator.LastCall;
        double globalLoss = be.Download(lossSum)[0];
        double norm = Trainer.ClipAndUpdate(be, parameters, o, step, globalLoss, guard);
        Totals = (Totals.Steps + 1, Totals.Milliseconds + stepClock.Elapsed.TotalMilliseconds, Totals.ReduceMilliseconds + reduceMs);
        return (globalLoss, norm);
    }

    /// <summary>
    /// Compares a SHA-256 of every D on this rank with rank 0's (broadcast as four 16-bit pieces, exact in fp32) and
    /// sums the mismatch flags, so every rank throws the same <see cref="RuntimeFailure"/> naming the diverged ranks.
    /// </summary>
    public void CheckReplicas(LoraAdapter adapter, long iteration)
    {
        var be = adapter.Backend;
        var mine = HashPieces(adapter);
        using var root = be.Upload(mine, [mine.Length], Precision.Master);
        Communicator.Broadcast([root], 0);
        var flags = new float[WorldSize];
        flags[Rank] = be.Download(root).AsSpan().SequenceEqual(mine) ? 0f : 1f;
        using var all = be.Upload(flags, [WorldSize], Precision.Master);
        Communicator.AllReduce([all], ReduceOp.Sum);
        var diverged = be.Download(all).Select((f, r) => (f, r)).Where(x => x.f != 0).Select(x => x.r).ToArray();
        if (diverged.Length > 0)
            throw new RuntimeFailure($"iteration {iteration}",
                $"the Meta-Down D of rank(s) {string.Join(", ", diverged)} differs from rank 0's: the data-parallel replicas diverged " +
                "(every rank must run the same data, model, options and state)");
    }

    /// <summary>The first 8 bytes of SHA-256 over every D's values as four integers below 2^16.</summary>
    static float[] HashPieces(LoraAdapter adapter)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var d in adapter.Down) sha.AppendData(System.Runtime.InteropServices.MemoryMarshal.AsBytes(adapter.Backend.Download(d.Value).AsSpan()));
        var h = sha.GetHashAndReset();
        return [.. Enumerable.Range(0, 4).Select(i => (float)(h[2 * i] | h[2 * i + 1] << 8))];
    }
}
