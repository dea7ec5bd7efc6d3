using MetaLoraNative.Engine;
using MetaLoraNative.Engine.IO;

namespace MetaLoraNative.Kernels.Verification;

// The parity checks of the 16-byte elementwise and layout kernels, version 2 (kernels/dev/elementwise/02_vec16.cu,
// kernels/dev/layout/02_vec16.cu), in CudaParity.Dev: `metalora check cuda --dev`. Each case runs the ops with
// ElementwiseVec16 on against the fp64 oracle, then again with it off (version 1) and requires the two GPU results to
// be bit-identical, and requires the route the case is built for: every launch vectorised (aligned shapes) or every
// launch on version 1's fallback (unaligned shapes).
public static partial class CudaParity
{
    /// <summary>(rows, cols) of the elementwise checks: n = 3,096 vectorises, 3,093 does not; 4,608 × 12,288 is FLUX's MLP activation at 1024² (slow).</summary>
    public static readonly (int Rows, int Cols)[] ElementwiseVecCases = [(3, 1032), (3, 1031), (4608, 12288)];

    /// <summary>(B, L, C) of the layout and gated-residual checks: C = 32 vectorises on every axis, (2, 9, 14) nowhere.</summary>
    public static readonly (int B, int L, int C)[] LayoutVecCases = [(2, 16, 32), (2, 9, 14)];

    /// <summary>(B, L, H, D) of the qkv checks: D = 16 vectorises, D = 10 does not; (1, 4,608, 24, 128) is FLUX.1-dev at 1024² (slow).</summary>
    public static readonly (int B, int L, int H, int D)[] QkvVecCases = [(2, 7, 3, 16), (2, 7, 3, 10), (1, 4608, 24, 128)];

    /// <summary>(B, L, C) of the gated-residual checks: C = 200 vectorises, 100 does not; (1, 4,608, 3,072) is FLUX's width (slow).</summary>
    public static readonly (int B, int L, int C)[] GatedResidualVecCases = [(2, 70, 200), (2, 33, 100), (1, 4608, 3072)];

    static IEnumerable<ParityCheck> ElementwiseVecChecks() =>
        ElementwiseVecCases.Select(c => new ParityCheck($"vec16 elementwise {c.Rows}x{c.Cols}",
            $"elementwise version 2 (kernels/dev/elementwise/02_vec16.cu), {c.Rows} × {c.Cols}: axpy and scale on fp32 and bf16, " +
            "SiLU, tanh-GELU and its backward against fp64, and bit-identical to version 1",
            p => ElementwiseVecCheck(p, c.Rows, c.Cols)) { Slow = (long)c.Rows * c.Cols > 1 << 20 });

    static IEnumerable<ParityCheck> LayoutVecChecks() =>
    [
        .. LayoutVecCases.Select(c => new ParityCheck($"vec16 layout {c.B}x{c.L}x{c.C}",
            $"layout version 2 (kernels/dev/layout/02_vec16.cu), ({c.B}, {c.L}, {c.C}): narrow, add_narrow (bf16 and fp32 " +
            "destinations), concat on every axis against fp64, and bit-identical to version 1",
            p => LayoutVec(p, c.B, c.L, c.C))),
        new("vec16 layout flux", "layout version 2 at FLUX.1-dev's 1024² shapes: a (4,608, 3,072) third of a (4,608, 9,216) " +
            "projection narrowed and added back, and the text (512) and image (4,096) streams concatenated; bit-identical to version 1",
            LayoutVecFlux) { Slow = true },
        .. QkvVecCases.Select(c => new ParityCheck($"vec16 qkv {c.B}x{c.L}x{c.H}x{c.D}",
            $"split_qkv / merge_qkv version 2, B {c.B}, L {c.L}, H {c.H}, D {c.D}: against fp64 and bit-identical to version 1",
            p => QkvVec(p, c)) { Slow = (long)c.B * c.L * c.H * c.D > 1 << 20 }),
    ];

    static IEnumerable<ParityCheck> GatedResidualVecChecks() =>
        GatedResidualVecCases.Select(c => new ParityCheck($"vec16 gated-residual {c.B}x{c.L}x{c.C}",
            $"gated residual version 2 (kernels/dev/elementwise/02_vec16.cu), ({c.B}, {c.L}, {c.C}): out, dy and dgate " +
            "against fp64 and bit-identical to version 1",
            p => GatedResidualVec(p, c.B, c.L, c.C)) { Slow = (long)c.B * c.L * c.C > 1 << 20 });

    /// <summary>
    /// Runs <paramref name="ops"/> with version 2 on and requires its route: every launch vectorised when
    /// <paramref name="vectorised"/>, else every launch on the fallback; then with the switch off (version 1).
    /// Returns both runs' downloads, in <paramref name="ops"/>'s order.
    /// </summary>
    static (float[][] V2, float[][] V1) BothVersions(ParityContext p, bool vectorised, string what, Func<Tensor[]> ops)
    {
        var gpu = p.Gpu;
        bool previous = gpu.ElementwiseVec16;
        try
        {
            gpu.ElementwiseVec16 = true;
            var (v0, f0) = gpu.ElementwiseVecCounts;
            var two = ops();
            var (v1, f1) = gpu.ElementwiseVecCounts;
            ParityContext.Require(vectorised ? v1 > v0 && f1 == f0 : v1 == v0 && f1 > f0,
                $"{what}: {v1 - v0} launches took version 2 and {f1 - f0} fell back, expected {(vectorised ? "all vectorised" : "all on version 1")}");
            var d2 = two.Select(t => gpu.Download(t)).ToArray();
            foreach (var t in two) t.Dispose();
            gpu.ElementwiseVec16 = false;
            var one = ops();
            var d1 = one.Select(t => gpu.Download(t)).ToArray();
            foreach (var t in one) t.Dispose();
            return (d2, d1);
        }
        finally { gpu.ElementwiseVec16 = previous; }
    }

    static void SameAsVersion1(ParityContext p, string[] names, (float[][] V2, float[][] V1) r)
    {
        for (int i = 0; i < names.Length; i++) p.Exact($"{names[i]} = version 1", r.V2[i], r.V1[i]);
    }

    static void ElementwiseVecCheck(ParityContext p, int rows, int cols)
    {
        int n = rows * cols;
        bool vec = n % Kernels.ElementwiseVec.Vector == 0;
        float[] a = Rand(n, 1), b = Rand(n, 2), x = Rand(n, 3, 4f), dy = Rand(n, 4);
        var cpu = p.Cpu;
        using var ca = cpu.Upload(a, [rows, cols], Precision.Master);
        using var cb = cpu.Upload(b, rows, cols);
        using var cbf = cpu.Upload(a, rows, cols);
        using var cbs = cpu.Upload(a, rows, cols);
        using var cx = cpu.Upload(x, rows, cols);
        using var cdy = cpu.Upload(dy, rows, cols);
        cpu.AddInPlace(ca, cb, 0.3f);
        cpu.ScaleInPlace(ca, -1.5f);
        cpu.AddInPlace(cbf, cb, 0.7f);   // one bf16 rounding per result, as the output-rounding baseline assumes
        cpu.ScaleInPlace(cbs, 0.75f);
        using var csilu = cpu.Silu(cx);
        using var cgelu = cpu.GeluTanh(cx);
        using var cgrad = cpu.GeluTanhBackward(cx, cdy);

        var gpu = p.Gpu;
        using var gb = gpu.Upload(b, rows, cols);
        using var gx = gpu.Upload(x, rows, cols);
        using var gdy = gpu.Upload(dy, rows, cols);
        Tensor[] Ops()
        {
            var acc = gpu.Upload(a, [rows, cols], Precision.Master);
            gpu.AddInPlace(acc, gb, 0.3f);
            gpu.ScaleInPlace(acc, -1.5f);
            var bf = gpu.Upload(a, rows, cols);
            gpu.AddInPlace(bf, gb, 0.7f);
            var bs = gpu.Upload(a, rows, cols);
            gpu.ScaleInPlace(bs, 0.75f);
            return [acc, bf, bs, gpu.Silu(gx), gpu.GeluTanh(gx), gpu.GeluTanhBackward(gx, gdy)];
        }
        string[] names = ["axpy+scale fp32", "axpy bf16", "scale bf16", "silu", "gelu", "gelu backward"];
        var r = BothVersions(p, vec, $"elementwise {rows}x{cols}", Ops);
        p.F32(names[0], r.V2[0].Select(v => (double)v).ToArray(), cpu.DownloadDouble(ca), 1e-5);
        var refs = new[] { cbf, cbs, csilu, cgelu, cgrad };
        for (int i = 1; i < names.Length; i++)
        {
            double[] reference = cpu.DownloadDouble(refs[i - 1]);
            p.Bf16(names[i], r.V2[i].Select(v => (double)v).ToArray(), reference, RoundBf16(reference));
        }
        SameAsVersion1(p, names, r);
    }

    static void LayoutVec(ParityContext p, int b, int l, int c)
    {
        int[] shape = [b, l, c];
        float[] x = Rand(b * l * c, 1);
        var gpu = p.Gpu;
        var cpu = p.Cpu;
        bool vec = c % Kernels.ElementwiseVec.Vector == 0;
        using var gx = gpu.Upload(x, shape);
        using var cx = cpu.Upload(x, shape);
        for (int axis = 0; axis < 3; axis++)
        {
            int len = Math.Max(1, shape[axis] / 2), start = shape[axis] - len;
            var names = new[] { $"narrow axis {axis}", $"add_narrow axis {axis}", $"add_narrow fp32 axis {axis}", $"concat axis {axis}" };
            Tensor[] Ops()
            {
                var n = gpu.Narrow(gx, axis, start, len);
                var d = gpu.Zeros(shape);
                gpu.AddNarrow(d, n, axis, start);
                gpu.AddNarrow(d, n, axis, 0);
                var m = gpu.Zeros(shape, Precision.Master);
                gpu.AddNarrow(m, n, axis, start);
                gpu.AddNarrow(m, n, axis, 0);
                var cc = gpu.Concat(axis, gx, n, gx);
                return [n, d, m, cc];
            }
            var r = BothVersions(p, vec, $"layout ({b}, {l}, {c}) axis {axis}", Ops);
            using var cn = cpu.Narrow(cx, axis, start, len);
            using var cd = cpu.Zeros(shape);
            cpu.AddNarrow(cd, cn, axis, start);
            cpu.AddNarrow(cd, cn, axis, 0);
            using var ccat = cpu.Concat(axis, cx, cn, cx);
            double[][] refs = [cpu.DownloadDouble(cn), cpu.DownloadDouble(cd), cpu.DownloadDouble(cd), cpu.DownloadDouble(ccat)];
            for (int i = 0; i < names.Length; i++)
                if (i == 2) p.F32(names[i], r.V2[i].Select(v => (double)v).ToArray(), refs[i], 1e-6);
                else p.Bf16(names[i], r.V2[i].Select(v => (double)v).ToArray(), refs[i], RoundBf16(refs[i]));
            SameAsVersion1(p, names, r);
        }
    }

    /// <summary>FLUX's copies at 1024²: bf16 values are moved, not computed, so each must equal its source exactly.</summary>
    static void LayoutVecFlux(ParityContext p)
    {
        const int L = 4608, C = 3072, Txt = 512;
        var gpu = p.Gpu;
        float[] proj = Rand(L * 3 * C, 1), txt = Rand(Txt * C, 2), img = Rand((L - Txt) * C, 3);   // bf16-exact
        using var gproj = gpu.Upload(proj, 1, L, 3 * C);
        using var gtxt = gpu.Upload(txt, 1, Txt, C);
        using var gimg = gpu.Upload(img, 1, L - Txt, C);
        Tensor[] Ops()
        {
            var third = gpu.Narrow(gproj, 2, C, C);
            var back = gpu.Zeros(1, L, 3 * C);
            gpu.AddNarrow(back, third, 2, 2 * C);
            var joint = gpu.Concat(1, gtxt, gimg);
            return [third, back, joint];
        }
        var r = BothVersions(p, true, "layout flux", Ops);
        var third = new float[L * C];
        var back = new float[L * 3 * C];
        for (int t = 0; t < L; t++)
            for (int i = 0; i < C; i++)
            {
                third[t * C + i] = proj[t * 3 * C + C + i];
                back[t * 3 * C + 2 * C + i] = third[t * C + i];
            }
        p.Exact("narrow (4608, 3072) of (4608, 9216)", r.V2[0], third);
        p.Exact("add_narrow into zeros", r.V2[1], back);
        p.Exact("concat 512 + 4096 tokens", r.V2[2], [.. txt, .. img]);
        SameAsVersion1(p, ["narrow", "add_narrow", "concat"], r);
    }

    static void QkvVec(ParityContext p, (int B, int L, int H, int D) c)
    {
        var (b, l, h, d) = c;
        var gpu = p.Gpu;
        var cpu = p.Cpu;
        float[] v = Rand(b * l * 3 * h * d, 2);
        using var gqkv = gpu.Upload(v, b, l, 3 * h * d);
        using var cqkv = cpu.Upload(v, b, l, 3 * h * d);
        Tensor[] Ops()
        {
            var (q, k, vv) = gpu.SplitQkv(gqkv, h);
            var m = gpu.MergeQkv(q, k, vv);
            return [q, k, vv, m];
        }
        var r = BothVersions(p, d % Kernels.ElementwiseVec.Vector == 0, $"qkv {b}x{l}x{h}x{d}", Ops);
        var (cq, ck, cv) = cpu.SplitQkv(cqkv, h);
        using (cq) using (ck) using (cv)
        {
            string[] names = ["split q", "split k", "split v"];
            var refs = new[] { cq, ck, cv };
            for (int i = 0; i < 3; i++)
            {
                double[] reference = cpu.DownloadDouble(refs[i]);
                p.Bf16(names[i], r.V2[i].Select(x => (double)x).ToArray(), reference, RoundBf16(reference));
            }
        }
        p.Exact("merge qkv round trip", r.V2[3], gpu.Download(gqkv));
        SameAsVersion1(p, ["split q", "split k", "split v", "merge qkv"], r);
    }

    static void GatedResidualVec(ParityContext p, int b, int l, int c)
    {
        var gpu = p.Gpu;
        var cpu = p.Cpu;
        int n = b * l * c;
        float[] x = Rand(n, 1), g = Rand(b * c, 2), y = Rand(n, 3), dout = Rand(n, 4);
        using var gx = gpu.Upload(x, b, l, c);
        using var gg = gpu.Upload(g, b, c);
        using var gy = gpu.Upload(y, b, l, c);
        using var gdo = gpu.Upload(dout, b, l, c);
        Tensor[] Ops()
        {
            var o = gpu.GatedResidual(gx, gg, gy);
            var (dy, dgate) = gpu.GatedResidualBackward(gdo, gg, gy);
            return [o, dy, dgate];
        }
        var r = BothVersions(p, c % Kernels.ElementwiseVec.Vector == 0, $"gated residual {b}x{l}x{c}", Ops);
        using var cx = cpu.Upload(x, b, l, c);
        using var cg = cpu.Upload(g, b, c);
        using var cy = cpu.Upload(y, b, l, c);
        using var cdo = cpu.Upload(dout, b, l, c);
        using var co = cpu.GatedResidual(cx, cg, cy);
        var (cdy, cdg) = cpu.GatedResidualBackward(cdo, cg, cy);
        using (cdy) using (cdg)
        {
            string[] names = ["gated residual", "gated residual dy", "gated residual dgate"];
            var refs = new[] { co, cdy, cdg };
            for (int i = 0; i < 3; i++)
            {
                double[] reference = cpu.DownloadDouble(refs[i]);
                p.Bf16(names[i], r.V2[i].Select(v => (double)v).ToArray(), reference, RoundBf16(reference));
            }
            SameAsVersion1(p, names, r);
        }
    }
}

// The benches of version 2 beside version 1 (the same ops with ElementwiseVec16 off), in KernelBenches.Dev, at FLUX.1-dev's
// 1024² sizes. Inputs are uniform, so every output has one value known in closed form.
public static partial class KernelBenches
{
    const int Mlp = 4 * Hidden;

    static IEnumerable<KernelBench> ElementwiseVecBenches() =>
    [
        new("elementwise v1", $"tanh-GELU forward and backward, ({Tokens}, {Mlp}) bf16, version 1 (kernels/elementwise.cu)", gpu => GeluBench(gpu, false)),
        new("elementwise vec16", $"tanh-GELU forward and backward, ({Tokens}, {Mlp}) bf16, version 2 (kernels/dev/elementwise/02_vec16.cu)", gpu => GeluBench(gpu, true)),
        new("layout v1", $"narrow ({Tokens}, {Hidden}) of ({Tokens}, {3 * Hidden}), concat 512 + 4,096 tokens, split_qkv ({Tokens}, 3, {Heads}, {HeadDim}), version 1",
            gpu => LayoutBench(gpu, false)),
        new("layout vec16", $"the same copies, version 2 (kernels/dev/layout/02_vec16.cu)", gpu => LayoutBench(gpu, true)),
    ];

    static T WithElementwiseVec<T>(CudaBackend gpu, bool on, Func<T> run)
    {
        bool previous = gpu.ElementwiseVec16;
        gpu.ElementwiseVec16 = on;
        try { return run(); }
        finally { gpu.ElementwiseVec16 = previous; }
    }

    static string GBps(double bytes, float ms) => $"{bytes / (ms * 1e-3) / 1e9:F0} GB/s";

    /// <summary>
    /// x = 1, dy = 0.5: gelu(1) = 0.5 (1 + tanh(√(2/π) · 1.044715)) and gelu'(1) · 0.5, each rounded to bf16 (the tolerance,
    /// a quarter of the 2^-8 spacing near 0.84 and 0.54, admits that value alone). Bytes: forward reads x and writes out
    /// (2 · 2 bytes per element), backward reads x, dy and writes dx (3 · 2).
    /// </summary>
    static BenchResult GeluBench(CudaBackend gpu, bool vec16) => WithElementwiseVec(gpu, vec16, () =>
    {
        using var x = gpu.Zeros(Tokens, Mlp);
        using var dy = gpu.Zeros(Tokens, Mlp);
        gpu.Fill(x, 1f);
        gpu.Fill(dy, 0.5f);
        Tensor? y = null, dx = null;
        float fwd = gpu.TimeMs(() => { y?.Dispose(); y = gpu.GeluTanh(x); });
        float bwd = gpu.TimeMs(() => { dx?.Dispose(); dx = gpu.GeluTanhBackward(x, dy); });
        using var _y = y;
        using var _dx = dx;
        double k0 = Math.Sqrt(2 / Math.PI), t = Math.Tanh(k0 * (1 + 0.044715));
        float gelu = HalfPrecision.RoundToBFloat16((float)(0.5 * (1 + t)));
        float grad = HalfPrecision.RoundToBFloat16((float)(0.5 * (0.5 * (1 + t) + 0.5 * (1 - t * t) * k0 * (1 + 3 * 0.044715))));
        var checks = new[] { Uniform("gelu", gpu.Download(y!), gelu, gelu / 1024), Uniform("gelu backward", gpu.Download(dx!), grad, grad / 1024) };
        double n = (double)Tokens * Mlp;
        return new BenchResult(vec16 ? "elementwise vec16" : "elementwise v1",
            [new($"gelu forward ({GBps(4 * n, fwd)})", fwd, 0), new($"gelu backward ({GBps(6 * n, bwd)})", bwd, 0)],
            checks.All(c => c.Ok), string.Join("; ", checks.Select(c => c.Text)));
    });

    /// <summary>
    /// Copies of uniform inputs (0.5, 0.75) keep their value exactly. Bytes: each copy reads and writes its output's
    /// elements once (2 · 2 bytes each): narrow and concat (4,608 × 3,072), split_qkv (4,608 × 9,216).
    /// </summary>
    static BenchResult LayoutBench(CudaBackend gpu, bool vec16) => WithElementwiseVec(gpu, vec16, () =>
    {
        const int Txt = 512;
        using var proj = gpu.Zeros(1, Tokens, 3 * Hidden);
        using var txt = gpu.Zeros(1, Txt, Hidden);
        using var img = gpu.Zeros(1, Tokens - Txt, Hidden);
        gpu.Fill(proj, 0.5f);
        gpu.Fill(txt, 0.75f);
        gpu.Fill(img, 0.75f);
        Tensor? third = null, joint = null;
        (Tensor Q, Tensor K, Tensor V)? qkv = null;
        float narrow = gpu.TimeMs(() => { third?.Dispose(); third = gpu.Narrow(proj, 2, Hidden, Hidden); });
        float concat = gpu.TimeMs(() => { joint?.Dispose(); joint = gpu.Concat(1, txt, img); });
        float split = gpu.TimeMs(() =>
        {
            if (qkv is var (q, k, v)) { q.Dispose(); k.Dispose(); v.Dispose(); }
            qkv = gpu.SplitQkv(proj, Heads);
        });
        var (sq, sk, sv) = qkv!.Value;
        using (third) using (joint) using (sq) using (sk) using (sv)
        {
            var checks = new[]
            {
                Uniform("narrow", gpu.Download(third!), 0.5f, 0f),
                Uniform("concat", gpu.Download(joint!), 0.75f, 0f),
                Uniform("split q", gpu.Download(sq), 0.5f, 0f),
                Uniform("split v", gpu.Download(sv), 0.5f, 0f),
            };
            double slice = 4.0 * Tokens * Hidden;
            return new BenchResult(vec16 ? "layout vec16" : "layout v1",
                [new($"narrow ({GBps(slice, narrow)})", narrow, 0), new($"concat ({GBps(slice, concat)})", concat, 0),
                 new($"split_qkv ({GBps(3 * slice, split)})", split, 0)],
                checks.All(c => c.Ok), string.Join("; ", checks.Select(c => c.Text)));
        }
    });
}
