namespace MetaLoraNative.Engine.Lora;

/// <summary>
/// Binds an adapter to one forward/backward pass: which identity each sample of the batch uses and which factors
/// want gradients. Samples are grouped into runs of consecutive samples sharing an identity, so Stage 2 (one
/// identity) and most Stage-1 batches run each LoRA as a handful of whole-batch GEMMs.
///
/// Per target, for the rows x (n, d_in) of one group, with y's column slice [s, s+rows):
///   forward   down = x·Dᵀ (n, r1)   mid = down·Mᵀ (n, r2)   y[:, s:s+rows] += mid·Uᵀ
///   backward  dU += dyₛᵀ·mid   dmid = dyₛ·U   dM += dmidᵀ·down   ddown = dmid·M   dD += ddownᵀ·x   dx += ddown·D
/// down and mid are recomputed in the backward from x (which the layer keeps anyway): at rank 16 that costs
/// about r1/d_out of the frozen GEMM and saves storing two activations per target.
/// </summary>
public sealed class LoraBinding
{
    readonly (int Identity, int Start, int Count)[] groups;
    readonly int batch;

    /// <param name="identityOfSample">Identity index for each sample of the batch.</param>
    public LoraBinding(LoraAdapter adapter, int[] identityOfSample, bool trainDown, bool trainIdentity)
    {
        Adapter = adapter;
        TrainDown = trainDown;
        TrainIdentity = trainIdentity;
        batch = identityOfSample.Length;
        var list = new List<(int, int, int)>();
        for (int b = 0; b < identityOfSample.Length;)
        {
            int id = identityOfSample[b];
            if (id < 0 || id >= adapter.Identities.Count) throw new ArgumentException($"sample {b} names identity {id}, but the adapter has {adapter.Identities.Count}");
            int e = b;
            while (e < identityOfSample.Length && identityOfSample[e] == id) e++;
            list.Add((id, b, e - b));
            b = e;
        }
        groups = [.. list];
    }

    public LoraAdapter Adapter { get; }
    public bool TrainDown { get; }
    public bool TrainIdentity { get; }

    /// <summary>y (B, .., d_out) += the LoRA deltas of every target living in this module.</summary>
    public void AddDelta(string module, Tensor x, Tensor y)
    {
        var be = Adapter.Backend;
        foreach (int t in Adapter.TargetsOf(module))
        {
            var target = Adapter.Targets[t];
            var parts = new Tensor[groups.Length];
            for (int g = 0; g < groups.Length; g++)
            {
                var (id, start, count) = groups[g];
                using var xg = Rows(x, start, count);
                var factors = Adapter.Identities[id];
                using var down = be.Linear(xg.T, Adapter.Down[t].Value, null);                 // (n, r1)
                var mid = factors.Mid[t] is { } m ? be.Linear(down, m.Value, null) : null;  // (n, r2)
                parts[g] = be.Linear(mid ?? down, factors.Up[t].Value, null);              // (n, rows)
                mid?.Dispose();
            }
            using var delta = parts.Length == 1 ? parts[0] : be.Concat(0, parts);
            be.AddNarrow(y, delta, -1, target.RowStart);
            if (parts.Length > 1) foreach (var p in parts) p.Dispose();
        }
    }

    /// <summary>Accumulates the factor gradients of this module's targets and, when dx is given, adds their input gradient.</summary>
    public void Backward(string module, Tensor x, Tensor dy, Tensor? dx)
    {
        var be = Adapter.Backend;
        foreach (int t in Adapter.TargetsOf(module))
        {
            var target = Adapter.Targets[t];
            var D = Adapter.Down[t];
            using var dyS = be.Narrow(dy, -1, target.RowStart, target.Rows);             // (B, .., rows)
            foreach (var (id, start, count) in groups)
            {
                var factors = Adapter.Identities[id];
                var M = factors.Mid[t];
                var U = factors.Up[t];
                using var xg = Rows(x, start, count);
                using var dyg = Rows(dyS, start, count);
                using var down = be.Linear(xg.T, D.Value, null);                               // recomputed (n, r1)
                using var mid = M != null ? be.Linear(down, M.Value, null) : null;           // recomputed (n, r2)
                if (TrainIdentity) be.Gemm(dyg.T, true, mid ?? down, false, U.Grad, 1f, 1f);  // dU += dyₛᵀ·mid
                using var dmid = be.LinearBackward(dyg.T, U.Value);                           // (n, r2)
                Tensor ddown = dmid;
                if (M != null)
                {
                    if (TrainIdentity) be.Gemm(dmid, true, down, false, M.Grad, 1f, 1f);    // dM += dmidᵀ·down
                    ddown = be.LinearBackward(dmid, M.Value);                               // (n, r1)
                }
                if (TrainDown) be.Gemm(ddown, true, xg.T, false, D.Grad, 1f, 1f);             // dD += ddownᵀ·x
                if (dx != null)
                {
                    using var dxg = be.LinearBackward(ddown, D.Value);                      // (n, d_in)
                    if (count == batch) be.AddInPlace(dx, dxg);
                    else be.AddNarrow(dx, dxg, 0, start);
                }
                if (!ReferenceEquals(ddown, dmid)) ddown.Dispose();
            }
        }
    }

    /// <summary>The samples [start, start+count) of a batch-major tensor: the tensor itself (borrowed) when that is all of it.</summary>
    Borrowed Rows(Tensor x, int start, int count) =>
        count == batch ? new Borrowed(x, false) : new Borrowed(x.Backend.Narrow(x, 0, start, count), true);

    readonly record struct Borrowed(Tensor T, bool Owned) : IDisposable
    {
        public void Dispose()
        {
            if (Owned) T.Dispose();
        }
    }

    /// <summary>Every factor that receives a gradient in this binding.</summary>
    public IEnumerable<LoraParameter> TrainableParameters()
    {
        if (TrainDown) foreach (var d in Adapter.Down) yield return d;
        if (TrainIdentity)
            foreach (int id in groups.Select(g => g.Identity).Distinct())
                foreach (var p in Adapter.Identities[id].Parameters()) yield return p;
    }
}
