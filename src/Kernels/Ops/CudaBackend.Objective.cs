using System.Runtime.InteropServices;
using MetaLoraNative.Engine;
using MetaLoraNative.Kernels.Native;

namespace MetaLoraNative.Kernels;

// Objective (objective.cu): the MSE loss, sums of squares (gradient norms) and AdamW; and the device step, whose
// scalars (loss, Σ g², clip scale, applies) stay in device memory until one asynchronous read-back per step.
public sealed partial class CudaBackend
{
    const int ReduceBlocks = 256;   // fixed grid of the deterministic reductions: the host adds this many partials

    /// <summary>Mirrors AdamWParams in objective.cu.</summary>
    [StructLayout(LayoutKind.Sequential)]
    struct AdamWParams
    {
        public ulong Param, Grad, M, V;
        public long N;
        public int DtGrad;
        public float Lr, Beta1, Beta2, Eps, WeightDecay, GradScale, BiasCorrection1, BiasCorrection2;
    }

    public double MseLoss(Tensor pred, Tensor target, out Tensor dPred)
    {
        using var _ = Op("mse_loss");
        using var partials = Alloc([ReduceBlocks * 2], Precision.Master);   // 256 doubles
        long n = LaunchMse(pred, target, out dPred, partials.Ptr);
        return SumPartials(partials) / n;
    }

    /// <summary>mse_loss's partials (ReduceBlocks doubles at <paramref name="partials"/>) and dPred; returns the element count.</summary>
    long LaunchMse(Tensor pred, Tensor target, out Tensor dPred, ulong partials)
    {
        var p = T(pred, "pred");
        var t = T(target, "target");
        Shapes.Require(p.Length == t.Length && p.Length > 0, $"mse_loss: pred {p}, target {t}");
        var d = Alloc(p.Shape);
        Launch("objective.cu", "mse_loss", (ReduceBlocks, 1, 1), (Block, 1, 1), 0, partials, d.Ptr, p.Ptr, p.Dt, t.Ptr, t.Dt, p.Length);
        dPred = d;
        return p.Length;
    }

    public double SumSquares(Tensor t)
    {
        using var _ = Op("sum_squares");
        var c = T(t);
        if (c.Length == 0) return 0;
        using var partials = Alloc([ReduceBlocks * 2], Precision.Master);
        Launch("objective.cu", "sum_squares", (ReduceBlocks, 1, 1), (Block, 1, 1), 0, partials.Ptr, c.Ptr, c.Dt, c.Length);
        return SumPartials(partials);
    }

    /// <summary>
    /// One reduction per tensor into its own slice of one partials buffer, then a single read-back: the global
    /// gradient norm of ~1,000 LoRA factors costs one synchronisation instead of one per factor.
    /// </summary>
    public double SumSquares(IReadOnlyList<Tensor> tensors)
    {
        using var _ = Op("sum_squares_many");
        var list = tensors.Where(t => t.Length > 0).Select(t => T(t)).ToArray();
        if (list.Length == 0) return 0;
        using var partials = Alloc([ReduceBlocks * 2 * list.Length], Precision.Master);
        for (int i = 0; i < list.Length; i++)
            Launch("objective.cu", "sum_squares", (ReduceBlocks, 1, 1), (Block, 1, 1), 0,
                   partials.Ptr + (ulong)(i * ReduceBlocks * sizeof(double)), list[i].Ptr, list[i].Dt, list[i].Length);
        float[] raw = Download(partials);   // fp32 view of the doubles: reinterpret, not convert
        var doubles = new double[ReduceBlocks * list.Length];
        Buffer.BlockCopy(raw, 0, doubles, 0, doubles.Length * sizeof(double));
        double s = 0;
        foreach (double v in doubles) s += v;   // tensor by tensor, block order: deterministic
        return s;
    }

    /// <summary>Adds the blocks' fp64 partials in block order (deterministic).</summary>
    double SumPartials(CudaTensor partials)
    {
        float[] raw = Download(partials);   // fp32 view of 256 doubles: reinterpret, not convert
        var doubles = new double[ReduceBlocks];
        Buffer.BlockCopy(raw, 0, doubles, 0, ReduceBlocks * sizeof(double));
        double s = 0;
        foreach (double v in doubles) s += v;
        return s;
    }

    public void AdamW(Tensor param, Tensor grad, Tensor m, Tensor v, in AdamWStep step)
    {
        using var _ = Op("adamw");
        var p = T(param, "param");
        var g = T(grad, "grad");
        var cm = T(m, "m");
        var cv = T(v, "v");
        Shapes.Require(p.Precision == Precision.Master && cm.Precision == Precision.Master && cv.Precision == Precision.Master,
            "adamw: param, m and v must be Master (fp32)");
        Shapes.Require(g.Length == p.Length && cm.Length == p.Length && cv.Length == p.Length, $"adamw: param {p}, grad {g}, m {cm}, v {cv}");
        Shapes.Require(step.Step >= 1, "adamw: step is 1-based");
        var a = new AdamWParams
        {
            Param = p.Ptr, Grad = g.Ptr, M = cm.Ptr, V = cv.Ptr, N = p.Length, DtGrad = g.Dt,
            Lr = step.LearningRate, Beta1 = step.Beta1, Beta2 = step.Beta2, Eps = step.Epsilon, WeightDecay = step.WeightDecay,
            GradScale = step.GradScale,
            BiasCorrection1 = (float)(1 - Math.Pow(step.Beta1, step.Step)),
            BiasCorrection2 = (float)(1 - Math.Pow(step.Beta2, step.Step)),
        };
        if (p.Length > 0) LaunchParams("objective.cu", "adamw_step", (Grid1D(p.Length), 1, 1), (Block, 1, 1), a);
    }

    // ---------------------------------------------------------------- the device step

    const int MaxRanges = 8;   // MAX_RANGES in objective.cu: ranges per sum_squares_ranges / adamw_ranges launch

    /// <summary>
    /// A step's scalars: one Master allocation of fp64 slots (the four scalars, mse_loss's partials, then
    /// MaxRanges × ReduceBlocks partials of the norm), a pinned host copy of the four scalars and the event after
    /// the copy. The layout is fixed, so a captured step finds it at the same addresses every step.
    /// </summary>
    sealed class CudaStepScalars : StepScalars
    {
        public const int Slots = 4, LossPartials = Slots, NormPartials = LossPartials + ReduceBlocks, Doubles = NormPartials + MaxRanges * ReduceBlocks;
        readonly CudaBackend owner;
        readonly PinnedHostHandle host;
        readonly CudaEventHandle copied;
        bool queued;

        public CudaStepScalars(CudaBackend owner)
        {
            this.owner = owner;
            Device = owner.Alloc([Doubles * 2], Precision.Master);
            owner.FillWith(Device, 0f);
            CudaCheck.Cu(CuGraph.cuMemAllocHost_v2(out IntPtr p, Slots * sizeof(double)));
            host = new PinnedHostHandle(p, Slots * sizeof(double));
            CudaCheck.Cu(CuDriver.cuEventCreate(out IntPtr e, CuDriver.CU_EVENT_DISABLE_TIMING));
            copied = new CudaEventHandle(e);
        }

        public CudaBackend Owner => owner;
        public CudaTensor Device { get; }
        public ulong Ptr(int slot) => Device.Ptr + (ulong)slot * sizeof(double);

        public unsafe void QueueCopy()
        {
            CudaCheck.Cu(CuDriver.cuMemcpyDtoHAsync_v2((void*)host.DangerousGetHandle(), Device.Ptr, Slots * sizeof(double), owner.Stream));
            CudaCheck.Cu(CuDriver.cuEventRecord(copied.DangerousGetHandle(), owner.Stream));
            queued = true;
        }

        public override unsafe StepValues Read()
        {
            if (!queued) throw new InvalidOperationException("step scalars read before any ReadBack");
            owner.MakeCurrent();
            owner.Counted.Wait();
            int rc = CuDriver.cuEventSynchronize(copied.DangerousGetHandle());
            if (rc != CuDriver.CUDA_SUCCESS)
                throw new CudaException("CUDA driver", rc, CuDriver.ErrorString(rc),
                    "cuEventSynchronize (the read-back of a step's scalars); the failing op may be any of that step: run with METALORA_SYNC_CHECK=1 to name it");
            var v = (double*)host.DangerousGetHandle();
            return new StepValues(v[0], v[1], (float)v[2], v[3] != 0);
        }

        public override void Dispose()
        {
            Device.Dispose();
            host.Dispose();
            copied.Dispose();
            base.Dispose();
        }
    }

    CudaStepScalars Scalars(StepScalars s, string op) =>
        s as CudaStepScalars is { } c && ReferenceEquals(c.Owner, this) ? c
            : throw new ArgumentException($"{op}: the step scalars {s} do not belong to this CUDA backend");

    public StepScalars NewStepScalars()
    {
        using var _ = Op("step_scalars");
        return new CudaStepScalars(this);
    }

    public void MseLoss(Tensor pred, Tensor target, out Tensor dPred, StepScalars scalars)
    {
        using var _ = Op("mse_loss_device");
        var s = Scalars(scalars, "mse_loss");
        long n = LaunchMse(pred, target, out dPred, s.Ptr(CudaStepScalars.LossPartials));
        Launch("objective.cu", "mse_finish", (1, 1, 1), (32, 1, 1), 0, s.Ptr(0), s.Ptr(CudaStepScalars.LossPartials), ReduceBlocks, n);
    }

    /// <summary>Mirrors SumSquaresRange / SumSquaresRanges in objective.cu.</summary>
    [StructLayout(LayoutKind.Sequential)]
    struct SumSquaresRange
    {
        public ulong X;
        public long N;
        public int Dt, Pad;
    }

    [StructLayout(LayoutKind.Sequential)]
    unsafe struct SumSquaresRanges
    {
        public ulong Partials;
        public fixed byte R[MaxRanges * 24];
        public void Set(int i, in SumSquaresRange r)
        {
            fixed (byte* p = R) ((SumSquaresRange*)p)[i] = r;
        }
    }

    /// <summary>Mirrors AdamWRange / AdamWRanges in objective.cu.</summary>
    [StructLayout(LayoutKind.Sequential)]
    struct AdamWRange
    {
        public ulong Param, Grad, M, V;
        public long N;
        public int DtGrad;
        public float BiasCorrection1, BiasCorrection2;
        public int Pad;
    }

    [StructLayout(LayoutKind.Sequential)]
    unsafe struct AdamWRanges
    {
        public ulong Scalars;
        public float Lr, Beta1, Beta2, Eps, WeightDecay;
        public int Pad;
        public fixed byte R[MaxRanges * 56];
        public void Set(int i, in AdamWRange r)
        {
            fixed (byte* p = R) ((AdamWRange*)p)[i] = r;
        }
    }

    /// <summary>
    /// Consecutive entries of <paramref name="tensors"/> (each a list of 1..4 tensors of one entry) merged into ranges:
    /// an entry joins the range before it when each of its tensors is a view of the same storage starting within one
    /// flat-buffer alignment (FlatParameters.Alignment, 256 bytes) after that range ends, and <paramref name="key"/>
    /// agrees (the step count). The gap then holds only padding, never another factor. Returns (first entry, element count).
    /// </summary>
    static List<(int First, long Length)> Ranges(int count, Func<int, CudaTensor[]> tensors, Func<int, int> key)
    {
        const long Slack = 256;
        var ranges = new List<(int First, long Length)>();
        long[] end = [];
        for (int i = 0; i < count; i++)
        {
            var ts = tensors(i);
            if (ranges.Count > 0 && key(i) == key(ranges[^1].First))
            {
                var first = tensors(ranges[^1].First);
                bool joins = true;
                for (int k = 0; k < ts.Length && joins; k++)
                {
                    long gap = ts[k].OffsetBytes - end[k];
                    joins = ReferenceEquals(ts[k].Storage, first[k].Storage) && ts[k].Precision == first[k].Precision && gap >= 0 && gap < Slack;
                }
                if (joins)
                {
                    ranges[^1] = (ranges[^1].First, (ts[0].OffsetBytes + ts[0].Bytes - first[0].OffsetBytes) / first[0].ElementSize);
                    for (int k = 0; k < ts.Length; k++) end[k] = ts[k].OffsetBytes + ts[k].Bytes;
                    continue;
                }
            }
            ranges.Add((i, ts[0].Length));
            end = [.. ts.Select(t => t.OffsetBytes + t.Bytes)];
        }
        return ranges;
    }

    public void ClipScale(IReadOnlyList<Tensor> grads, float maxNorm, StepScalars scalars)
    {
        using var _ = Op("clip_scale");
        var s = Scalars(scalars, "clip_scale");
        var list = grads.Select(g => T(g, "grad")).Where(g => g.Length > 0).ToArray();
        var ranges = Ranges(list.Length, i => [list[i]], _ => 0);
        // More ranges than the fixed partials area holds: a temporary area (a step of the flat buffers never needs it).
        int total = ranges.Count * ReduceBlocks;
        using var extra = ranges.Count > MaxRanges ? Alloc([total * 2], Precision.Master) : null;
        ulong partials = extra?.Ptr ?? s.Ptr(CudaStepScalars.NormPartials);
        for (int r0 = 0; r0 < ranges.Count; r0 += MaxRanges)
        {
            int n = Math.Min(MaxRanges, ranges.Count - r0);
            var p = new SumSquaresRanges { Partials = partials + (ulong)(r0 * ReduceBlocks * sizeof(double)) };
            for (int k = 0; k < n; k++)
            {
                var t = list[ranges[r0 + k].First];
                p.Set(k, new SumSquaresRange { X = t.Ptr, N = ranges[r0 + k].Length, Dt = t.Dt });
            }
            LaunchParams("objective.cu", "sum_squares_ranges", (ReduceBlocks, (uint)n, 1), (Block, 1, 1), p);
        }
        Launch("objective.cu", "clip_scale", (1, 1, 1), (32, 1, 1), 0, s.Ptr(0), partials, total, maxNorm);
    }

    public void AdamW(IReadOnlyList<AdamWTensors> tensors, in AdamWStep step, StepScalars scalars)
    {
        using var _ = Op("adamw_ranges");
        var s = Scalars(scalars, "adamw");
        var entries = tensors.Where(t => t.Param.Length > 0)
            .Select(t => (P: T(t.Param, "param"), G: T(t.Grad, "grad"), M: T(t.M, "m"), V: T(t.V, "v"), t.Step)).ToArray();
        foreach (var e in entries)
        {
            Shapes.Require(e.P.Precision == Precision.Master && e.M.Precision == Precision.Master && e.V.Precision == Precision.Master,
                "adamw: param, m and v must be Master (fp32)");
            Shapes.Require(e.G.Length == e.P.Length && e.M.Length == e.P.Length && e.V.Length == e.P.Length, $"adamw: param {e.P}, grad {e.G}, m {e.M}, v {e.V}");
            Shapes.Require(e.Step >= 1, "adamw: step is 1-based");
        }
        var ranges = Ranges(entries.Length, i => [entries[i].P, entries[i].G, entries[i].M, entries[i].V], i => entries[i].Step);
        for (int r0 = 0; r0 < ranges.Count; r0 += MaxRanges)
        {
            int n = Math.Min(MaxRanges, ranges.Count - r0);
            var a = new AdamWRanges { Scalars = s.Ptr(0), Lr = step.LearningRate, Beta1 = step.Beta1, Beta2 = step.Beta2, Eps = step.Epsilon, WeightDecay = step.WeightDecay };
            long longest = 0;
            for (int k = 0; k < n; k++)
            {
                var (first, length) = ranges[r0 + k];
                var e = entries[first];
                a.Set(k, new AdamWRange
                {
                    Param = e.P.Ptr, Grad = e.G.Ptr, M = e.M.Ptr, V = e.V.Ptr, N = length, DtGrad = e.G.Dt,
                    BiasCorrection1 = (float)(1 - Math.Pow(step.Beta1, e.Step)),
                    BiasCorrection2 = (float)(1 - Math.Pow(step.Beta2, e.Step)),
                });
                longest = Math.Max(longest, length);
            }
            LaunchParams("objective.cu", "adamw_ranges", (Grid1D(longest), (uint)n, 1), (Block, 1, 1), a);
        }
    }

    public void ReadBack(StepScalars scalars)
    {
        using var _ = Op("read_back");
        Scalars(scalars, "read_back").QueueCopy();
        Counted.ReadBack();
    }
}
