using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Quantization;
using MetaLoraNative.Kernels;
using MetaLoraNative.Kernels.Native;
using Xunit.Abstractions;
using static MetaLoraNative.Kernels.Native.CublasLt;

namespace MetaLoraNative.Tests.Kernels;

/// <summary>
/// kernels/dev/quant/02_fp8_activations.cu without a GPU: a C# port of its encode and of its amax reduction (grid
/// stride, warp butterfly, block reduce through shared memory, atomicMax), checked against the host's rule
/// (Fp8Activations, HalfPrecision); the column index of fp8_scale_columns; the cuBLASLt descriptor choice as pure
/// logic; and the NVRTC build with its resources.
/// </summary>
public sealed class Fp8ActivationsEmulationTests(ITestOutputHelper output)
{
    const int Block = 256, Warp = 32;

    /// <summary>f_to_e4m3, line by line (rintf is round-half-to-even).</summary>
    static byte KernelEncode(float f)
    {
        uint bits = BitConverter.SingleToUInt32Bits(f), sign = (bits >> 24) & 0x80u, a = bits & 0x7fffffffu;
        if (a > 0x7f800000u) return (byte)(sign | 0x7fu);
        if (a >= 0x43e00000u) return (byte)(sign | 0x7eu);
        int e = (int)(a >> 23) - 127;
        if (e < -6) return (byte)(sign | (uint)MathF.Round(BitConverter.UInt32BitsToSingle(a) * 512f, MidpointRounding.ToEven));
        uint kept = (a & 0x7fffffu) >> 20, rest = a & 0xfffffu;
        uint code = ((uint)(e + 7) << 3) | kept;
        if (rest > 0x80000u || (rest == 0x80000u && (kept & 1u) != 0)) code++;
        return (byte)(sign | code);
    }

    /// <summary>fp8_activation_scale.</summary>
    static float KernelScale(uint amaxBits)
    {
        float amax = BitConverter.UInt32BitsToSingle(amaxBits);
        if (amaxBits >= 0x7f800000u) return float.NaN;
        return amax > 0f ? amax / 448f : 1f;
    }

    [Fact]
    public void TheKernelsEncodeIsTheHostsOnEveryFloatOfASweep()
    {
        // every 4099th bit pattern (odd stride: all mantissa residues), plus the boundaries
        var special = new[] { 0f, -0f, 448f, 464f, 463.99f, MathF.ScaleB(1, -6), MathF.ScaleB(1, -9), MathF.ScaleB(1, -10), MathF.ScaleB(3, -11),
                              float.NaN, float.PositiveInfinity, float.NegativeInfinity, float.Epsilon };
        long checkedCount = 0;
        for (ulong b = 0; b <= uint.MaxValue; b += 4099)
        {
            float f = BitConverter.UInt32BitsToSingle((uint)b);
            Assert.True(KernelEncode(f) == HalfPrecision.FloatToFloat8E4M3(f), $"0x{b:X8} ({f:G9})");
            checkedCount++;
        }
        foreach (float f in special.Concat(special.Select(v => -v)))
            Assert.Equal(HalfPrecision.FloatToFloat8E4M3(f), KernelEncode(f));
        output.WriteLine($"{checkedCount} bit patterns agree");
    }

    [Fact]
    public void TheKernelsScaleIsTheHostsIncludingZeroAndNonFinite()
    {
        foreach (float a in new[] { 0f, 1e-38f, 0.5f, 448f, 3e38f, float.MaxValue, float.PositiveInfinity, float.NaN })
        {
            uint bits = BitConverter.SingleToUInt32Bits(MathF.Abs(a));
            float k = KernelScale(bits), h = Fp8Activations.Scale(MathF.Abs(a));
            Assert.True(k.Equals(h), $"amax {a}: kernel {k}, host {h}");
        }
    }

    /// <summary>fp8_amax_bf16's reduction for one launch of Grid1D(n) blocks of 256; returns the atomicMax'd word.</summary>
    static uint KernelAmax(ushort[] x)
    {
        long n = x.Length;
        uint grid = CudaBackend.Grid1D(n);
        uint amax = 0;                                                             // zeroed by cuMemsetD8Async
        for (uint blk = 0; blk < grid; blk++)
        {
            var thread = new uint[Block];
            for (int t = 0; t < Block; t++)
                for (long i = (long)blk * Block + t; i < n; i += (long)grid * Block)
                    thread[t] = Math.Max(thread[t], BitConverter.SingleToUInt32Bits(HalfPrecision.BFloat16ToFloat(x[i])) & 0x7fffffffu);
            var warpMax = new uint[32];
            for (int w = 0; w < Block / Warp; w++)
            {
                var lanes = thread.AsSpan(w * Warp, Warp).ToArray();
                for (int o = Warp / 2; o > 0; o >>= 1)
                {
                    var next = new uint[Warp];
                    for (int l = 0; l < Warp; l++) next[l] = Math.Max(lanes[l], lanes[l ^ o]);
                    lanes = next;
                }
                warpMax[w] = lanes[0];
            }
            var first = new uint[Warp];
            for (int l = 0; l < Warp; l++) first[l] = l < Block / Warp ? warpMax[l] : 0u;
            for (int o = Warp / 2; o > 0; o >>= 1)
            {
                var next = new uint[Warp];
                for (int l = 0; l < Warp; l++) next[l] = Math.Max(first[l], first[l ^ o]);
                first = next;
            }
            if (first[0] != 0) amax = Math.Max(amax, first[0]);
        }
        return amax;
    }

    [Theory]
    [InlineData(1)]
    [InlineData(255)]
    [InlineData(257)]
    [InlineData(4608 * 3 + 17)]
    public void TheAmaxReductionCoversEveryElement(int n)
    {
        var r = new Random(n);
        var x = new ushort[n];
        for (int i = 0; i < n; i++) x[i] = HalfPrecision.FloatToBFloat16((float)(r.NextDouble() - 0.5));
        int at = r.Next(n);
        x[at] = HalfPrecision.FloatToBFloat16(-7.25f);                               // the largest magnitude, negative, anywhere
        var asFloat = x.Select(HalfPrecision.BFloat16ToFloat).ToArray();
        Assert.Equal(Fp8Activations.Amax(asFloat), BitConverter.UInt32BitsToSingle(KernelAmax(x)));
        Assert.Equal(7.25f, BitConverter.UInt32BitsToSingle(KernelAmax(x)));
        x[r.Next(n)] = HalfPrecision.FloatToBFloat16(float.NaN);
        Assert.True(float.IsNaN(KernelScale(KernelAmax(x))));
        Assert.Equal(0u, KernelAmax(new ushort[n]));
    }

    [Fact]
    public void TheColumnScaleReadsOneScaleAndBiasPerOutputColumn()
    {
        // fp8_scale_columns: element i of y (m, n) row-major is column i % n
        const int m = 3, n = 5;
        for (long i = 0; i < m * n; i++) Assert.Equal(i - i / n * n, i % n);
        var acc = Enumerable.Range(0, m * n).Select(i => (float)i).ToArray();
        var sw = new[] { 1f, 2f, 4f, 8f, 16f };
        var y = new float[m * n];
        for (long i = 0; i < m * n; i++) y[i] = MathF.FusedMultiplyAdd(acc[i], sw[(int)(i % n)], 0f);
        Assert.Equal(new float[] { 0, 2, 8, 24, 64, 5, 12, 28, 64, 144, 10, 22, 48, 104, 224 }, y);
    }

    // ---------------------------------------------------------------- the cuBLASLt descriptor choice

    [Fact]
    public void TheFp8RouteNeedsSm89AndSixteenAlignedDimensions()
    {
        Assert.Equal(Fp8GemmMode.Dequantize, Fp8Matmul.Choose(8, 0, 120900, 4608, 3072, 3072, true).Mode);   // A100
        Assert.Equal(Fp8GemmMode.Dequantize, Fp8Matmul.Choose(8, 6, 120900, 4608, 3072, 3072, true).Mode);
        Assert.Equal(Fp8GemmMode.ScaleEpilogue, Fp8Matmul.Choose(8, 9, 120900, 4608, 3072, 3072, true).Mode);  // Ada: no outer vector
        Assert.Equal(Fp8GemmMode.ScaleEpilogue, Fp8Matmul.Choose(9, 0, 120804, 4608, 3072, 3072, true).Mode);  // Hopper, cuBLASLt 12.8
        Assert.Equal(Fp8GemmMode.OuterVector, Fp8Matmul.Choose(9, 0, 120900, 4608, 3072, 3072, true).Mode);
        Assert.Equal(Fp8GemmMode.OuterVector, Fp8Matmul.Choose(10, 0, 130000, 4608, 3072, 3072, true).Mode);
        Assert.Equal(Fp8GemmMode.Dequantize, Fp8Matmul.Choose(9, 0, 120900, 4608, 3072, 3080, true).Mode);     // K off 16
        Assert.Equal(Fp8GemmMode.Dequantize, Fp8Matmul.Choose(9, 0, 120900, 4608, 3076, 3072, true).Mode);     // N off 16
        Assert.Equal(Fp8GemmMode.ScaleEpilogue, Fp8Matmul.Choose(9, 0, 120804, 7, 3072, 3072, true).Mode);     // any M
        Assert.Equal(Fp8GemmMode.Dequantize, Fp8Matmul.Choose(9, 0, 120900, 4608, 3072, 3072, false).Mode);    // fp32 x
        Assert.Contains("8.0", Fp8Matmul.Choose(8, 0, 120900, 16, 16, 16, true).Reason);
    }

    [Fact]
    public void TheDescriptorIsTnE4M3WithTheScalesWhereTheModeSays()
    {
        var outer = Fp8Matmul.Describe(Fp8GemmMode.OuterVector, 4608, 3072, 12288, bias: true);
        Assert.Equal((CUDA_R_8F_E4M3, CUDA_R_8F_E4M3, CUDA_R_16BF), (outer.TypeA, outer.TypeB, outer.TypeD));
        Assert.Equal((CUBLAS_OP_T, CUBLAS_OP_N), (outer.OpA, outer.OpB));                 // FP8 is TN only
        Assert.Equal(CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F, outer.AScaleMode);       // s_w: one per row of op(A) = d_out
        Assert.Equal(CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F, outer.BScaleMode);          // s_x: per tensor
        Assert.True(outer.BiasEpilogue);
        Assert.False(outer.ScaleKernel);
        Assert.Equal((3072L, 4608L, 12288L), (outer.Rows, outer.Cols, outer.Inner));      // D = yᵀ: (d_out × tokens)
        Assert.False(Fp8Matmul.Describe(Fp8GemmMode.OuterVector, 16, 16, 16, bias: false).BiasEpilogue);

        var epi = Fp8Matmul.Describe(Fp8GemmMode.ScaleEpilogue, 4608, 3072, 12288, bias: true);
        Assert.Equal(CUDA_R_32F, epi.TypeD);                                              // fp32 D before the column scale
        Assert.Equal(CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F, epi.AScaleMode);
        Assert.False(epi.BiasEpilogue);                                                   // the bias goes in fp8_scale_columns
        Assert.True(epi.ScaleKernel);
        Assert.Throws<ArgumentException>(() => Fp8Matmul.Describe(Fp8GemmMode.Dequantize, 1, 16, 16, false));
    }

    // ---------------------------------------------------------------- NVRTC

    [SkippableFact]
    public void TheKernelsCompileForSm80AndSm90WithoutSpills()
    {
        bool ok = NativeLibraries.TryLoad(NativeLibraries.Nvrtc, out string report) != IntPtr.Zero;
        if (!ok) output.WriteLine($"NVRTC not loadable ({report})");
        Skip.IfNot(ok, $"NVRTC not loadable ({report})");
        var compiler = new KernelCompiler(cacheDirectory: "");
        foreach (string arch in new[] { "sm_80", "sm_90" })
        {
            var r = compiler.Compile("dev/quant/02_fp8_activations.cu", arch);
            Assert.True(r.Success, r.Log);
            var res = CubinResources.Read(r.Image!, arch);
            foreach (string k in new[] { "fp8_amax_bf16", "fp8_quantize_bf16", "fp8_scale_columns" })
            {
                var e = Assert.Single(res, x => x.Kernel == k);
                output.WriteLine($"{arch} {e}");
                Assert.Equal(0L, e.LocalBytes);
                Assert.InRange(e.Registers, 1, 64);
            }
        }
    }
}
