using CliErrors = MetaLoraNative.Cli.Errors;
using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Tests.Testing;
using MetaLoraNative.Tests.Cli;
using static MetaLoraNative.Tests.Cli.CliRunner;

namespace MetaLoraNative.Tests.Errors;

/// <summary>The root's one error path: bad flags, damaged LoRA keys and unexpected exceptions, each one stderr line.</summary>
[Collection("console")]
public sealed class ErrorLineTests() : TempFolderTest("errors")
{
    /// <summary>Exactly one stderr line, `error: ...`, that names <paramref name="subject"/>; no trace, no internal error.</summary>
    internal static void OneClearLine(int expectedCode, (int Code, string Out, string Err) run, string subject)
    {
        var lines = run.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(run.Code == expectedCode, $"exit {run.Code}, expected {expectedCode}: {run.Err}");
        Assert.True(lines.Length == 1, $"expected one stderr line, got {lines.Length}: {run.Err}");
        Assert.StartsWith("error: ", lines[0]);
        Assert.DoesNotContain("internal error", lines[0]);
        Assert.Contains(subject, lines[0]);
    }

    public static TheoryData<string[]> BadFlags() => new()
    {
        { ["train", "stage1", "--rank1", "-4"] }, { ["train", "stage1", "--rank1", "0"] }, { ["train", "stage1", "--rank2", "0"] },
        { ["train", "stage1", "--batch-size", "-1"] }, { ["train", "stage1", "--batch-size", "0"] }, { ["train", "stage1", "--bucket-iterations", "0"] },
        { ["train", "stage1", "--state-every", "0"] }, { ["train", "stage2", "--state-every", "0"] }, { ["train", "stage1", "--iterations", "0"] },
        { ["train", "stage2", "--iterations", "0"] }, { ["train", "stage2", "--iterations", "-1"] }, { ["train", "stage2", "--rank2", "-2"] },
        { ["train", "stage1", "--identities-per-bucket", "0"] }, { ["train", "stage1", "--warmup-iterations", "-1"] },
        { ["train", "stage2", "--lr", "0"] }, { ["train", "stage2", "--lr", "-1e-4"] }, { ["train", "stage2", "--lr", "NaN"] }, { ["train", "stage2", "--lr", "Infinity"] },
        { ["train", "stage1", "--weight-decay", "-1"] }, { ["train", "stage1", "--max-grad-norm", "NaN"] }, { ["train", "stage2", "--guidance", "NaN"] },
        { ["train", "stage2", "--guidance", "-Infinity"] }, { ["train", "stage1", "--include", "nosuchtarget"] }, { ["train", "stage1", "--exclude", "to_qq"] },
        { ["train", "stage1", "--rank1", "abc"] },
        { ["lora", "bake", "--strength", "NaN"] }, { ["generate", "--steps", "0"] }, { ["generate", "--width", "1000"] }, { ["generate", "--height", "0"] },
        { ["generate", "--guidance", "Infinity"] }, { ["generate", "--strength", "NaN"] }, { ["bench", "--steps", "-1"] }, { ["bench", "--warmup", "-1"] },
        { ["bench", "--txt", "0"] }, { ["bench", "--preset", "nosuchpreset"] }, { ["profile", "--steps", "0"] }, { ["demo", "--stage1-iterations", "0"] },
        { ["demo", "--stage2-iterations", "-3"] }, { ["data", "synth", "--identities", "0"] }, { ["data", "synth", "--images", "-1"] },
        { ["augment", "--max", "0"] }, { ["prepare", "--max", "0"] },
    };

    [Theory]
    [MemberData(nameof(BadFlags))]
    public void ABadFlagValueIsOneLineNamingTheFlagBeforeAnyWork(string[] args)
    {
        // Everything else the command needs is missing too; the bad value must still be the error reported, and
        // nothing may have been written (the parser stops before the action).
        string flag = args[^2];
        var run = Run(args);
        Assert.Equal(CliErrors.BadInput, run.Code);
        var lines = run.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Single(lines);
        Assert.StartsWith("error: ", lines[0]);
        Assert.Contains(flag, run.Err);
        Assert.Empty(Directory.EnumerateFileSystemEntries(dir));
    }

    [Theory]
    [InlineData("--rank1", "4", "--state-every", "2", "--bucket-iterations", "3")]
    public void GoodFlagValuesPassTheirChecks(params string[] values)
    {
        var run = Run(["train", "stage1", "--model", "random:micro:1", "--data", Path.Combine(dir, "absent"), "--out", Path.Combine(dir, "o.safetensors"), .. values]);
        OneClearLine(2, run, "absent");       // the flags passed; the missing data folder is what stops the run
    }

    /// <summary>Bad input found by a command itself (not by the parser): the project's InputException, one line naming the flag.</summary>
    public static TheoryData<string[], string> CommandChecks() => new()
    {
        { ["personalize", "photo.jpg", "--model", "random:micro:1", "--out", "OUT"], "--down" },
        { ["personalize", "photo.jpg", "--model", "random:micro:1", "--standard", "--down", "d.safetensors", "--out", "OUT"], "--standard" },
        { ["personalize", "photo.jpg", "--model", "random:micro:1", "--standard", "--snapshots", "0", "--iterations", "5", "--out", "OUT"], "--snapshots" },
        { ["personalize", "photo.jpg", "--model", "random:micro:1", "--standard", "--iterations", "0", "--out", "OUT"], "--iterations" },
        { ["augment", "photo.jpg", "--max", "0", "--out", "OUT"], "--max" },
        { ["score", "--out", "OUT"], "--identities" },
    };

    [Theory]
    [MemberData(nameof(CommandChecks))]
    public void ACommandsOwnCheckIsOneLineNamingTheFlag(string[] args, string flag)
    {
        string outPath = Path.Combine(dir, "out");
        OneClearLine(2, Run([.. args.Select(a => a == "OUT" ? outPath : a)]), $"error: {flag}: ");
        Assert.Empty(Directory.GetFileSystemEntries(dir));
    }

    [Fact]
    public void AnUnexpectedExceptionPrintsThePleaseReportLineAndWritesTheLog()
    {
        string logs = Path.Combine(dir, "logs");
        Environment.SetEnvironmentVariable("METALORA_LOG_DIR", logs);
        var err = new StringWriter();
        int code;
        Exception thrown;
        try { throw new InvalidCastException("a cast that cannot fail failed"); }
        catch (InvalidCastException e) { thrown = e; }
        try
        {
            using (ConsoleCapture.Begin(TextWriter.Null, err)) code = CliErrors.Report(thrown, verbose: false);
        }
        finally { Environment.SetEnvironmentVariable("METALORA_LOG_DIR", null); }
        Assert.Equal(CliErrors.Internal, code);
        var line = Assert.Single(err.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("error: internal error: InvalidCastException: a cast that cannot fail failed — please report, log: ", line);
        string log = line[(line.IndexOf("log: ", StringComparison.Ordinal) + 5)..].Trim();
        Assert.StartsWith(logs, log);
        string text = File.ReadAllText(log);
        Assert.Contains("InvalidCastException", text);
        Assert.Contains(nameof(AnUnexpectedExceptionPrintsThePleaseReportLineAndWritesTheLog), text);   // the stack trace
        Assert.DoesNotContain(" at ", line);
    }

    [Fact]
    public void RuntimeFailuresExitOneAndInputErrorsTwoWithTheirSubject()
    {
        foreach (var (e, code, subject) in new (Exception, int, string)[]
                 {
                     (new RuntimeFailure("step 12", "the device stopped answering"), CliErrors.Failure, "step 12"),
                     (new InputException("--data", "holds no identities"), CliErrors.BadInput, "--data"),
                     (new SafetensorsFormatException("/x/a.safetensors", "truncated"), CliErrors.BadInput, "/x/a.safetensors"),
                 })
        {
            var err = new StringWriter();
            using (ConsoleCapture.Begin(TextWriter.Null, err)) Assert.Equal(code, CliErrors.Report(e, verbose: false));
            var line = Assert.Single(err.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries));
            Assert.StartsWith($"error: {subject}: ", line);
            Assert.Equal(1, CountOf(line, subject));       // named once, not repeated by the message
        }
    }

    static int CountOf(string s, string part) => (s.Length - s.Replace(part, "", StringComparison.Ordinal).Length) / part.Length;

    [Fact]
    public void VerboseAddsTheTraceToTheSameLine()
    {
        string bad = Path.Combine(dir, "bad.safetensors");
        File.WriteAllBytes(bad, [1, 2, 3]);
        var quiet = Run("lora", "info", "--in", bad, "--base", "tiny");
        var loud = Run("lora", "info", "--in", bad, "--base", "tiny", "--verbose");
        OneClearLine(2, quiet, bad);
        Assert.Equal(2, loud.Code);
        Assert.StartsWith(quiet.Err.Trim(), loud.Err);
        Assert.Contains(" at MetaLoraNative.", loud.Err);
    }

    // --- LoRA key validation: every damage kind is an error naming the file and the key ---

    string WriteLora(LoraFormat format, Func<List<SafetensorsTensor>, List<SafetensorsTensor>> damage, bool stage1 = false)
    {
        string clean = Path.Combine(dir, $"clean-{format}-{stage1}.safetensors"), bad = Path.Combine(dir, $"bad-{format}-{stage1}.safetensors");
        using (var be = CpuBackend.F32())
        using (var a = LoraAdapter.Random(be, FluxConfig.Tiny, LoraMode.Meta, 4, 2, 1, 5))
        {
            if (format == LoraFormat.Meta) LoraFiles.SaveMeta(a, stage1 ? null : 0, clean);
            else LoraFiles.Export(a, 0, clean, format, SafetensorsDType.F32);
        }
        using (var f = SafetensorsFile.Open(clean))
        {
            var tensors = f.Entries.Keys.Order(StringComparer.Ordinal).Select(k => new SafetensorsTensor(k, f[k].Shape, f.ReadFloats(k))).ToList();
            SafetensorsWriter.Write(bad, damage(tensors), f.Metadata.ToDictionary());
        }
        return bad;
    }

    static List<SafetensorsTensor> Rename(List<SafetensorsTensor> ts, string from, string to)
    {
        int i = ts.FindIndex(t => t.Name.Contains(from, StringComparison.Ordinal));
        ts[i] = new SafetensorsTensor(ts[i].Name.Replace(from, to, StringComparison.Ordinal), ts[i].Shape, ts[i].Data);
        return ts;
    }

    public static TheoryData<string, string> Damages() => new()
    {
        { "renamed lora_B", "lora_b.weight" }, { "NUL in a name", "match no LoRA factor" }, { "stray key", "stray" }, { "Meta-Down damaged name", "lora_dwn" },
        { "lora_B without lora_A", "has no" }, { "one lora_B missing", "is missing" }, { "rank 0", "(0, " }, { "mixed ranks", "has shape" },
        { "1-D factor", "has shape (" }, { "wrong d_in", "has shape" }, { "non-finite", "non-finite" }, { "kohya stray key", "stray" },
        { "kohya up missing", "is missing" }, { "kohya alpha not one value", "one value" },
    };

    [Theory]
    [MemberData(nameof(Damages))]
    public void ADamagedLoraIsAnErrorNamingTheFileAndTheKey(string damage, string mention)
    {
        string path = damage switch
        {
            "renamed lora_B" => WriteLora(LoraFormat.Peft, ts => Rename(ts, "lora_B.weight", "lora_b.weight")),
            "NUL in a name" => WriteLora(LoraFormat.Peft, ts => Rename(ts, "to_q.", "to\0q.")),
            "stray key" => WriteLora(LoraFormat.Peft, ts => [.. ts, new("stray.weight", [1], [1f])]),
            "Meta-Down damaged name" => WriteLora(LoraFormat.Meta, ts => Rename(ts, "lora_down", "lora_dwn"), stage1: true),
            "lora_B without lora_A" => WriteLora(LoraFormat.Peft, ts => [.. ts.Where((t, i) => i != ts.FindIndex(u => u.Name.EndsWith("lora_A.weight")))]),
            "one lora_B missing" => WriteLora(LoraFormat.Peft, ts => [.. ts.Where((t, i) => i != ts.FindIndex(u => u.Name.EndsWith("lora_B.weight")))]),
            "rank 0" => WriteLora(LoraFormat.Peft, ts => [.. ts.Select(t => new SafetensorsTensor(t.Name, t.Name.EndsWith("lora_A.weight") ? [0, t.Shape[1]] : [t.Shape[0], 0], []))]),
            "mixed ranks" => WriteLora(LoraFormat.Peft, ts => ts.Select((t, i) => i < 2 || !t.Name.EndsWith("lora_A.weight") ? t
                                                                                 : new SafetensorsTensor(t.Name, [1, t.Shape[1]], t.Data[..t.Shape[1]])).ToList()),
            "1-D factor" => WriteLora(LoraFormat.Peft, ts => ts.Select((t, i) => i == 0 ? new SafetensorsTensor(t.Name, [t.Data.Length], t.Data) : t).ToList()),
            "wrong d_in" => WriteLora(LoraFormat.Peft, ts => ts.Select((t, i) => i == 0 && t.Name.EndsWith("lora_A.weight") ? new SafetensorsTensor(t.Name, [1, t.Data.Length], t.Data) : t).ToList()),
            "non-finite" => WriteLora(LoraFormat.Peft, ts => { ts[^1].Data[0] = float.NaN; return ts; }),
            "kohya stray key" => WriteLora(LoraFormat.Kohya, ts => [.. ts, new("lora_unet_stray.lora_down.weight", [1, 1], [1f])]),
            "kohya up missing" => WriteLora(LoraFormat.Kohya, ts => [.. ts.Where((t, i) => i != ts.FindIndex(u => u.Name.EndsWith("lora_up.weight")))]),
            "kohya alpha not one value" => WriteLora(LoraFormat.Kohya, ts => ts.Select(t => t.Name.EndsWith(".alpha") ? new SafetensorsTensor(t.Name, [2], [1f, 1f]) : t).ToList()),
            _ => throw new ArgumentException(damage),
        };
        using (var be = CpuBackend.F32())
        {
            var e = Assert.ThrowsAny<InputException>(() => LoraFiles.Load(path, FluxConfig.Tiny, be).Dispose());
            Assert.Equal(path, e.Subject);
            Assert.Contains(mention, e.Message);
        }
        foreach (var args in new[] { new[] { "lora", "info", "--in", path, "--base", "tiny" },
                                     ["lora", "convert", "--in", path, "--base", "tiny", "--out", Path.Combine(dir, "c.safetensors")] })
            OneClearLine(2, Run(args), path);
        Assert.False(File.Exists(Path.Combine(dir, "c.safetensors")));
    }

    [Fact]
    public void AMergedLoraAsTheMetaDownIsABadInputNotAnInternalError()
    {
        string merged = WriteLora(LoraFormat.Peft, ts => ts);
        string data = Path.Combine(dir, "ids");
        Assert.Equal(0, Run("data", "synth", "--out", data, "--identities", "1", "--images", "1", "--preset", "tiny").Code);
        var run = Run("train", "stage2", "--model", "random:tiny:1", "--down", merged, "--data", Path.Combine(data, "person000"),
                      "--out", Path.Combine(dir, "me.safetensors"), "--iterations", "1");
        OneClearLine(2, run, merged);
    }
}
