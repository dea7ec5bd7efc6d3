using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Tests.Testing;
using Xunit.Abstractions;
using static MetaLoraNative.Tests.Cli.CliRunner;

namespace MetaLoraNative.Tests.Errors;

/// <summary>
/// Hostile files through the CLI entry point, in process: every mutant of <see cref="SafetensorsMutator.Any"/> (byte,
/// JSON and crafted families) given to each command that reads such a file must end in exit 0 (still a usable file)
/// or exit 2 with exactly one `error: ` line naming the file; an internal error, a stack trace, another exit code or
/// no answer within <see cref="CaseTimeout"/> fails the case. Sample sizes keep the corpus near 30 s on 2 cores:
/// 1,200 LoRA mutants (400 each PEFT, kohya, Meta) through `lora info`, 1,000 checkpoint mutants (micro preset) through
/// `lora info --base`, and 120 each through `lora convert`, `lora bake`, `train stage2 --down` and `train stage2 --state`.
/// </summary>
[Collection("console")]
public sealed class CliCorpusTests(ITestOutputHelper output) : TempFolderTest("corpus")
{
    static readonly TimeSpan CaseTimeout = TimeSpan.FromSeconds(20);

    sealed record Tally(string Reader)
    {
        public int Cases, Accepted, ClearErrors;
        public List<string> Failures { get; } = [];
    }

    async Task<Tally> Corpus(string reader, string basePath, int cases, int firstIndex, Func<string, string[]> command)
    {
        var mutator = SafetensorsMutator.FromFile(basePath);
        var tally = new Tally(reader);
        // The unmutated file must be accepted, or every rejection below would be meaningless.
        var clean = Run(command(basePath));
        Assert.True(clean.Code == 0, $"{reader}: the clean file fails: {clean.Err}");
        for (int i = firstIndex; i < firstIndex + cases; i++)
        {
            var (kind, bytes) = mutator.Any(i);
            string path = Path.Combine(dir, $"{reader.Replace(' ', '-')}-{i}.safetensors");
            File.WriteAllBytes(path, bytes);
            tally.Cases++;
            var run = Task.Run(() => Run(command(path)));
            (int Code, string Out, string Err) r;
            try { r = await run.WaitAsync(CaseTimeout); }
            catch (TimeoutException) { tally.Failures.Add($"case {i} ({kind}): hang, no exit within {CaseTimeout.TotalSeconds} s"); continue; }
            var lines = r.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            if (r.Code == 0 && lines.Length == 0) tally.Accepted++;
            else if (r.Code == 2 && lines.Length == 1 && lines[0].StartsWith("error: ", StringComparison.Ordinal)
                     && !lines[0].Contains("internal error", StringComparison.Ordinal) && lines[0].Contains(path, StringComparison.Ordinal))
                tally.ClearErrors++;
            else tally.Failures.Add($"case {i} ({kind}): exit {r.Code}: {r.Err}");
            File.Delete(path);
        }
        output.WriteLine($"{reader,-22} cases {tally.Cases,5}  clear errors {tally.ClearErrors,5}  accepted {tally.Accepted,5}  " +
                         $"crashes {tally.Failures.Count(f => !f.Contains("hang"))}  hangs {tally.Failures.Count(f => f.Contains("hang"))}");
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
            await Corpus("lora info peft", peft, 400, 0, p => ["lora", "info", "--in", p, "--base", "tiny"]),
            await Corpus("lora info kohya", kohya, 400, 400, p => ["lora", "info", "--in", p, "--base", "tiny"]),
            await Corpus("lora info meta", meta, 400, 800, p => ["lora", "info", "--in", p, "--base", "tiny"]),
            await Corpus("checkpoint (--base)", checkpoint, 1000, 0, p => ["lora", "info", "--in", microLora, "--base", p]),
            await Corpus("lora convert", meta, 120, 1200, p => ["lora", "convert", "--in", p, "--base", "tiny", "--out", outFile]),
            await Corpus("lora bake", microLora, 120, 1320, p => ["lora", "bake", "--model", "random:micro:1", "--lora", p, "--out", outFile]));
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
            ["train", "stage2", "--model", "random:micro:1", "--data", person, "--down", d, "--out", outFile, "--iterations", "1", "--state", s];
        var first = Run(Stage2(down, state));
        Assert.True(first.Code == 0, first.Err);
        string cleanState = Path.Combine(dir, "clean.state.safetensors");
        File.Copy(state, cleanState);
        NoFailures(
            await Corpus("train stage2 --down", down, 120, 0, p => Stage2(p, Path.Combine(dir, "fresh-" + Path.GetFileName(p)))),
            await Corpus("train stage2 --state", cleanState, 120, 120, p => Stage2(down, p)));
    }
}
