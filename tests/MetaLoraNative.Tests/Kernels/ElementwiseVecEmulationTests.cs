using MetaLoraNative.Kernels;

namespace MetaLoraNative.Tests.Kernels;

/// <summary>
/// The index logic of the 16-byte elementwise and layout kernels, version 2 (kernels/dev/elementwise/02_vec16.cu,
/// kernels/dev/layout/02_vec16.cu), ported to C# thread by thread in the kernels' unsigned 32-bit arithmetic, with the
/// host's route decision (ElementwiseVec) and magic-number division (FastDivisor). Each ported kernel runs over small
/// and odd shapes with the engine's grid and with a single block (so the grid-stride loops turn), and every output
/// element must be written exactly once, from the source element version 1's 64-bit formulas name. Unaligned shapes
/// and pointers must take the fallback, and shapes at 2^31 elements must too.
/// </summary>
public sealed class ElementwiseVecEmulationTests
{
    const uint Block = 256;
    const ulong Base = 1UL << 20;   // a 16-byte (indeed 256-byte) aligned device address

    /// <summary>The vectors each thread of a 1-D launch visits: VEC_LOOP in unsigned 32-bit arithmetic.</summary>
    static IEnumerable<uint> Vectors(uint nvec, uint grid)
    {
        uint stride = grid * Block;
        for (uint t = 0; t < stride; t++)
            for (uint v = t; v < nvec; v += stride)
                yield return v;
    }

    static uint[] Grids(long nvec) => [CudaBackend.Grid1D(nvec), 1, 3];

    // ---------------------------------------------------------------- fast division

    public static TheoryData<long> Divisors()
    {
        var d = new TheoryData<long>();
        foreach (long x in new long[] { 1, 2, 3, 5, 7, 9, 10, 16, 24, 100, 127, 128, 129, 384, 1152, 1536, 4096, 4608, 65535, 65537,
                                        (1L << 30) - 1, 1L << 30, (1L << 30) + 1, int.MaxValue - 1, int.MaxValue })
            d.Add(x);
        return d;
    }

    [Theory]
    [MemberData(nameof(Divisors))]
    public void FastDivisionIsExactBelow2To31(long d)
    {
        var f = FastDivisor.Of(d);
        Assert.Equal((uint)d, f.D);
        var rng = new Random((int)(d % 1000003));
        var ns = new List<uint> { 0, 1, int.MaxValue, int.MaxValue - 1 };
        for (long q = 0; q < 4; q++)
            foreach (long k in new[] { q * d - 1, q * d, q * d + 1, (q + 1) * d - 1 })
                if (k >= 0 && k <= int.MaxValue) ns.Add((uint)k);
        for (long q = int.MaxValue / d - 2; q <= int.MaxValue / d + 1; q++)   // the top multiples of d
            foreach (long k in new[] { q * d - 1, q * d, q * d + 1 })
                if (k >= 0 && k <= int.MaxValue) ns.Add((uint)k);
        for (int i = 0; i < 20000; i++) ns.Add((uint)rng.Next(int.MaxValue));
        foreach (uint n in ns)
            Assert.True(f.Div(n) == n / (uint)d, $"{n} / {d}: fast {f.Div(n)}, exact {n / (uint)d} (m {f.M}, s {f.S})");
    }

    [Fact]
    public void FastDivisionIsExactForEveryNumeratorOfSmallDivisors()
    {
        for (uint d = 1; d <= 40; d++)
        {
            var f = FastDivisor.Of(d);
            for (uint n = 0; n < 1u << 16; n++)
                Assert.True(f.Div(n) == n / d, $"{n} / {d}");
        }
    }

    [Fact]
    public void FastDivisionRefusesDivisorsOutsideItsRange()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => FastDivisor.Of(0));
        Assert.Throws<ArgumentOutOfRangeException>(() => FastDivisor.Of(1L << 31));
    }

    // ---------------------------------------------------------------- route decisions

    [Fact]
    public void TheSwitchIsVec16Only()
    {
        Assert.True(ElementwiseVec.Parse("vec16"));
        Assert.False(ElementwiseVec.Parse(null));
        Assert.False(ElementwiseVec.Parse(""));
        Assert.False(ElementwiseVec.Parse("1"));
    }

    [Fact]
    public void ContiguousOpsNeedMultiplesOf8AlignedPointersAndFewerThan2To31Elements()
    {
        Assert.True(ElementwiseVec.Contiguous(8, Base, Base + 64));
        Assert.True(ElementwiseVec.Contiguous(4608L * 12288, Base, Base));
        Assert.False(ElementwiseVec.Contiguous(0, Base));
        Assert.False(ElementwiseVec.Contiguous(3 * 1031, Base));
        Assert.False(ElementwiseVec.Contiguous(1004, Base));            // 4 mod 8
        Assert.False(ElementwiseVec.Contiguous(1024, Base, Base + 8));  // a view 4 bf16 in
        Assert.False(ElementwiseVec.Contiguous(1024, Base + 2));
        Assert.True(ElementwiseVec.Contiguous((1L << 31) - 8, Base));
        Assert.False(ElementwiseVec.Contiguous(1L << 31, Base));
        // the gated residual and qkv also need C (D) a multiple of 8
        Assert.True(ElementwiseVec.GatedResidual(2, 70, 200, Base, Base, Base, Base));
        Assert.False(ElementwiseVec.GatedResidual(2, 33, 100, Base, Base, Base, Base));
        Assert.False(ElementwiseVec.GatedResidual(4, 2, 100, Base, Base, Base, Base));   // 800 elements, but a vector would straddle rows
        Assert.False(ElementwiseVec.GatedResidual(1, 1 << 20, 2048, Base, Base, Base));  // 2^31 elements
        Assert.True(ElementwiseVec.Qkv(1, 4608, 24, 128, Base, Base, Base, Base));
        Assert.False(ElementwiseVec.Qkv(2, 7, 4, 10, Base, Base, Base, Base));           // 1680 elements, D = 10
        Assert.False(ElementwiseVec.Qkv(1, 4608, 24, 128, Base, Base + 16, Base + 24, Base));
        Assert.False(ElementwiseVec.Qkv(16, 8192, 48, 128, Base, Base, Base, Base));     // 3·2^31 elements
    }

    // ---------------------------------------------------------------- elementwise

    [Theory]
    [InlineData(8)]
    [InlineData(3096)]
    [InlineData(8 * 70001)]
    public void ContiguousKernelsWriteEveryElementOnce(long n)
    {
        Assert.True(ElementwiseVec.Contiguous(n, Base));
        uint nvec = (uint)(n / ElementwiseVec.Vector);
        foreach (uint grid in Grids(nvec))
        {
            var writes = new int[n];
            foreach (uint v in Vectors(nvec, grid))
                for (uint k = 0; k < 8; k++) writes[(v << 3) + k]++;
            Assert.All(writes, w => Assert.Equal(1, w));
        }
    }

    /// <summary>gate_element: the element of gate (B, C) vector v of (B, L, C) starts at, against b = i / (L C), c = i mod C.</summary>
    [Theory]
    [InlineData(2, 70, 200)]
    [InlineData(1, 33, 64)]
    [InlineData(3, 9, 24)]
    [InlineData(5, 1, 8)]
    [InlineData(1, 4608, 3072)]
    public void GatedResidualVectorsFindTheirGateRow(int b, int l, int c)
    {
        Assert.True(ElementwiseVec.GatedResidual(b, l, c, Base, Base, Base, Base));
        long n = (long)b * l * c;
        uint nvec = (uint)(n / 8);
        var row = FastDivisor.Of(c / 8);
        var batch = FastDivisor.Of(l);
        var writes = new byte[n];
        foreach (uint v in Vectors(nvec, CudaBackend.Grid1D(nvec)))
        {
            uint r = row.Div(v);
            uint c8 = v - r * row.D;
            uint gate = batch.Div(r) * (row.D << 3) + (c8 << 3);
            for (uint k = 0; k < 8; k++)
            {
                long i = ((long)v << 3) + k;
                Assert.Equal(i / ((long)l * c) * c + i % c, gate + k);
                writes[i]++;
            }
        }
        Assert.All(writes, w => Assert.Equal(1, w));
    }

    // ---------------------------------------------------------------- slice copy

    /// <summary>
    /// (shape, axis, src start, len, dst dim, dst start, vectorised): a slice of src (shape) along axis into a dst
    /// whose axis has dst dim. The last column is what ElementwiseVec.Slice must answer.
    /// </summary>
    public static TheoryData<int[], int, int, int, int, int, bool> SliceCases() => new()
    {
        { [2, 12, 24], 1, 4, 8, 8, 0, true },        // Narrow on the middle axis
        { [2, 12, 24], 2, 8, 16, 16, 0, true },      // Narrow on the last axis
        { [2, 12, 24], 0, 1, 1, 1, 0, true },        // Narrow on the first axis: one row
        { [2, 12, 24], 1, 0, 12, 28, 16, true },     // Concat part into a longer axis
        { [3, 5, 16], 2, 0, 16, 40, 24, true },      // Concat along the last axis, dst row stride 40
        { [1, 512, 3072], 1, 0, 512, 4608, 0, true },       // txt into the joint sequence (FLUX)
        { [1, 4096, 3072], 1, 0, 4096, 4608, 512, true },   // img into the joint sequence
        { [1, 4608, 9216], 2, 3072, 3072, 3072, 0, true },  // one third of a fused projection (4,608 × 3,072)
        { [1, 7, 9], 1, 0, 7, 15, 8, false },        // one row of 63 elements
        { [2, 9, 14], 1, 4, 5, 5, 0, false },        // the engine check's unaligned shape
        { [2, 9, 14], 2, 7, 7, 7, 0, false },        // len 7
        { [2, 12, 24], 2, 4, 8, 8, 0, false },       // src offset 4
        { [3, 5, 12], 2, 0, 12, 20, 8, false },      // dst row stride 20 with more than one row
        { [1, 5, 12], 2, 0, 12, 20, 8, false },      // five rows of 12 elements
        { [1, 5, 12], 1, 2, 2, 7, 2, true },         // one row: its strides 60 and 84 are never used; cols 24, offsets 24
    };

    [Theory]
    [MemberData(nameof(SliceCases))]
    public void SliceCopyWritesEachElementOnceFromItsSource(int[] shape, int axis, int srcStart, int len, int dstDim, int dstStart, bool vectorised)
    {
        long outer = 1, inner = 1;
        for (int i = 0; i < axis; i++) outer *= shape[i];
        for (int i = axis + 1; i < shape.Length; i++) inner *= shape[i];
        int srcDim = shape[axis];
        var plan = ElementwiseVec.Slice(outer, inner, dstDim, dstStart, srcDim, srcStart, len, Base, Base + 4096);
        Assert.Equal(vectorised, plan != null);
        if (plan is not { } p) return;
        // misaligned pointers on either side refuse the same shape
        Assert.Null(ElementwiseVec.Slice(outer, inner, dstDim, dstStart, srcDim, srcStart, len, Base + 8, Base));
        Assert.Null(ElementwiseVec.Slice(outer, inner, dstDim, dstStart, srcDim, srcStart, len, Base, Base + 2));

        // version 1's map, from its (o, j, i) loop in 64-bit: dst element -> src element
        long dstLength = outer * dstDim * inner;
        var expected = new long[dstLength];
        Array.Fill(expected, -1);
        for (long o = 0; o < outer; o++)
            for (long j = 0; j < len; j++)
                for (long i = 0; i < inner; i++)
                    expected[(o * dstDim + dstStart + j) * inner + i] = (o * srcDim + srcStart + j) * inner + i;

        uint nvec = (uint)p.Vectors;
        var row = FastDivisor.Of(p.Cols / 8);
        foreach (uint grid in Grids(nvec))
        {
            var source = new long[dstLength];
            var writes = new int[dstLength];
            foreach (uint v in Vectors(nvec, grid))
            {
                uint r = row.Div(v);
                uint c = (v - r * row.D) << 3;
                uint si = r * (uint)p.LdSrc + (uint)p.OffSrc + c;
                uint di = r * (uint)p.LdDst + (uint)p.OffDst + c;
                Assert.True(si % 8 == 0 && di % 8 == 0, "vector start off a 16-byte boundary");
                for (uint k = 0; k < 8; k++)
                {
                    writes[di + k]++;
                    source[di + k] = si + k;
                }
            }
            for (long e = 0; e < dstLength; e++)
            {
                Assert.Equal(expected[e] >= 0 ? 1 : 0, writes[e]);
                if (expected[e] >= 0) Assert.Equal(expected[e], source[e]);
            }
        }
    }

    [Fact]
    public void SliceCopyRefusesTensorsOf2To31Elements()
    {
        // src (2^16, 2^7, 2^8) has 2^31 elements: version 1 runs; one row fewer fits
        Assert.Null(ElementwiseVec.Slice(1 << 16, 1 << 8, 64, 0, 1 << 7, 0, 64, Base, Base));
        Assert.Null(ElementwiseVec.Slice(1 << 16, 1 << 8, 1 << 7, 0, 64, 0, 64, Base, Base));
        var p = ElementwiseVec.Slice((1 << 16) - 1, 1 << 8, 64, 0, 1 << 7, 64, 64, Base, Base);
        Assert.NotNull(p);
        // its largest source index, in the kernel's 32-bit form, does not wrap
        var s = p.Value;
        long last = (s.Rows - 1) * s.LdSrc + s.OffSrc + s.Cols - 1;
        Assert.True(last < ElementwiseVec.IndexLimit);
    }

    // ---------------------------------------------------------------- split / merge qkv

    [Theory]
    [InlineData(2, 7, 3, 16)]
    [InlineData(1, 5, 1, 8)]
    [InlineData(3, 4, 5, 24)]
    [InlineData(1, 33, 24, 128)]
    public void QkvVectorsMapOneToOne(int b, int l, int h, int d)
    {
        Assert.True(ElementwiseVec.Qkv(b, l, h, d, Base, Base, Base, Base));
        long n = 3L * b * l * h * d, per = (long)b * h * l * d;
        uint nvec = (uint)(n / 8);
        var dvec = FastDivisor.Of(d / 8);
        var heads = FastDivisor.Of(h);
        var tokens = FastDivisor.Of(l);
        // version 1's map: qkv element (b, l, which, h, d) -> element ((b H + h) L + l) D + d of q, k or v
        var expected = new (int Which, long At)[n];
        for (long i = 0; i < n; i++)
        {
            long dd = i % d, r = i / d;
            long hh = r % h; r /= h;
            int which = (int)(r % 3); r /= 3;
            long ll = r % l, bb = r / l;
            expected[i] = (which, ((bb * h + hh) * l + ll) * d + dd);
        }
        foreach (uint grid in Grids(nvec))
        {
            var split = new int[3, per];   // writes into q, k, v
            var merged = new int[n];       // writes into qkv
            foreach (uint v in Vectors(nvec, grid))
            {
                // qkv_head_element
                uint r = dvec.Div(v);
                uint d8 = v - r * dvec.D;
                uint r2 = heads.Div(r);
                uint hh = r - r2 * heads.D;
                uint r3 = r2 / 3u;
                uint which = r2 - 3u * r3;
                uint bb = tokens.Div(r3);
                uint ll = r3 - bb * tokens.D;
                uint o = ((bb * heads.D + hh) * tokens.D + ll) * (dvec.D << 3) + (d8 << 3);
                for (uint k = 0; k < 8; k++)
                {
                    long src = ((long)v << 3) + k;
                    Assert.Equal(expected[src], ((int)which, (long)(o + k)));
                    split[which, o + k]++;
                    merged[src]++;
                }
            }
            foreach (int w in split) Assert.Equal(1, w);
            Assert.All(merged, w => Assert.Equal(1, w));
        }
    }
}
