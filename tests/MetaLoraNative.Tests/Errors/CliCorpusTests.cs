using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Tests.Testing;
using Xunit.Abstractions;
using static MetaLoraNative.Tests.Cli.CliRunner;

namespace MetaLoraNative.Tests.Errors;

/// <summary>
/// Hostile files through the CLI entry point, in process: every mutant given to a command that reads such a file must
/// end in exit 0 (still a usable file) or exit 2 with exactly one `error: ` line naming the file; an internal error, a
/// stack trace, another exit code or no answer within <see cref="CaseTimeout"/> fails the case. Each corpus prints
/// one line per mutant family (cases, clear errors, accepted, crashes, hangs). Sample sizes keep each test near 30-60 s
/// on 2 cores: 1,300 LoRA mutants (PEFT, kohya, Meta) through `lora info`, 1,000 checkpoint mutants (micro preset)
/// through `lora info --base`, 130 each through `lora convert` and `lora bake` (<see cref="SafetensorsMutator.Any"/>,
/// the data-coverage family included); and per family of <see cref="SafetensorsMutator.Families"/>, 1,008 mutants
/// each of the Meta-Down (`train stage2 --down`) and the training state (`train stage2 --state`), and the
/// coverage and byte-flip families of a cached example (`train stage2 --data`).
/// </summary>
[Collection("console")]
public sealed class CliCorpusTests(ITestOutputHelper output) : TempFolderTest("corpus")
{
    static readonly TimeSpan CaseTimeout = TimeSpan.FromSeconds(20);

    sealed class Counts
    {
        public int Cases, Accepted, ClearErrors, Crashes, Hangs;
    }

    sealed record Tally(string Reader)
    {
        public SortedDictionary<string, Counts> Families { get; } = new(StringComparer.Ordinal);
        public List<string> Failures { get; } = [];
        public int Cases => Families.Values.Sum(c => c.Cases);
        public int ClearErrors => Families.Values.Sum(c => c.ClearErrors);
    }

    /// <summary>Mutants <paramref name="first"/> .. first + n − 1 of <see cref="SafetensorsMutator.Any"/>.</summary>
    static Func<SafetensorsMutator, IEnumerable<(int Index, string Kind, byte[] Bytes)>> Mixed(int first, int n) =>
        m => Enumerable.Range(first, n).Select(i => { var (kind, bytes) = m.Any(i); return (i, kind, bytes); });

    /// <summary><paramref name="perFamily"/> mutants of each family of <see cref="SafetensorsMutator.Family"/>.</summary>
    static Func<SafetensorsMutator, IEnumerable<(int Index, string Kind, byte[] Bytes)>> ByFamily(int perFamily, params string[] families) =>
        m => families.SelectMany((family, f) => Enumerable.Range(0, perFamily).Select(i => (f * perFamily + i, family, m.Family(family, i))));

    async Task<Tally> Corpus(string reader, string basePath, Func<SafetensorsMutator, IEnumerable<(int Index, string Kind, byte[] Bytes)>> mutants,
                             Func<string, string[]> command, bool inPlace = false)
    {
        var mutator = SafetensorsMutator.FromFile(basePath);
        var tally = new Tally(reader);
        // The unmutated file must be accepted, or every rejection below would be meaningless.
        var clean = Run(command(basePath));
        Assert.True(clean.Code == 0, $"{reader}: the clean file fails: {clean.Err}");
        // A mutant goes to a file of its own, or (inPlace: a file found by its folder, as a dataset's examples are) over the base file.
        byte[] original = File.ReadAllBytes(basePath);
        foreach (var (i, kind, bytes) in mutants(mutator))
        {
            string path = inPlace ? basePath : Path.Combine(dir, $"{reader.Replace(' ', '-')}-{i}.safetensors");
            File.WriteAllBytes(path, bytes);
            var counts = tally.Families.TryGetValue(kind, out var c) ? c : tally.Families[kind] = new Counts();
            counts.Cases++;
            var run = Task.Run(() => Run(command(path)));
            (int Code, string Out, string Err) r;
            try { r = await run.WaitAsync(CaseTimeout); }
            catch (TimeoutException)
            {
                counts.Hangs++;
                tally.Failures.Add($"case {i} ({kind}): hang, no exit within {CaseTimeout.TotalSeconds} s");
                break;                                  // the hung run still holds the console and the files
            }
            var lines = r.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            if (r.Code == 0 && lines.Length == 0) counts.Accepted++;
            else if (r.Code == 2 && lines.Length == 1 && lines[0].StartsWith("error: ", StringComparison.Ordinal)
                     && !lines[0].Contains("internal error", StringComparison.Ordinal) && lines[0].Contains(path, StringComparison.Ordinal))
                counts.ClearErrors++;
            else
            {
                counts.Crashes++;
                tally.Failures.Add($"case {i} ({kind}): exit {r.Code}: {r.Err}");
            }
            if (inPlace) File.WriteAllBytes(path, original);
            else File.Delete(path);
        }
        foreach (var (family, n) in tally.Families)
            output.WriteLine($"{reader,-22} {family,-26} cases {n.Cases,5}  clear errors {n.ClearErrors,5}  accepted {n.Accepted,5}  crashes {n.Crashes}  hangs {n.Hangs}");
        output.WriteLine($"{reader,-22} {"all",-26} cases {tally.Cases,5}  clear errors {tally.ClearErrors,5}  accepted {tally.Families.Values.Sum(c => c.Accepted),5}  " +
                         $"crashes {tally.Families.Values.Sum(c => c.Crashes)}  hangs {tally.Families.Values.Sum(c => c.Hangs)}");
        return tally;
    }

    static void NoFailures(params Tally[] tallies)
    {
        var failures = tallies.SelectMany(t => t.Failures.Take(20).Select(f => $"{t.Reader}: {f}")).ToList();
        Assert.True(failures.Count == 0, string.Join("\n", failures));
        foreach (var t in tallies) Assert.True(t.ClearErrors > t.Cases / 4, $"{t.Reader}: only {t.ClearErrors} of {t.Cases} mutants were refused; the mutator misses the reader");
    }

    string Lora(string name, LoraFormat format, FluxConfig config, bool stage1 = false)
    {
        string path = Path.Combine(dir, name);
        using var be = CpuBackend.F32();
        using var a = LoraAdapter.Random(be, config, LoraMode.Meta, 2, 1, 1, 3);
        if (format == LoraFormat.Meta) LoraFiles.SaveMeta(a, stage1 ? null : 0, path);
        else LoraFiles.Export(a, 0, path, format, SafetensorsDType.F32);
        return path;
    }

    [Fact]
    public async Task LoraFilesAndCheckpointsGiveExitZeroOrOneClearLine()
    {
        string peft = Lora("peft.safetensors", LoraFormat.Peft, FluxConfig.Tiny), kohya = Lora("kohya.safetensors", LoraFormat.Kohya, FluxConfig.Tiny);
        string meta = Lora("meta.safetensors", LoraFormat.Meta, FluxConfig.Tiny);
        string microLora = Lora("micro.safetensors", LoraFormat.Peft, FluxConfig.Preset("micro"));
        string checkpoint = Path.Combine(dir, "micro-model.safetensors");
        using (var be = CpuBackend.F32())
        using (var w = FluxLoader.Load("random:micro:1", be))
            FluxLoader.Save(w, checkpoint, SafetensorsDType.F32);
        string outFile = Path.Combine(dir, "out.safetensors");
        NoFailures(
            await Corpus("lora info peft", peft, Mixed(0, 433), p => ["lora", "info", "--in", p, "--base", "tiny"]),
            await Corpus("lora info kohya", kohya, Mixed(433, 433), p => ["lora", "info", "--in", p, "--base", "tiny"]),
            await Corpus("lora info meta", meta, Mixed(866, 434), p => ["lora", "info", "--in", p, "--base", "tiny"]),
            await Corpus("checkpoint (--base)", checkpoint, Mixed(0, 1000), p => ["lora", "info", "--in", microLora, "--base", p]),
            await Corpus("lora convert", meta, Mixed(1300, 130), p => ["lora", "convert", "--in", p, "--base", "tiny", "--out", outFile]),
            await Corpus("lora bake", microLora, Mixed(1430, 130), p => ["lora", "bake", "--model", "random:micro:1", "--lora", p, "--out", outFile]));
    }

    [Fact]
    public async Task TrainingInputsGiveExitZeroOrOneClearLine()
    {
        string data = Path.Combine(dir, "ids");
        Assert.Equal(0, Run("data", "synth", "--out", data, "--identities", "1", "--images", "1", "--preset", "micro").Code);
        string person = Path.Combine(data, "person000");
        string down = Lora("down.safetensors", LoraFormat.Meta, FluxConfig.Preset("micro"), stage1: true);
        string outFile = Path.Combine(dir, "me.safetensors"), state = Path.Combine(dir, "me.state.safetensors");
        string[] Stage2(string d, string s) =>
            ["train", "stage2", "--model", "random:micro:1", "--device", "cpu", "--data", person, "--down", d, "--out", outFile, "--iterations", "1", "--state", s];
        var first = Run(Stage2(down, state));
        Assert.True(first.Code == 0, first.Err);
        string cleanState = Path.Combine(dir, "clean.state.safetensors");
        File.Copy(state, cleanState);
        // 84 of each of the 12 families: 1,008 mutants per reader
        var all = ByFamily(84, SafetensorsMutator.Families);
        string example = Directory.GetFiles(person, "*.safetensors").Single(), dataState = Path.Combine(dir, "data.state.safetensors");
        NoFailures(
            await Corpus("train stage2 --down", down, all, p => Stage2(p, Path.Combine(dir, "fresh-" + Path.GetFileName(p)))),
            await Corpus("train stage2 --state", cleanState, all, p => Stage2(down, p)),
            await Corpus("train stage2 --data", example, ByFamily(84, "data coverage", "byte flips"), _ =>
            {
                File.Delete(dataState);                  // each mutant starts a fresh run
                return Stage2(down, dataState);
            }, inPlace: true));
    }
}
