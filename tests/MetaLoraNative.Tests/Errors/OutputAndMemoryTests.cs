using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Planning;
using MetaLoraNative.Tests.Testing;
using static MetaLoraNative.Tests.Cli.CliRunner;

namespace MetaLoraNative.Tests.Errors;

/// <summary>
/// Refused before any work: outputs that cannot be written (the probe write of <see cref="OutputPath"/>) and CPU runs
/// whose model will not fit in RAM (<see cref="HostMemory"/>); write failures name the user's path, not a temporary one.
/// </summary>
[Collection("console")]
public sealed class OutputAndMemoryTests() : TempFolderTest("outputs")
{
    /// <summary><see cref="ErrorLineTests.OneClearLine"/> naming <paramref name="subject"/>, and every one of <paramref name="words"/>.</summary>
    static void OneLine(int code, (int Code, string Out, string Err) run, string subject, params string[] words)
    {
        ErrorLineTests.OneClearLine(code, run, subject);
        foreach (var w in words) Assert.Contains(w, run.Err);
    }

    /// <summary>A path whose folder can never be made: it runs through a regular file.</summary>
    string ThroughAFile(string rest)
    {
        string file = Path.Combine(dir, "plain.txt");
        File.WriteAllText(file, "x");
        return Path.Combine(file, rest);
    }

    [Fact]
    public void ProbeAcceptsWritableAndMissingFoldersAndLeavesNothing()
    {
        OutputPath.CheckFile(Path.Combine(dir, "a.safetensors"), "--out");
        OutputPath.CheckFile(Path.Combine(dir, "new", "deeper", "a.safetensors"), "--out");
        OutputPath.CheckFolder(Path.Combine(dir, "crops"), "--out");
        OutputPath.CheckFile(null, "--json");
        Assert.Empty(Directory.GetFileSystemEntries(dir));      // no probe file left, no folder made
    }

    [Fact]
    public void ProbeRefusesPathsThatCannotBeWritten()
    {
        string through = ThroughAFile("sub/out.safetensors");
        var e = Assert.Throws<InputException>(() => OutputPath.CheckFile(through, "--out"));
        Assert.Equal("--out", e.Subject);
        Assert.Contains(through, e.Message);
        Assert.Contains("is a file", e.Message);

        var folder = Assert.Throws<InputException>(() => OutputPath.CheckFile(dir, "--out"));
        Assert.Contains("is a folder", folder.Message);
        var file = Assert.Throws<InputException>(() => OutputPath.CheckFolder(Path.Combine(dir, "plain.txt"), "--out"));
        Assert.Contains("is a file, not a folder", file.Message);

        // /proc takes no new files, not even from root: a real probe write fails there
        Skip.IfNot(Directory.Exists("/proc/self"), "no /proc");
        var proc = Assert.Throws<InputException>(() => OutputPath.CheckFile("/proc/metalora-out.safetensors", "--out"));
        Assert.Contains("cannot write in its folder '/proc': a test file could not be created", proc.Message);
        Assert.DoesNotContain(".metalora-probe", proc.Message);
    }

    public static TheoryData<string[], string> Writers() => new()
    {
        { ["train", "stage2", "--model", "random:micro:1", "--data", "DATA", "--down", "DOWN", "--out", "BAD/me.safetensors"], "--out" },
        { ["train", "stage2", "--model", "random:micro:1", "--data", "DATA", "--down", "DOWN", "--out", "OK/me.safetensors", "--state", "BAD/s.safetensors"], "--state" },
        { ["train", "stage1", "--model", "random:micro:1", "--data", "DATA", "--out", "BAD/d.safetensors"], "--out" },
        { ["train", "lora", "--model", "random:micro:1", "--data", "DATA", "--out", "BAD/l.safetensors"], "--out" },
        { ["personalize", "photo.jpg", "--model", "random:micro:1", "--standard", "--out", "BAD/p.safetensors"], "--out" },
        { ["generate", "--model", "random:micro:1", "--prompt", "a", "--out", "BAD/i.png"], "--out" },
        { ["augment", "photo.jpg", "--out", "BAD/crops"], "--out" },
        { ["data", "synth", "--out", "BAD/ids"], "--out" },
        { ["prepare", "photo.jpg", "--prompt", "a photo of sks woman", "--out", "BAD/set"], "--out" },
        { ["lora", "convert", "--in", "DOWN", "--out", "BAD/c.safetensors"], "--out" },
        { ["lora", "bake", "--model", "random:micro:1", "--lora", "DOWN", "--out", "BAD/b.safetensors"], "--out" },
        { ["score", "--identities", "DATA", "--generated", "DATA", "--out", "BAD/scores"], "--out" },
        { ["bench", "--device", "cpu", "--preset", "micro", "--json", "BAD/b.json"], "--json" },
        { ["config", "init", "train", "stage2", "--out", "BAD/c.yaml"], "--out" },
        { ["debug", "step", "--model", "random:micro:1", "--inputs", "DATA", "--lora", "DOWN", "--out", "BAD/d.safetensors"], "--out" },
        { ["demo", "--out", "BAD/demo"], "--out" },
    };

    [Theory]
    [MemberData(nameof(Writers))]
    public void EveryWriterRefusesAnUnwritableOutputBeforeAnyWork(string[] args, string flag)
    {
        string bad = ThroughAFile("x");
        string ok = Path.Combine(dir, "ok");
        var run = Run([.. args.Select(a => a.Replace("BAD", bad, StringComparison.Ordinal).Replace("OK", ok, StringComparison.Ordinal)
                                          .Replace("DATA", Path.Combine(dir, "none"), StringComparison.Ordinal)
                                          .Replace("DOWN", Path.Combine(dir, "none.safetensors"), StringComparison.Ordinal))]);
        OneLine(2, run, $"{flag}: {bad}", "is a file");
        Assert.Equal(["plain.txt"], Directory.GetFileSystemEntries(dir).Select(Path.GetFileName));
    }

    [Fact]
    public void AFailedAtomicWriteNamesTheDestinationNotTheTemporaryFile()
    {
        string missing = Path.Combine(dir, "no-such-folder", "out.safetensors");
        var e = Assert.Throws<InputException>(() => AtomicFile.WriteAllText(missing, "x"));
        Assert.Equal(missing, e.Subject);
        Assert.Contains(missing, e.Message);
        Assert.DoesNotContain(".tmp-", e.Message);

        // a full disk: the file system's error names the temporary file it was writing
        string target = Path.Combine(dir, "out.safetensors");
        var full = Assert.Throws<RuntimeFailure>(() => AtomicFile.Write(target, s => throw new IOException($"No space left on device : '{((FileStream)s).Name}'")));
        Assert.Equal(target, full.Subject);
        Assert.Contains($"No space left on device : '{target}'", full.Message);
        Assert.DoesNotContain(".tmp-", full.Message);
        Assert.Empty(Directory.GetFileSystemEntries(dir));

        // the same for an output folder built aside
        string crops = Path.Combine(dir, "crops");
        var folder = Assert.Throws<RuntimeFailure>(() => AtomicFolder.Write(crops, f => throw new IOException($"Input/output error : '{Path.Combine(f, "crop_01.png")}'")));
        Assert.Contains($"'{Path.Combine(crops, "crop_01.png")}'", folder.Message);
        Assert.DoesNotContain(".partial-", folder.Message);
        Assert.Empty(Directory.GetFileSystemEntries(dir));

        // a reader's own error inside the write is not renamed
        Assert.Throws<FileNotFoundException>(() => AtomicFile.Write(target, _ => File.ReadAllBytes(Path.Combine(dir, "absent.bin"))));
    }

    [Fact]
    public void MemAvailableIsReadFromMeminfo()
    {
        string info = Path.Combine(dir, "meminfo");
        File.WriteAllLines(info, ["MemTotal:       24576000 kB", "MemFree:         1000 kB", "MemAvailable:   23068672 kB", "Buffers: 1 kB"]);
        Assert.Equal(23068672L * 1024, HostMemory.Available(info));
        File.WriteAllLines(info, ["MemTotal:       24576000 kB"]);
        Assert.Null(HostMemory.Available(info));
        Assert.Null(HostMemory.Available(Path.Combine(dir, "absent")));
    }

    [Fact]
    public void FluxDevOnTheCpuIsRefusedOn24GiBNamingASmallerPreset()
    {
        long gib24 = 24L << 30;
        var (weights, activations) = HostMemory.Need(FluxConfig.FluxDev, MemoryModel.CpuF32, 1024, 512, training: true);
        Assert.Equal(FluxConfig.FluxDev.ParameterCount() * 4, weights);     // fp32 weights, every tensor once
        Assert.True(activations > 0);
        var e = Assert.Throws<InputException>(() =>
            HostMemory.Check(FluxConfig.FluxDev, MemoryModel.CpuF32, 1024, 512, true, gib24, "--preset", p => $"--preset {p}"));
        Assert.Equal("--preset", e.Subject);
        Assert.Contains("flux-dev", e.Message);
        Assert.Contains("--preset tiny", e.Message);            // flux-schnell is as large as flux-dev; a tiny preset is the largest that fits
        Assert.Contains("--no-memory-check", e.Message);
        Assert.Contains(MemoryCapExceededException.FormatBytes(weights + activations), e.Message);

        // what fits passes, and forwards need less than training
        HostMemory.Check(FluxConfig.Tiny, MemoryModel.CpuF32, 1024, 512, true, gib24, "--model", p => p);
        var forward = HostMemory.Need(FluxConfig.FluxDev, MemoryModel.CpuF32, 1024, 512, training: false);
        Assert.Equal(weights, forward.Weights);
        Assert.True(forward.Activations < activations);
        // a budget below even the smallest preset names no preset, only a GPU
        var none = Assert.Throws<InputException>(() => HostMemory.Check(FluxConfig.Tiny, MemoryModel.CpuF32, 1024, 512, true, 1024, "--model", p => p));
        Assert.Contains("use a GPU (--device cuda)", none.Message);
    }

    [SkippableFact]
    public void BenchOfFluxDevOnTheCpuIsRefusedBeforeItBuildsTheModel()
    {
        var (w, a) = HostMemory.Need(FluxConfig.FluxDev, MemoryModel.CpuF32, 1024, 512, training: true);
        Skip.IfNot(HostMemory.Available() is long free && free < w + a, "this machine could hold flux-dev on the CPU");
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var run = Run("bench", "--device", "cpu", "--preset", "flux-dev", "--steps", "0");
        OneLine(2, run, "--preset", "flux-dev", "--preset tiny", "MemAvailable");
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(30), $"refusing took {clock.Elapsed}");
    }

    [Fact]
    public void NoMemoryCheckIsAcceptedByEveryCommand()
    {
        // the escape hatch is a root option: valid on any command, and a small model runs as before
        string data = Path.Combine(dir, "ids");
        var run = Run("data", "synth", "--out", data, "--identities", "1", "--images", "1", "--no-memory-check");
        Assert.True(run.Code == 0, run.Err);
        var bench = Run("bench", "--device", "cpu", "--preset", "micro", "--resolution", "512", "--txt", "8", "--steps", "0", "--no-memory-check");
        Assert.True(bench.Code == 0, bench.Err);
    }
}
