using MetaLoraNative.Engine;
using MetaLoraNative.Kernels;
using MetaLoraNative.Kernels.Native;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Kernels;

/// <summary>
/// Every kernel file, the engine's (kernels/*.cu) and the playground's (kernels/dev), compiles with NVRTC for Ampere
/// and Hopper. Needs only libnvrtc (no GPU): on Debian, .ci/install-nvrtc.sh provides NVRTC 11.8. Skips, saying why,
/// when NVRTC does not load. Also the host facts that need no GPU: parameter struct layouts, the CUDA probe.
/// </summary>
public class KernelCompileTests(ITestOutputHelper output)
{
    static bool NvrtcMissing(out string reason)
    {
        bool ok = NativeLibraries.TryLoad(NativeLibraries.Nvrtc, out string report) != IntPtr.Zero;
        reason = ok ? "" : $"NVRTC not loadable ({report}); run .ci/install-nvrtc.sh";
        return !ok;
    }

    public static TheoryData<string> Files() => [.. KernelCompiler.KernelFiles(), .. KernelCompiler.DevKernelFiles()];

    /// <summary>The op groups' kernel files (docs/ARCHITECTURE.md's table); gemm.cu joins them when it exists.</summary>
    static readonly string[] GroupFiles = ["memory.cu", "elementwise.cu", "layout.cu", "norm.cu", "attention.cu", "conditioning.cu", "objective.cu", "quant.cu"];

    [Fact]
    public void EveryKernelFileIsEmbeddedUnderItsGroupsName()
    {
        var files = KernelCompiler.KernelFiles();
        Assert.All(GroupFiles, f => Assert.Contains(f, files));
        Assert.All(files, f => Assert.True(GroupFiles.Contains(f) || f == "gemm.cu", $"{f} is not named by an op group"));
        Assert.Contains("attention.cuh", KernelCompiler.ReadSource("attention.cu"));
        Assert.NotEmpty(KernelCompiler.ReadSource(KernelCompiler.CommonHeader));
        // Every kernel file opens with its contract: a comment naming the file.
        foreach (string f in files.Concat(KernelCompiler.DevKernelFiles()))
            Assert.StartsWith($"// {Path.GetFileName(f)}: ", KernelCompiler.ReadSource(f));
    }

    [Fact]
    public void ThePlaygroundIsEmbeddedApartFromTheEngine()
    {
        var dev = KernelCompiler.DevKernelFiles();
        Assert.Contains("dev/attention/02_mma_forward.cu", dev);
        Assert.Contains("dev/attention/02_mma_backward.cu", dev);
        Assert.Contains("dev/gemm/02_grouped.cu", dev);
        Assert.All(dev, f => Assert.StartsWith("dev/", f));
        Assert.DoesNotContain(KernelCompiler.KernelFiles(), f => f.Contains('/'));
        // The engine holds only version 1 of attention: the tensor-core kernels live in the playground.
        Assert.DoesNotContain("_mma", KernelCompiler.ReadSource("attention.cu"));
        Assert.Contains("attention_forward_mma", KernelCompiler.ReadSource("dev/attention/02_mma_forward.cu"));
        // The grouped GEMM is version 2 of the Gemm group: not in the engine's gemm.cu yet.
        Assert.DoesNotContain("gemm_grouped", KernelCompiler.ReadSource("gemm.cu"));
        Assert.Contains("extern \"C\" __global__ void __launch_bounds__(GG_THREADS) gemm_grouped", KernelCompiler.ReadSource("dev/gemm/02_grouped.cu"));
    }

    [SkippableTheory]
    [MemberData(nameof(Files))]
    public void CompilesForSm80AndSm90(string file)
    {
        bool missing = NvrtcMissing(out string reason);
        if (missing) output.WriteLine(reason);
        Skip.If(missing, reason);
        var compiler = new KernelCompiler(cacheDirectory: "");
        foreach (string arch in new[] { "sm_80", "sm_90" })
        {
            var r = compiler.Compile(file, arch);
            output.WriteLine($"{file} {arch}: {(r.Success ? $"{r.Image!.Length} bytes" : "FAILED")} in {r.CompileTime.TotalMilliseconds:F0} ms");
            Assert.True(r.Success, $"{file} for {arch}:\n{r.Log}");
            // The resource report (registers, shared, stack, spills) of every entry point the source declares.
            var resources = CubinResources.Read(r.Image!, $"{file} {arch}");
            foreach (var k in resources) output.WriteLine($"  {k}");
            foreach (string entry in EntryPoints(KernelCompiler.ReadSource(file)))
            {
                var k = Assert.Single(resources, x => x.Kernel == entry);
                Assert.InRange(k.Registers, 1, 255);
            }
        }
    }

    /// <summary>The names of the source's <c>extern "C" __global__</c> kernels (not those a macro pastes together).</summary>
    static IEnumerable<string> EntryPoints(string source) =>
        System.Text.RegularExpressions.Regex.Matches(source, @"extern ""C"" __global__ void (?:__launch_bounds__\([^)]*\) )?(?!__launch_bounds__)(\w+)\(")
            .Select(m => m.Groups[1].Value);

    [SkippableFact]
    public void TheResourceReportReadsTheCubin()
    {
        bool missing = NvrtcMissing(out string reason);
        if (missing) output.WriteLine(reason);
        Skip.If(missing, reason);
        var r = new KernelCompiler(cacheDirectory: "").Compile("dev/attention/03_pipelined_forward.cu", "sm_80");
        Assert.True(r.Success, r.Log);
        var k = Assert.Single(CubinResources.Read(r.Image!, "03"), x => x.Kernel == "attention_forward_pipelined");
        output.WriteLine(k.ToString());
        // its static shared memory: two stages of K and V tiles, 32 keys of SROW = 128 + 8 bf16 each
        Assert.Equal(2 * 2 * 32 * (128 + 8) * 2, k.SharedBytes);
        Assert.InRange(k.Registers, 32, 255);   // __launch_bounds__(256) allows at most 255
        var e = Assert.Throws<FormatException>(() => CubinResources.Read(new byte[100], "x.cubin"));
        Assert.Contains("x.cubin", e.Message);
        var truncated = r.Image![..200];
        Assert.Contains("x.cubin", Assert.Throws<FormatException>(() => CubinResources.Read(truncated, "x.cubin")).Message);
    }

    [SkippableFact]
    public void PtxForComputeArch()
    {
        bool missing = NvrtcMissing(out string reason);
        if (missing) output.WriteLine(reason);
        Skip.If(missing, reason);
        var r = new KernelCompiler(cacheDirectory: "").Compile("memory.cu", "compute_80");
        Assert.True(r.Success, r.Log);
        string ptx = System.Text.Encoding.ASCII.GetString(r.Image!);
        Assert.Contains(".entry fill_kernel", ptx);
    }

    [SkippableFact]
    public void BuildAllWritesEveryImage()
    {
        bool missing = NvrtcMissing(out string reason);
        if (missing) output.WriteLine(reason);
        Skip.If(missing, reason);
        string dir = Path.Combine(Path.GetTempPath(), "metalora-kernels-" + Guid.NewGuid().ToString("N"));
        try
        {
            var results = KernelCompiler.BuildAll("sm_90", dir, dev: true);
            foreach (var r in results)
                output.WriteLine($"{r.File}: {(r.Success ? $"{r.Image!.Length} bytes" : "FAILED\n" + r.Log)} in {r.CompileTime.TotalMilliseconds:F0} ms");
            Assert.All(results, r => Assert.True(r.Success, r.Log));
            Assert.Equal(KernelCompiler.KernelFiles().Count + KernelCompiler.DevKernelFiles().Count, Directory.GetFiles(dir, "*.sm_90.cubin").Length);
            Assert.True(File.Exists(Path.Combine(dir, "dev.attention.02_mma_backward.sm_90.cubin")));
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }

    [SkippableFact]
    public void KernelsBuildCommandExitsZero()
    {
        bool missing = NvrtcMissing(out string reason);
        if (missing) output.WriteLine(reason);
        Skip.If(missing, reason);
        string dir = Path.Combine(Path.GetTempPath(), "metalora-cmd-" + Guid.NewGuid().ToString("N"));
        try
        {
            var command = MetaLoraNative.Cli.Commands.KernelsCommand.Create();
            Assert.Equal(0, command.Parse(["build", "--arch", "sm_80", "--out", dir]).Invoke());
            Assert.Equal(KernelCompiler.KernelFiles().Count, Directory.GetFiles(dir, "*.sm_80.cubin").Length);
            Assert.Empty(Directory.GetFiles(dir, "dev.*"));   // the playground only with --dev
            Assert.Equal(0, command.Parse(["build", "--arch", "sm_80", "--dev", "--out", dir]).Invoke());
            Assert.Equal(KernelCompiler.DevKernelFiles().Count, Directory.GetFiles(dir, "dev.*.sm_80.cubin").Length);
            Assert.NotEqual(0, command.Parse(["build", "--arch", "volta"]).Invoke());
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }

    [SkippableFact]
    public void DiskCacheIsKeyedAndReused()
    {
        bool missing = NvrtcMissing(out string reason);
        if (missing) output.WriteLine(reason);
        Skip.If(missing, reason);
        string dir = Path.Combine(Path.GetTempPath(), "metalora-cache-" + Guid.NewGuid().ToString("N"));
        try
        {
            var compiler = new KernelCompiler(dir);
            var first = compiler.Compile("memory.cu", "sm_80");
            var second = compiler.Compile("memory.cu", "sm_80");
            var other = compiler.Compile("memory.cu", "sm_90");
            Assert.False(first.FromCache);
            Assert.True(second.FromCache);
            Assert.False(other.FromCache);
            Assert.Equal(first.Image, second.Image);
            Assert.Equal(2, Directory.GetFiles(dir).Length);
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }

    [Fact]
    public void ArchNamesAreNormalised()
    {
        Assert.Equal("sm_80", KernelCompiler.NormalizeArch("80"));
        Assert.Equal("sm_90a", KernelCompiler.NormalizeArch("SM90a"));
        Assert.Equal("compute_90", KernelCompiler.NormalizeArch("compute_90"));
        Assert.Throws<InputException>(() => KernelCompiler.NormalizeArch("hopper"));
        // sm_90a only where a file needs arch-specific instructions, the device is 9.0 and NVRTC is 12 or newer
        Assert.Equal("sm_90a", KernelCompiler.ArchFor(9, 0, 12, needsArchSpecific: true));
        Assert.Equal("sm_90", KernelCompiler.ArchFor(9, 0, 12));
        Assert.Equal("sm_90", KernelCompiler.ArchFor(9, 0, 11, needsArchSpecific: true));
        Assert.Equal("sm_86", KernelCompiler.ArchFor(8, 6, 13, needsArchSpecific: true));
        Assert.Equal("sm_100", KernelCompiler.ArchFor(10, 0, 13, needsArchSpecific: true));
        Assert.Equal("compute_90", KernelCompiler.PtxArch(9, 0));
        // no kernel of today's needs sm_90a: every file loads as plain sm_90 on an H100
        foreach (string f in KernelCompiler.KernelFiles().Concat(KernelCompiler.DevKernelFiles()))
        {
            Assert.False(KernelCompiler.NeedsArchSpecific(f), f);
            Assert.Equal("sm_90", KernelCompiler.DeviceArch(f, 9, 0, 13));
        }
    }

    /// <summary>The C# mirrors of the kernels' parameter structs have the sizes the .cu files static_assert.</summary>
    [Fact]
    public void ParamStructLayoutsMatchTheKernels() => CudaBackend.CheckParamLayouts();

    [Fact]
    public void ProbeNeverThrows()
    {
        var lines = CudaProbe.Report();
        foreach (string line in lines) output.WriteLine(line);
        Assert.NotEmpty(lines);
    }
}
