using MetaLoraNative.Engine;

namespace MetaLoraNative.Kernels.Verification;

// Gemm: GEMM in every transpose and precision mix, GemmSlice on blocks of wider matrices on every route, Linear and
// its input backward, and the skinny-GEMM routes at every LoRA target kind's shape (SkinnyGemmParity).
public static partial class CudaParity
{
    static IEnumerable<ParityCheck> GemmChecks() =>
    [
        new("gemm", "GEMM, all transposes, bf16 out and fp32 accumulation, fp32×fp32", Gemm),
        new("gemm slice", "GemmSlice: blocks of wider matrices (offset pointers, ld = the tensor's row) on the cuBLASLt, rank-k, GEMV and " +
            "skinny routes, the fused Stage-2 LoRA's products; the rest of c untouched", GemmSliceCheck),
        new("linear", "Linear with and without bias, and its input backward", Linear),
        .. SkinnyGemmParity.Checks,
    ];

    static void Gemm(ParityContext p)
    {
        const int M = 37, K = 70, N = 45;
        foreach (bool ta in new[] { false, true })
            foreach (bool tb in new[] { false, true })
            {
                int[] sa = ta ? [K, M] : [M, K], sb = tb ? [N, K] : [K, N];
                var (ga, ca) = p.Both(Rand(M * K, 1), sa);
                var (gb, cb) = p.Both(Rand(K * N, 2), sb);
                using var gc = p.Gpu.Zeros(M, N);
                using var cc = p.Cpu.Zeros(M, N);
                p.Gpu.Gemm(ga, ta, gb, tb, gc, 0.5f);
                p.Cpu.Gemm(ca, ta, cb, tb, cc, 0.5f);
                p.Bf16($"gemm ta={ta} tb={tb}", gc, cc);

                // Accumulating into an fp32 master (LoRA gradient style): c = 1·a·b + 1·c.
                float[] init = Rand(M * N, 3);
                using var gm = p.Gpu.Upload(init, [M, N], Precision.Master);
                using var cm = p.Cpu.Upload(init, [M, N], Precision.Master);
                p.Gpu.Gemm(ga, ta, gb, tb, gm, 1f, 1f);
                p.Cpu.Gemm(ca, ta, cb, tb, cm, 1f, 1f);
                p.F32($"gemm into fp32 ta={ta} tb={tb}", gm, cm, 1e-4);
                foreach (var t in new[] { ga, ca, gb, cb }) t.Dispose();
            }

        // fp32 × fp32 (LoRA factors) runs in fp32.
        var x = Rand(16 * 24, 4);
        var y = Rand(24 * 8, 5);
        using var gx = p.Gpu.Upload(x, [16, 24], Precision.Master);
        using var gy = p.Gpu.Upload(y, [24, 8], Precision.Master);
        using var gz = p.Gpu.Zeros([16, 8], Precision.Master);
        using var cx = p.Cpu.Upload(x, 16, 24);
        using var cy = p.Cpu.Upload(y, 24, 8);
        using var cz = p.Cpu.Zeros(16, 8);
        p.Gpu.Gemm(gx, false, gy, false, gz);
        p.Cpu.Gemm(cx, false, cy, false, cz);
        p.F32("gemm fp32", gz, cz, 1e-5);
    }

    /// <summary>
    /// One case of <see cref="GemmSliceCheck"/>: a (aShape) and b (bShape) with their blocks, c (cShape, bf16 or fp32)
    /// with its block, filled with bf16-exact values (so fp32 operands read the same on every route).
    /// </summary>
    sealed record SliceCase(string Name, int[] AShape, (long Row, long Rows, int Col, int Cols) A, bool TransA, bool AMaster,
                            int[] BShape, (long Row, long Rows, int Col, int Cols) B, bool TransB, bool BMaster,
                            int[] CShape, (long Row, long Rows, int Col, int Cols) C, bool CMaster, float Beta, GemmRoute Route);

    /// <summary>The fused LoRA's slices at small sizes, one case per route (the route is checked before the product).</summary>
    static readonly SliceCase[] SliceCases =
    [
        // a column block of a (64, 96) times b into columns [32, 96) of c (64, 128): every ld and offset 16-byte clean
        new("cublaslt y-slice", [64, 96], (0, 64, 16, 64), false, false, [64, 64], (0, 64, 0, 64), true, false,
            [64, 128], (0, 64, 32, 64), false, 1f, GemmRoute.CublasLt),
        // y[:, 30:80] += a[:, 1:2]·Uᵀ: a (37, 3) bf16, U (50, 1) fp32
        new("rankk y += a·Uᵀ", [37, 3], (0, 37, 1, 1), false, false, [50, 1], (0, 50, 0, 1), true, true,
            [37, 120], (0, 37, 30, 50), false, 1f, GemmRoute.RankK),
        // dU += dyₛᵀ·aⱼ: dy's columns [30, 80) transposed, a's column 1, into an fp32 (50, 1)
        new("gemv dU += dyₛᵀ·a", [37, 120], (0, 37, 30, 50), true, false, [37, 3], (0, 37, 1, 1), false, false,
            [50, 1], (0, 50, 0, 1), true, 1f, GemmRoute.Gemv),
        // dmid[:, 1:2] = dyₛ·U
        new("gemv dmid = dyₛ·U", [37, 120], (0, 37, 30, 50), false, false, [50, 1], (0, 50, 0, 1), false, true,
            [37, 3], (0, 37, 1, 1), false, 0f, GemmRoute.Gemv),
        // G = dmidᵀ·x over a group's rows [5, 37), into an fp32 (3, 70)
        new("skinny G = dmidᵀ·x", [37, 3], (5, 32, 0, 3), true, false, [37, 70], (5, 32, 0, 70), false, false,
            [3, 70], (0, 3, 0, 70), true, 0f, GemmRoute.Skinny),
        // dx[rows 5:37] += dmid·A: A (3, 70) fp32
        new("rankk dx += dmid·A", [37, 3], (5, 32, 0, 3), false, false, [3, 70], (0, 3, 0, 70), false, true,
            [37, 70], (5, 32, 0, 70), false, 1f, GemmRoute.RankK),
    ];

    static void GemmSliceCheck(ParityContext p)
    {
        int seed = 10;
        foreach (var x in SliceCases)
        {
            var (ga, ca) = Operand(x.AShape, x.AMaster);
            var (gb, cb) = Operand(x.BShape, x.BMaster);
            var (gc, cc) = Operand(x.CShape, x.CMaster);
            MatrixSlice Slice(Tensor t, (long Row, long Rows, int Col, int Cols) s) => new(t, s.Row, s.Rows, s.Col, s.Cols);
            var problem = CudaBackend.Describe(Slice(ga, x.A), x.TransA, Slice(gb, x.B), x.TransB, Slice(gc, x.C));
            ParityContext.Require(GemmRouting.Route(problem).Route == x.Route, $"{x.Name}: routed to {GemmRouting.Route(problem).Route}, the case is for {x.Route}");
            p.Gpu.GemmSlice(Slice(ga, x.A), x.TransA, Slice(gb, x.B), x.TransB, Slice(gc, x.C), 1f, x.Beta);
            p.Cpu.GemmSlice(Slice(ca, x.A), x.TransA, Slice(cb, x.B), x.TransB, Slice(cc, x.C), 1f, x.Beta);
            if (x.CMaster) p.F32($"gemm slice {x.Name}", gc, cc, 1e-4);
            else p.Bf16($"gemm slice {x.Name}", gc, cc);
            foreach (var t in new[] { ga, ca, gb, cb, gc, cc }) t.Dispose();
        }

        (Tensor G, Tensor C) Operand(int[] shape, bool master)
        {
            var v = Rand(shape[0] * shape[1], seed++);
            var precision = master ? Precision.Master : Precision.Compute;
            return (p.Gpu.Upload(v, shape, precision), p.Cpu.Upload(v, shape, precision));
        }
    }

    static void Linear(ParityContext p)
    {
        var (gx, cx) = p.Both(Rand(2 * 19 * 48, 1), 2, 19, 48);
        var (gw, cw) = p.Both(Rand(40 * 48, 2, 0.2f), 40, 48);
        var (gb, cb) = p.Both(Rand(40, 3), 40);
        using var gy = p.Gpu.Linear(gx, gw, gb);
        using var cy = p.Cpu.Linear(cx, cw, cb);
        ParityContext.RequireShape(gy, [2, 19, 40], "linear output");
        p.Bf16("linear+bias", gy, cy);
        using var gy0 = p.Gpu.Linear(gx, gw, null);
        using var cy0 = p.Cpu.Linear(cx, cw, null);
        p.Bf16("linear", gy0, cy0);
        var (gdy, cdy) = p.Both(Rand(2 * 19 * 40, 4), 2, 19, 40);
        using var gdx = p.Gpu.LinearBackward(gdy, gw);
        using var cdx = p.Cpu.LinearBackward(cdy, cw);
        p.Bf16("linear backward", gdx, cdx);
    }
}
