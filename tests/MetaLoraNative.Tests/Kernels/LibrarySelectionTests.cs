using MetaLoraNative.Kernels.Native;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Kernels;

/// <summary>
/// Which NVRTC and cuBLASLt the engine loads for a driver (LibrarySelection, a pure function: no GPU needed), the
/// version read from library file names, and the search on this machine.
/// </summary>
public class LibrarySelectionTests(ITestOutputHelper output)
{
    static FoundLibrary F(string path, bool loader = false)
    {
        var (major, minor) = FoundLibrary.ParseVersion(path);
        return new FoundLibrary(path, major, minor, loader);
    }

    static readonly FoundLibrary Nvrtc13 = F("/usr/local/cuda-13.0/lib64/libnvrtc.so.13.0.48");
    static readonly FoundLibrary Nvrtc12 = F("/opt/py/site-packages/nvidia/cuda_nvrtc/lib/libnvrtc.so.12.4.127");
    static readonly FoundLibrary Nvrtc11 = F("/usr/lib/x86_64-linux-gnu/libnvrtc.so.11.8.89");

    [Theory]
    [InlineData("libnvrtc.so.11.8.89", 11, 8)]
    [InlineData("/x/libnvrtc.so.11.2", 11, 2)]
    [InlineData("libcublasLt.so.13", 13, -1)]
    [InlineData("libcublasLt.so.12.8.4.1", 12, 8)]
    [InlineData("libnvrtc.so", -1, -1)]
    [InlineData("nvrtc64_120_0.dll", 12, 0)]
    [InlineData("cublasLt64_12.dll", 12, -1)]
    [InlineData("libnvToolsExt.so.1", 1, -1)]
    public void VersionsComeFromTheFileName(string file, int major, int minor) =>
        Assert.Equal((major, minor), FoundLibrary.ParseVersion(file));

    [Fact]
    public void TheNewestMajorTheDriverSupportsWins()
    {
        var found = new[] { Nvrtc11, Nvrtc12, Nvrtc13 };
        var c13 = LibrarySelection.Choose("NVRTC", 13000, found);
        Assert.Same(Nvrtc13, c13.Preferred);
        Assert.True(c13.Matches);
        Assert.Contains("CUDA 13.0", c13.Message);

        var c128 = LibrarySelection.Choose("NVRTC", 12080, found);   // a CUDA 12.8 driver cannot run NVRTC 13's output
        Assert.Same(Nvrtc12, c128.Preferred);
        Assert.True(c128.Matches);
        Assert.Equal([Nvrtc12, Nvrtc11, Nvrtc13], c128.Order);       // the too-new one only as the last resort
        Assert.Contains("NVRTC 12.4", c128.Message);

        var c118 = LibrarySelection.Choose("NVRTC", 11080, found);
        Assert.Same(Nvrtc11, c118.Preferred);
        Assert.Equal([Nvrtc11, Nvrtc12, Nvrtc13], c118.Order);       // then the closest newer major
    }

    [Fact]
    public void ALibraryNewerThanTheDriverIsAPlainMismatch()
    {
        var blas13 = F("/usr/local/cuda/lib64/libcublasLt.so.13.0.0.19");
        var c = LibrarySelection.Choose("cuBLASLt", 12040, [blas13]);
        Assert.Same(blas13, c.Preferred);
        Assert.False(c.Matches);
        output.WriteLine(c.Message);
        Assert.Contains("NEWER than the driver's CUDA 12.4", c.Message);
        Assert.Contains("nvidia-cublas-cu12", c.Message);
        Assert.Contains(blas13.Path, c.Message);
    }

    [Fact]
    public void WithoutADriverTheNewestWinsAndNothingMismatches()
    {
        var c = LibrarySelection.Choose("NVRTC", null, [Nvrtc11, Nvrtc13, Nvrtc12]);
        Assert.Same(Nvrtc13, c.Preferred);
        Assert.True(c.Matches);
        Assert.Contains("no driver", c.Message);
    }

    [Fact]
    public void FilesOnDiskComeBeforeNamesLeftToTheLoader()
    {
        var loader13 = F("libnvrtc.so.13", loader: true);
        var loader12 = F("libnvrtc.so.12", loader: true);
        var c = LibrarySelection.Choose("NVRTC", 13000, [loader13, loader12, Nvrtc12]);
        Assert.Equal([Nvrtc12, loader13, loader12], c.Order);
        // with nothing on disk the loader's names are tried, newest supported first
        var onlyLoader = LibrarySelection.Choose("NVRTC", 12000, [loader13, loader12]);
        Assert.Equal([loader12, loader13], onlyLoader.Order);
        Assert.Contains("via the loader's search path", onlyLoader.Message);
        Assert.Contains("not found", LibrarySelection.Choose("NVRTC", 12000, []).Message);
    }

    [Fact]
    public void AnUnversionedLibraryCannotBeMatched()
    {
        var plain = F("/opt/lib/libnvrtc.so");
        var c = LibrarySelection.Choose("NVRTC", 12000, [plain]);
        Assert.False(c.Matches);
        Assert.Contains("unknown version", c.Message);
        Assert.Same(Nvrtc12, LibrarySelection.Choose("NVRTC", 12000, [plain, Nvrtc12]).Preferred);
    }

    /// <summary>On this machine: whatever NVRTC is installed is found as a file with its real version (Debian's 11.8 on CI).</summary>
    [SkippableFact]
    public void TheSearchFindsThisMachinesNvrtc()
    {
        var found = NativeLibraries.Find(NativeLibraries.Nvrtc);
        foreach (var f in found) output.WriteLine($"{f.Path} {f.Version}{(f.FromLoader ? " (loader)" : "")}");
        var files = found.Where(f => !f.FromLoader).ToArray();
        Skip.If(files.Length == 0, "no NVRTC file on this machine (.ci/install-nvrtc.sh installs one)");
        Assert.All(files, f => Assert.True(File.Exists(f.Path), f.Path));
        Assert.All(files, f => Assert.True(f.Major >= 11, $"{f.Path}: version {f.Version}"));
        Assert.Contains(found, f => f.FromLoader && f.Path == "libnvrtc.so.13");   // the loader's names come last
        string? loaded = NativeLibraries.LoadedPath(NativeLibraries.Nvrtc);
        output.WriteLine($"loaded: {loaded}; {NativeLibraries.Selection(NativeLibraries.Nvrtc).Message}");
        Assert.NotNull(loaded);
    }
}
