using MetaLoraNative.Engine;

namespace MetaLoraNative.Kernels.Verification;

// Objective: the MSE loss and its gradient, sums of squares, AdamW; the device step's scalars and multi-tensor AdamW.
public static partial class CudaParity
{
    static IEnumerable<ParityCheck> ObjectiveChecks() =>
    [
        new("mse", "MSE loss, its gradient, sum of squares", Mse),
        new("adamw", "five AdamW steps of an fp32 master", AdamW),
        new("device step", "loss, norm and clip scale in device memory, multi-tensor AdamW over flat-buffer views, one read-back", DeviceStep),
    ];

    static void Mse(ParityContext p)
    {
        var (gp, cp) = p.Both(Rand(3 * 4099, 1), 3, 4099);
        var (gt, ct) = p.Both(Rand(3 * 4099, 2), 3, 4099);
        double gl = p.Gpu.MseLoss(gp, gt, out var gd);
        double cl = p.Cpu.MseLoss(cp, ct, out var cd);
        p.Scalar("mse loss", gl, cl, cl * 1e-7);   // fp64 sums of fp32 differences of the same bf16 inputs
        p.Bf16("mse dpred", gd, cd);
        double css = p.Cpu.SumSquares(cp);
        p.Scalar("sum of squares bf16", p.Gpu.SumSquares(gp), css, 1e-9 * css);
        float[] g = Rand(5000, 3);
        using var gm = p.Gpu.Upload(g, [5000], Precision.Master);
        double exact = g.Sum(v => (double)v * v);
        p.Scalar("sum of squares fp32", p.Gpu.SumSquares(gm), exact, 1e-9 * exact);
        // the many-tensor form (one read-back) must agree with the sum of single reductions
        p.Scalar("sum of squares, list", p.Gpu.SumSquares([gp, gm, gp]), 2 * css + exact, 1e-9 * (2 * css + exact));
    }

    static void AdamW(ParityContext p)
    {
        const int n = 3001;
        float[] w = Rand(n, 1), grad = Rand(n, 2, 0.1f);
        using var gw = p.Gpu.Upload(w, [n], Precision.Master);
        using var cw = p.Cpu.Upload(w, [n], Precision.Master);
        using var gg = p.Gpu.Upload(grad, [n], Precision.Master);
        using var cg = p.Cpu.Upload(grad, [n], Precision.Master);
        using var gm = p.Gpu.Zeros([n], Precision.Master);
        using var gv = p.Gpu.Zeros([n], Precision.Master);
        using var cm = p.Cpu.Zeros([n], Precision.Master);
        using var cv = p.Cpu.Zeros([n], Precision.Master);
        for (int step = 1; step <= 5; step++)
        {
            var s = new AdamWStep(step, 4e-4f, GradScale: 0.5f);
            p.Gpu.AdamW(gw, gg, gm, gv, s);
            p.Cpu.AdamW(cw, cg, cm, cv, s);
        }
        p.F32("adamw param", gw, cw, 1e-5);
        p.F32("adamw m", gm, cm, 1e-5);
        p.F32("adamw v", gv, cv, 1e-4);
    }

    /// <summary>
    /// Three fp32 factors as 256-byte-aligned views of four flat buffers (the trainer's layout): the first two take
    /// one step count, the third another, so AdamW runs two ranges in one launch; three steps of loss into the
    /// scalars, ClipScale (clipping: max norm below the norm), multi-tensor AdamW and the read-back, against the
    /// same ops of the CPU oracle; then a NaN loss, whose update must leave every buffer as it was.
    /// </summary>
    static void DeviceStep(ParityContext p)
    {
        int[] sizes = [1000, 37, 2001];
        long[] offsets = [0, 1024, 1088];
        const int n = 3136;   // 1088 + 2001, rounded up to 64
        var (gp, cp) = p.Both(Rand(2 * 777, 1), 2, 777);
        var (gt, ct) = p.Both(Rand(2 * 777, 2), 2, 777);
        var sides = new[] { (Be: p.Gpu, Pred: gp, Target: gt), (Be: p.Cpu, Pred: cp, Target: ct) }.Select(side =>
        {
            var be = side.Be;
            var flat = new[] { be.Zeros([n], Precision.Master), be.Zeros([n], Precision.Master), be.Zeros([n], Precision.Master), be.Zeros([n], Precision.Master) };
            var views = sizes.Select((len, k) =>
            {
                var t = flat.Select(f => f.Slice(offsets[k], len)).ToArray();
                using (var w = be.Upload(Rand(len, 10 + k), [len], Precision.Master)) be.Copy(w, t[0]);
                using (var g = be.Upload(Rand(len, 20 + k, 0.1f), [len], Precision.Master)) be.Copy(g, t[1]);
                return t;
            }).ToArray();
            return (be, side.Pred, side.Target, Flat: flat, Views: views, Scalars: be.NewStepScalars());
        }).ToArray();
        var values = new StepValues[2];
        for (int step = 1; step <= 3; step++)
            for (int s = 0; s < 2; s++)
            {
                var (be, pred, target, _, views, scalars) = sides[s];
                be.MseLoss(pred, target, out var d, scalars);
                d.Dispose();
                be.ClipScale([.. views.Select(v => v[1])], 0.5f, scalars);
                be.AdamW([.. views.Select((v, k) => new AdamWTensors(v[0], v[1], v[2], v[3], k < 2 ? step : step + 4))],
                         new AdamWStep(1, 4e-4f), scalars);
                be.ReadBack(scalars);
                values[s] = scalars.Read();
            }
        p.Scalar("device step loss", values[0].Loss, values[1].Loss, values[1].Loss * 1e-7);
        p.Scalar("device step sum of squares", values[0].SumSquares, values[1].SumSquares, values[1].SumSquares * 1e-9);
        p.Scalar("device step clip scale", values[0].Scale, values[1].Scale, values[1].Scale * 1e-6);
        p.Scalar("device step applied and clipped", values[0].Applied && values[0].Scale < 1 ? 1 : 0, values[1].Applied && values[1].Scale < 1 ? 1 : 0, 0);
        string[] names = ["param", "grad", "m", "v"];
        double[] tolerance = [1e-5, 0, 1e-5, 1e-4];
        for (int b = 0; b < 4; b++) p.F32($"device step flat {names[b]}", sides[0].Flat[b], sides[1].Flat[b], tolerance[b]);

        // a non-finite loss: the update is dropped on the device
        var before = sides[0].Flat.Select(f => p.Gpu.Download(f)).ToArray();
        using var bad = p.Gpu.Upload(Enumerable.Repeat(float.NaN, 2 * 777).ToArray(), [2, 777]);
        p.Gpu.MseLoss(bad, gt, out var dBad, sides[0].Scalars);
        dBad.Dispose();
        p.Gpu.ClipScale([.. sides[0].Views.Select(v => v[1])], 0.5f, sides[0].Scalars);
        p.Gpu.AdamW([.. sides[0].Views.Select(v => new AdamWTensors(v[0], v[1], v[2], v[3], 9))], new AdamWStep(1, 4e-4f), sides[0].Scalars);
        p.Gpu.ReadBack(sides[0].Scalars);
        p.Scalar("device step NaN loss applied", sides[0].Scalars.Read().Applied ? 1 : 0, 0, 0);
        for (int b = 0; b < 4; b++) p.Exact($"device step NaN {names[b]} untouched", p.Gpu.Download(sides[0].Flat[b]), before[b]);

        foreach (var side in sides)
        {
            foreach (var t in side.Views.SelectMany(v => v)) t.Dispose();
            foreach (var f in side.Flat) f.Dispose();
            side.Scalars.Dispose();
        }
    }
}
