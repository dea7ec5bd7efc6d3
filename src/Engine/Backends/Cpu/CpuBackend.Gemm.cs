using System.Numerics;
using System.Runtime.InteropServices;

namespace MetaLoraNative.Engine.Backends.Cpu;

// Gemm: the matrix products Gemm, GemmSlice, Linear and LinearBackward, the GELU-fused LinearGelu(Backward), and the tile loop the Quant group's products share.
//
// Every product is reduced to "each c[i, j] is a dot product of two contiguous rows": op(a) is laid out as A (M, K),
// transposing into a scratch copy only when a is transposed, and op(b) as Bt (N, K), read through a row source: in
// place when b already has that layout (b transposed, Linear's weight), else one block of TJ rows at a time written
// into the working thread's scratch (b not transposed, e.g. LinearBackward's weight; the fp8 weights, dequantised
// there). So no product copies a whole B operand. The (M, N) output is cut into tiles of TI rows × TJ columns; one
// tile touches TI rows of A and TJ rows of Bt (≈ 64·K elements, cache-resident for K up to a few thousand), and the
// inner kernel computes four dot products at once so each load of A's row is reused four times. Consecutive tiles
// of a thread walk down M with the same Bt block, so a block is made once per thread and column block.
// Sums are fp64 for both element types (float × float is exact in fp64).
public sealed partial class CpuBackend<T>
{
    private const int TI = 16, TJ = 64;

    /// <summary>
    /// c = alpha · op(a) · op(b) + beta · c. With beta = 0, c's old contents are ignored (NaNs included).
    /// c must not share storage with a or b.
    /// </summary>
    public void Gemm(Tensor a, bool transA, Tensor b, bool transB, Tensor c, float alpha = 1f, float beta = 0f) =>
        SliceProduct("Gemm", a, transA, b, transB, c, alpha, beta);

    /// <summary>
    /// Gemm on blocks of wider matrices (IBackend.GemmSlice): a block whose rows are whole is read and written in
    /// place; any other block is gathered into a contiguous copy first (and c's copy scattered back), which keeps one
    /// tile loop for every product. Cells of c outside its block are not touched.
    /// </summary>
    public void GemmSlice(MatrixSlice a, bool transA, MatrixSlice b, bool transB, MatrixSlice c, float alpha = 1f, float beta = 0f) =>
        SliceProduct("GemmSlice", a, transA, b, transB, c, alpha, beta);

    /// <summary>
    /// IBackend.GemmGroup: the entries one after another through GemmSlice's product (the reference of the grouped
    /// kernel), counted as the one GEMM launch a GPU issues for them. Every entry is checked before any is computed.
    /// </summary>
    public void GemmGroup(IReadOnlyList<GemmEntry> entries)
    {
        foreach (var e in entries)
        {
            e.A.Check("GemmGroup", "a");
            e.B.Check("GemmGroup", "b");
            e.C.Check("GemmGroup", "c");
        }
        if (entries.Count > 0) Counted.Gemm(CpuRoute);
        foreach (var e in entries) SliceProduct("GemmGroup", e.A, e.TransA, e.B, e.TransB, e.C, e.Alpha, e.Beta, count: false);
    }

    /// <summary>
    /// IBackend.LoraUpBackward, the reference of kernels/dev/lora/02_up_backward.cu: dmid[i, k] = Σ_c dy[i, c]·u[c, k]
    /// (rows of dy against u's columns) and dU[c, k] += Σ_i dy[i, c]·a[i, k] (dy's columns against a's), each sum
    /// in fp64 in index order, rounded once on store. Counted as the two GEMMs CUDA runs by default (one when a is null).
    /// </summary>
    public void LoraUpBackward(MatrixSlice dy, Tensor u, MatrixSlice? a, Tensor? dU, MatrixSlice dmid)
    {
        const string op = "LoraUpBackward";
        var D = Cpu(dy.Tensor, op, "dy");
        var Uc = Cpu(u, op, "u");
        var Dm = Cpu(dmid.Tensor, op, "dmid");
        dy.Check(op, "dy");
        dmid.Check(op, "dmid");
        if (a.HasValue != (dU != null))
            throw new ArgumentException($"{op}: a and dU are given together or not at all (a {a?.ToString() ?? "null"}, dU {(dU == null ? "null" : S(dU))})");
        long n = dy.Rows;
        int rows = dy.Columns, r2 = u.Cols;
        if (u.Rank != 2 || u.Rows != rows || dmid.Rows != n || dmid.Columns != r2)
            throw new ArgumentException($"{op}: dy {Operand(dy)} (n × rows), u {S(u)} must be (rows × r2), dmid {Operand(dmid)} must be (n × r2)");
        T[] dd = D.Data, ud = Uc.Data, md = Dm.Data;
        int ldy = dy.Tensor.Cols, ldm = dmid.Tensor.Cols, uo = Uc.Offset;
        long dyo = D.Offset + dy.Offset, mo = Dm.Offset + dmid.Offset;
        if (a is { } aa && dU != null)
        {
            var A = Cpu(aa.Tensor, op, "a");
            var G = Cpu(dU, op, "dU");
            aa.Check(op, "a");
            if (aa.Rows != n || aa.Columns != r2 || !dU.Shape.SequenceEqual(u.Shape))
                throw new ArgumentException($"{op}: a {Operand(aa)} must be (n × r2) = ({n} × {r2}), dU {S(dU)} u's shape {S(u)}");
            if (n > 0 && rows > 0 && r2 > 0) Counted.Gemm(CpuRoute);
            T[] ad = A.Data, gd = G.Data;
            int lda = aa.Tensor.Cols, go = G.Offset;
            long ao = A.Offset + aa.Offset;
            ForChunks(rows, n * r2, (c0, c1) =>                                                   // dU += dyᵀ·a, per column c of dy
            {
                for (int c = c0; c < c1; c++)
                for (int k = 0; k < r2; k++)
                {
                    double s = 0;
                    for (long i = 0; i < n; i++) s += Wide(dd[dyo + i * ldy + c]) * Wide(ad[ao + i * lda + k]);
                    gd[go + c * r2 + k] = Store(Wide(gd[go + c * r2 + k]) + s);
                }
            });
        }
        if (n > 0 && rows > 0 && r2 > 0) Counted.Gemm(CpuRoute);
        ForChunks(checked((int)n), (long)rows * r2, (i0, i1) =>                                    // dmid = dy·u, per row i of dy
        {
            for (long i = i0; i < i1; i++)
            for (int k = 0; k < r2; k++)
            {
                double s = 0;
                for (int c = 0; c < rows; c++) s += Wide(dd[dyo + i * ldy + c]) * Wide(ud[uo + c * r2 + k]);
                md[mo + i * ldm + k] = Store(s);
            }
        });
    }

    private void SliceProduct(string op, MatrixSlice a, bool transA, MatrixSlice b, bool transB, MatrixSlice c, float alpha, float beta, bool count = true)
    {
        var A = Cpu(a.Tensor, op, "a");
        var B = Cpu(b.Tensor, op, "b");
        var Cm = Cpu(c.Tensor, op, "c");
        a.Check(op, "a");
        b.Check(op, "b");
        c.Check(op, "c");
        int M = transA ? a.Columns : checked((int)a.Rows), K = transA ? checked((int)a.Rows) : a.Columns;
        int Kb = transB ? b.Columns : checked((int)b.Rows), N = transB ? checked((int)b.Rows) : b.Columns;
        if (K != Kb || c.Rows != M || c.Columns != N)
            throw new ArgumentException(
                $"{op}: op(a) is ({M} × {K}) from a {Operand(a)}{(transA ? "ᵀ" : "")}, op(b) is ({Kb} × {N}) from b {Operand(b)}" +
                $"{(transB ? "ᵀ" : "")}, c is ({c.Rows} × {c.Columns}) from {Operand(c)}; need inner dims equal and c (M × N)");

        if (count && M > 0 && N > 0 && K > 0) Counted.Gemm(CpuRoute);
        // A (M, K) row-major; Bt (N, K) through its row source.
        var (ad, ao) = Block(A, a);
        if (transA) { ad = Transpose(ad, ao, K, M); ao = 0; }
        var (bd, bo) = Block(B, b);
        bool cInPlace = c.IsContiguous;
        var (cd, co) = cInPlace ? (Cm.Data, Cm.Offset + checked((int)c.Offset)) : (beta == 0 ? (new T[(long)M * N], 0) : Block(Cm, c));
        if (transB) Tiles(ad, ao, M, K, N, new InPlaceRows(bd, bo), cd, co, alpha, beta);
        else Tiles(ad, ao, M, K, N, new TransposedRows(bd, bo, N), cd, co, alpha, beta);
        if (!cInPlace)
            for (int i = 0; i < M; i++)
                Array.Copy(cd, (long)i * N, Cm.Data, Cm.Offset + c.Offset + (long)i * c.Tensor.Cols, N);
    }

    /// <summary>A block (rows × columns) as a contiguous row-major array and offset: the tensor's own storage when its rows are whole, else a copy.</summary>
    private static (T[] Data, int Offset) Block(CpuTensor<T> t, MatrixSlice s)
    {
        if (s.IsContiguous) return (t.Data, t.Offset + checked((int)s.Offset));
        var copy = new T[s.Rows * s.Columns];
        for (long i = 0; i < s.Rows; i++)
            Array.Copy(t.Data, t.Offset + s.Offset + i * s.Tensor.Cols, copy, i * s.Columns, s.Columns);
        return (copy, 0);
    }

    /// <summary>An operand in messages: its shape when it is the whole tensor, else the block.</summary>
    private static string Operand(MatrixSlice s) => s.IsWhole ? S(s.Tensor) : $"rows [{s.Row}, {s.Row + s.Rows}) × cols [{s.Column}, {s.Column + s.Columns}) of {S(s.Tensor)}";

    /// <summary>y = x·Wᵀ + b. x (.., d_in), w (d_out, d_in), bias (d_out) or null → (.., d_out).</summary>
    public Tensor Linear(Tensor x, Tensor w, Tensor? bias)
    {
        const string op = "Linear";
        var W = Cpu(w, op, "w");
        if (w.Rank != 2)
            throw new ArgumentException($"{op}: x {S(x)} needs last dim d_in, w {S(w)} must be (d_out, d_in)");
        return Product(op, x, w.Dim(0), w.Dim(1), S(w), new InPlaceRows(W.Data, W.Offset), bias);
    }

    /// <summary>dx = dy·W. dy (.., d_out), w (d_out, d_in) → (.., d_in).</summary>
    public Tensor LinearBackward(Tensor dy, Tensor w)
    {
        const string op = "LinearBackward";
        var W = Cpu(w, op, "w");
        if (w.Rank != 2)
            throw new ArgumentException($"{op}: dy {S(dy)} needs last dim d_out, w {S(w)} must be (d_out, d_in)");
        return InputGradient(op, dy, w.Dim(0), w.Dim(1), S(w), new TransposedRows(W.Data, W.Offset, w.Dim(1)));
    }

    /// <summary>
    /// pre = x·Wᵀ + b + c0, act = gelu(pre) (IBackend.LinearGelu): pre starts as c0 + b (one pass), the tile loop
    /// accumulates the product onto it (beta = 1, as the GPU's epilogue adds beta·C before the GELU), and act is
    /// gelu of the stored pre.
    /// </summary>
    public (Tensor Pre, Tensor Act) LinearGelu(Tensor x, Tensor w, Tensor? bias, Tensor? c0)
    {
        const string op = "LinearGelu";
        var X = Cpu(x, op, "x");
        var W = Cpu(w, op, "w");
        if (w.Rank != 2 || x.Rank < 1 || x.Cols != w.Dim(1))
            throw new ArgumentException($"{op}: x {S(x)} needs last dim d_in, w {S(w)} must be (d_out, d_in)");
        int dOut = w.Dim(0), dIn = w.Dim(1);
        if (bias is not null && bias.Length != dOut)
            throw new ArgumentException($"{op}: bias {S(bias)} must have d_out = {dOut} elements (w {S(w)})");
        var pre = New(WithLast(x.Shape, dOut));
        if (c0 is not null && !c0.Shape.SequenceEqual(pre.Shape))
            throw new ArgumentException($"{op}: c0 {S(c0)} must have the output's shape {S(pre)}");
        bool start = InitialTerm(op, pre, bias, c0);
        if (x.Rows > 0 && dOut > 0 && dIn > 0) Counted.Gemm(CpuRoute);
        Tiles(X.Data, X.Offset, checked((int)x.Rows), dIn, dOut, new InPlaceRows(W.Data, W.Offset), pre.Data, 0, 1f, start ? 1f : 0f);
        return (pre, GeluTanh(pre));
    }

    /// <summary>
    /// dPre = (dy·W + c0) ⊙ gelu'(pre) (IBackend.LinearBackwardGelu): dPre starts as c0, the tile loop accumulates
    /// dy·W onto it, and the GELU's derivative multiplies it in place.
    /// </summary>
    public Tensor LinearBackwardGelu(Tensor dy, Tensor w, Tensor pre, Tensor? c0)
    {
        const string op = "LinearBackwardGelu";
        var G = Cpu(dy, op, "dy");
        var W = Cpu(w, op, "w");
        var P = Cpu(pre, op, "pre");
        if (w.Rank != 2 || dy.Rank < 1 || dy.Cols != w.Dim(0))
            throw new ArgumentException($"{op}: dy {S(dy)} needs last dim d_out, w {S(w)} must be (d_out, d_in)");
        int dOut = w.Dim(0), dIn = w.Dim(1);
        var dPre = New(WithLast(dy.Shape, dIn));
        if (!pre.Shape.SequenceEqual(dPre.Shape))
            throw new ArgumentException($"{op}: pre {S(pre)} must have the input gradient's shape {S(dPre)}");
        if (c0 is not null && !c0.Shape.SequenceEqual(dPre.Shape))
            throw new ArgumentException($"{op}: c0 {S(c0)} must have the input gradient's shape {S(dPre)}");
        bool start = InitialTerm(op, dPre, null, c0);
        if (dy.Rows > 0 && dOut > 0 && dIn > 0) Counted.Gemm(CpuRoute);
        Tiles(G.Data, G.Offset, checked((int)dy.Rows), dOut, dIn, new TransposedRows(W.Data, W.Offset, dIn), dPre.Data, 0, 1f, start ? 1f : 0f);
        Counted.Launch();
        T[] od = dPre.Data, pd = P.Data;
        int po = P.Offset;
        ForChunks((int)dPre.Length, 8, (i0, i1) =>
        {
            for (int i = i0; i < i1; i++) od[i] = Store(Wide(od[i]) * GeluTanhGrad(Wide(pd[po + i])));
        });
        return dPre;
    }

    /// <summary>
    /// out = c0 + bias along the rows (either may be absent): the term a fused product accumulates onto; false when
    /// both are absent (the product then starts from zero).
    /// </summary>
    private bool InitialTerm(string op, CpuTensor<T> output, Tensor? bias, Tensor? c0)
    {
        if (bias is null && c0 is null) return false;
        Counted.Launch();
        var cs = c0 is null ? null : Cpu(c0, op, "c0");
        var bs = bias is null ? null : Cpu(bias, op, "bias");
        T[] od = output.Data;
        int n = output.Cols;
        ForChunks(checked((int)output.Rows), n, (r0, r1) =>
        {
            for (int r = r0; r < r1; r++)
            for (int j = 0; j < n; j++)
                od[r * n + j] = Store((cs is null ? 0 : Wide(cs.Data[cs.Offset + r * n + j])) + (bs is null ? 0 : Wide(bs.Data[bs.Offset + j])));
        });
        return true;
    }

    /// <summary>
    /// y = x·Wᵀ + bias for a weight W (d_out, d_in) read as Bt through <paramref name="weightRows"/>: Linear's and
    /// LinearQuantized's body. <paramref name="weightShape"/> names the weight in messages.
    /// </summary>
    private CpuTensor<T> Product<TRows>(string op, Tensor x, int dOut, int dIn, string weightShape, TRows weightRows, Tensor? bias)
        where TRows : struct, IRowSource
    {
        var X = Cpu(x, op, "x");
        if (x.Rank < 1 || x.Cols != dIn)
            throw new ArgumentException($"{op}: x {S(x)} needs last dim d_in, w {weightShape} must be (d_out, d_in)");
        if (bias is not null && bias.Length != dOut)
            throw new ArgumentException($"{op}: bias {S(bias)} must have d_out = {dOut} elements (w {weightShape})");
        var y = New(WithLast(x.Shape, dOut));
        if (x.Rows > 0 && dOut > 0 && dIn > 0) Counted.Gemm(CpuRoute);
        Tiles(X.Data, X.Offset, checked((int)x.Rows), dIn, dOut, weightRows, y.Data, 0, 1f, 0f);
        if (bias is not null)
        {
            Counted.Launch();
            var bs = Cpu(bias, op, "bias");
            T[] yd = y.Data, bd = bs.Data;
            int bo = bs.Offset;
            ForChunks((int)y.Rows, dOut, (r0, r1) =>
            {
                for (int r = r0; r < r1; r++)
                for (int j = 0; j < dOut; j++)
                    yd[r * dOut + j] = Store(Wide(yd[r * dOut + j]) + Wide(bd[bo + j]));
            });
        }
        return y;
    }

    /// <summary>dx = dy·W for a weight W (d_out, d_in) whose transpose (d_in, d_out) <paramref name="transposedRows"/> reads.</summary>
    private CpuTensor<T> InputGradient<TRows>(string op, Tensor dy, int dOut, int dIn, string weightShape, TRows transposedRows)
        where TRows : struct, IRowSource
    {
        var G = Cpu(dy, op, "dy");
        if (dy.Rank < 1 || dy.Cols != dOut)
            throw new ArgumentException($"{op}: dy {S(dy)} needs last dim d_out, w {weightShape} must be (d_out, d_in)");
        var dx = New(WithLast(dy.Shape, dIn));
        if (dy.Rows > 0 && dOut > 0 && dIn > 0) Counted.Gemm(CpuRoute);
        Tiles(G.Data, G.Offset, checked((int)dy.Rows), dOut, dIn, transposedRows, dx.Data, 0, 1f, 0f);
        return dx;
    }

    /// <summary>
    /// c (M, N) at cd[co..] = alpha · A·Btᵀ + beta · c, A (M, K) at ad[ao..], Bt (N, K) through <paramref name="bt"/>.
    /// </summary>
    private static void Tiles<TRows>(T[] ad, int ao, int M, int K, int N, TRows bt, T[] cd, int co, float alpha, float beta)
        where TRows : struct, IRowSource
    {
        double al = alpha, be = beta;
        int mT = (M + TI - 1) / TI, nT = (N + TJ - 1) / TJ;
        ForChunks(mT * nT, (long)TI * TJ * Math.Max(K, 1), (t0, t1) =>
        {
            Span<double> s = stackalloc double[4];
            T[]? scratch = null;
            ReadOnlySpan<T> block = default;
            int blockStart = -1;
            for (int t = t0; t < t1; t++)
            {
                // Consecutive tiles walk down M with the same Bt column block, so the block stays made (and in cache).
                int i0 = t % mT * TI, j0 = t / mT * TJ;
                int i1 = Math.Min(i0 + TI, M), j1 = Math.Min(j0 + TJ, N);
                if (j0 != blockStart)
                {
                    block = bt.Rows(j0, j1, K, ref scratch);
                    blockStart = j0;
                }
                for (int i = i0; i < i1; i++)
                {
                    var arow = new ReadOnlySpan<T>(ad, ao + i * K, K);
                    var crow = new Span<T>(cd, co + i * N, N);
                    int j = j0;
                    for (; j + 4 <= j1; j += 4)
                    {
                        Dot4(arow, block.Slice((j - j0) * K, 4 * K), K, s);
                        for (int u = 0; u < 4; u++)
                            crow[j + u] = Store(al * s[u] + (be == 0 ? 0 : be * Wide(crow[j + u])));
                    }
                    for (; j < j1; j++)
                    {
                        double d = Dot(arow, block.Slice((j - j0) * K, K));
                        crow[j] = Store(al * d + (be == 0 ? 0 : be * Wide(crow[j])));
                    }
                }
            }
        });
    }

    /// <summary>Where the tile loop reads Bt (N, K) from, one block of rows at a time.</summary>
    private interface IRowSource
    {
        /// <summary>Rows [j0, j1) of Bt, each K long, contiguous: a slice of the source or rows written into scratch.</summary>
        ReadOnlySpan<T> Rows(int j0, int j1, int K, scoped ref T[]? scratch);
    }

    /// <summary>Bt stored as it is read, (N, K) row-major from offset: b transposed, or Linear's weight (d_out, d_in).</summary>
    private readonly struct InPlaceRows(T[] data, int offset) : IRowSource
    {
        public ReadOnlySpan<T> Rows(int j0, int j1, int K, scoped ref T[]? scratch) => new(data, offset + j0 * K, (j1 - j0) * K);
    }

    /// <summary>b (K, N) row-major from offset: Bt's rows [j0, j1) are b's columns, transposed into scratch.</summary>
    private readonly struct TransposedRows(T[] data, int offset, int N) : IRowSource
    {
        public ReadOnlySpan<T> Rows(int j0, int j1, int K, scoped ref T[]? scratch)
        {
            int n = j1 - j0;
            var dst = Scratch(ref scratch, n * K);
            for (int k = 0; k < K; k++)
            {
                var src = new ReadOnlySpan<T>(data, offset + k * N + j0, n);
                for (int r = 0; r < n; r++) dst[r * K + k] = src[r];
            }
            return dst;
        }
    }

    /// <summary>The first n elements of a thread's scratch array, grown when too small.</summary>
    private static Span<T> Scratch(scoped ref T[]? scratch, int n)
    {
        if (scratch == null || scratch.Length < n) scratch = new T[n];
        return scratch.AsSpan(0, n);
    }

    /// <summary>src viewed as (R, C) starting at off → a fresh (C, R) row-major array. Blocked for cache.</summary>
    private static T[] Transpose(T[] src, int off, int R, int C)
    {
        var dst = new T[(long)R * C];
        const int Bk = 32;
        int cBlocks = (C + Bk - 1) / Bk;
        ForChunks(cBlocks, (long)Bk * R, (b0, b1) =>
        {
            for (int cb = b0; cb < b1; cb++)
            {
                int c0 = cb * Bk, c1 = Math.Min(c0 + Bk, C);
                for (int r0 = 0; r0 < R; r0 += Bk)
                {
                    int r1 = Math.Min(r0 + Bk, R);
                    for (int r = r0; r < r1; r++)
                    for (int c = c0; c < c1; c++)
                        dst[c * R + r] = src[off + r * C + c];
                }
            }
        });
        return dst;
    }

    /// <summary>Four dot products of a (K) with the four consecutive rows of b4 (4, K), into s[0..4).</summary>
    private static void Dot4(ReadOnlySpan<T> a, ReadOnlySpan<T> b4, int K, Span<double> s)
    {
        if (typeof(T) == typeof(float) && Vector.IsHardwareAccelerated)
            Dot4F32(MemoryMarshal.Cast<T, float>(a), MemoryMarshal.Cast<T, float>(b4), K, s);
        else if (typeof(T) == typeof(double) && Vector.IsHardwareAccelerated)
            Dot4F64(MemoryMarshal.Cast<T, double>(a), MemoryMarshal.Cast<T, double>(b4), K, s);
        else
            for (int u = 0; u < 4; u++) s[u] = Dot(a, b4.Slice(u * K, K));
    }

    private static void Dot4F32(ReadOnlySpan<float> a, ReadOnlySpan<float> b, int K, Span<double> s)
    {
        int w = Vector<float>.Count, k = 0;
        var b0 = b[..K];
        var b1 = b.Slice(K, K);
        var b2 = b.Slice(2 * K, K);
        var b3 = b.Slice(3 * K, K);
        Vector<double> s0 = default, s1 = default, s2 = default, s3 = default;
        for (; k <= K - w; k += w)
        {
            Vector.Widen(new Vector<float>(a[k..]), out var al, out var ah);
            Vector.Widen(new Vector<float>(b0[k..]), out var l, out var h);
            s0 += al * l + ah * h;
            Vector.Widen(new Vector<float>(b1[k..]), out l, out h);
            s1 += al * l + ah * h;
            Vector.Widen(new Vector<float>(b2[k..]), out l, out h);
            s2 += al * l + ah * h;
            Vector.Widen(new Vector<float>(b3[k..]), out l, out h);
            s3 += al * l + ah * h;
        }
        double t0 = Vector.Sum(s0), t1 = Vector.Sum(s1), t2 = Vector.Sum(s2), t3 = Vector.Sum(s3);
        for (; k < K; k++)
        {
            double x = a[k];
            t0 += x * b0[k]; t1 += x * b1[k]; t2 += x * b2[k]; t3 += x * b3[k];
        }
        s[0] = t0; s[1] = t1; s[2] = t2; s[3] = t3;
    }

    private static void Dot4F64(ReadOnlySpan<double> a, ReadOnlySpan<double> b, int K, Span<double> s)
    {
        int w = Vector<double>.Count, k = 0;
        var b0 = b[..K];
        var b1 = b.Slice(K, K);
        var b2 = b.Slice(2 * K, K);
        var b3 = b.Slice(3 * K, K);
        Vector<double> s0 = default, s1 = default, s2 = default, s3 = default;
        for (; k <= K - w; k += w)
        {
            var x = new Vector<double>(a[k..]);
            s0 += x * new Vector<double>(b0[k..]);
            s1 += x * new Vector<double>(b1[k..]);
            s2 += x * new Vector<double>(b2[k..]);
            s3 += x * new Vector<double>(b3[k..]);
        }
        double t0 = Vector.Sum(s0), t1 = Vector.Sum(s1), t2 = Vector.Sum(s2), t3 = Vector.Sum(s3);
        for (; k < K; k++)
        {
            double x = a[k];
            t0 += x * b0[k]; t1 += x * b1[k]; t2 += x * b2[k]; t3 += x * b3[k];
        }
        s[0] = t0; s[1] = t1; s[2] = t2; s[3] = t3;
    }
}
