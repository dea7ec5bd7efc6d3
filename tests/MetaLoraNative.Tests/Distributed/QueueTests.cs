using System.Text.RegularExpressions;
using MetaLoraNative.Engine.Demo;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Training;
using MetaLoraNative.Onnx.Models;
using MetaLoraNative.Tests.Cli;
using MetaLoraNative.Tests.Testing;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Distributed;

/// <summary>
/// `train stage2 --queue` on the CPU route CI has (`--device cpu --workers 2`, worker processes of the built CLI),
/// on the stand-in models and the tiny-t5 preset: what everyone gets equals a separate run with the same options,
/// a bad person fails alone, a rerun skips the complete and resumes the rest, and a bad queue file is refused whole,
/// each problem with its line, before anything starts.
/// </summary>
[Collection("console")]
public sealed class QueueTests(ITestOutputHelper output) : TempFolderTest("queue")
{
    const string Model = "random:tiny-t5:1";
    static readonly TimeSpan Limit = TimeSpan.FromMinutes(3);

    string WriteDown() => StandInFiles.WriteMetaDown(Path.Combine(dir, "down.safetensors"));

    string WriteData(string name, ulong seed)
    {
        string data = Path.Combine(dir, "data", name);
        LatentDataset.SaveIdentity(data, TinyDemo.MakeIdentity(FluxConfig.TinyT5, name, 2, seed));
        return data;
    }

    static string Line(params (string Key, object Value)[] pairs) =>
        "{" + string.Join(", ", pairs.Select(p => $"\"{p.Key}\": {(p.Value is string s ? System.Text.Json.JsonSerializer.Serialize(s) : p.Value)}")) + "}";

    /// <summary>Every tensor of two LoRA files byte for byte, and their metadata but the write time.</summary>
    static void SameLora(string expected, string actual)
    {
        using var a = SafetensorsFile.Open(expected);
        using var b = SafetensorsFile.Open(actual);
        Assert.Equal(a.Entries.Keys.Order(), b.Entries.Keys.Order());
        Assert.NotEmpty(a.Entries);
        foreach (string name in a.Entries.Keys)
            Assert.True(a.RawBytes(name).SequenceEqual(b.RawBytes(name)), $"{name} differs between {expected} and {actual}");
        Assert.Equal(a.Metadata.Where(m => m.Key != "modelspec.date").OrderBy(m => m.Key), b.Metadata.Where(m => m.Key != "modelspec.date").OrderBy(m => m.Key));
    }

    [Fact]
    public void ThreePeopleOnTwoWorkersEqualSeparateRunsABadPhotoFailsAloneAndARerunSkipsTheDone()
    {
        string models = Path.Combine(dir, "models"), down = WriteDown();
        ModelsFolder.WriteTiny(models);
        string alice = WriteData("alice", 11), bob = WriteData("bob", 12), carol = StandInFiles.WritePhoto(Path.Combine(dir, "carol.png"), 320, 240);
        string dave = Path.Combine(dir, "dave.png");
        File.WriteAllText(dave, "not an image at all");
        string Out(string who) => Path.Combine(dir, "queue-out", who, "lora.safetensors");
        string queue = Path.Combine(dir, "people.jsonl");
        File.WriteAllLines(queue,
        [
            Line(("data", alice), ("out", Out("alice"))),
            Line(("data", bob), ("out", Out("bob")), ("seed", 5), ("iterations", 3), ("trigger", "a photo of sks man")),
            Line(("photo", carol), ("out", Out("carol")), ("resolution", 256), ("max", 2), ("lr", 1e-3)),
            Line(("photo", dave), ("out", Out("dave")), ("resolution", 256), ("max", 2)),
        ]);
        string[] queueFlags = ["--model", Model, "--down", down, "--models", models, "--iterations", "2", "--device", "cpu"];
        string[] run = ["train", "stage2", "--queue", queue, "--workers", "2", .. queueFlags];

        var first = CliProcess.Run(dir, Limit, run);
        output.WriteLine(first.Out + first.Err);
        Assert.Equal(1, first.Code);                                               // dave failed: a runtime failure of the queue
        Assert.Contains($"error: queue {queue}: 1 of 4 people did not finish (line 4 dave)", first.Err);
        foreach (var (line, who) in new[] { (1, "alice"), (2, "bob"), (3, "carol"), (4, "dave") })
            Assert.Matches($@"start  line {line} {who} on worker [01]: \d+ done, \d+ failed, \d+ left; elapsed \d+:\d\d, ETA", first.Out);
        foreach (var (line, who) in new[] { (1, "alice"), (2, "bob"), (3, "carol") })
            Assert.Matches($@"done   line {line} {who} on worker [01] in \d+\.\d s: \d+ done, \d+ failed, \d+ left; elapsed \d+:\d\d, ETA \d+:\d\d", first.Out);
        Assert.Matches(@"FAILED line 4 dave on worker [01] after \d+\.\d s: error: .+; log .+dave[/\\]lora\.log", first.Out);
        // both workers were used, and the summary table is printed and written
        Assert.Contains("on worker 0", first.Out);
        Assert.Contains("on worker 1", first.Out);
        string summary = File.ReadAllText(queue + ".summary.md");
        Assert.Contains(summary.TrimEnd(), first.Out);
        Assert.Matches(@"\| 1 \| alice \| worker [01] \| done \| 2/2 \| \d+\.\d s \|", summary);
        Assert.Matches(@"\| 2 \| bob \| worker [01] \| done \| 3/3 \| \d+\.\d s \|", summary);
        Assert.Matches(@"\| 3 \| carol \| worker [01] \| done \| 2/2 \| \d+\.\d s \|", summary);
        Assert.Matches(@"\| 4 \| dave \| worker [01] \| FAILED \| 0/2 \| \d+\.\d s \|", summary);
        var daveError = Regex.Match(summary, @"- line 4 dave on worker [01]: `(error: [^`]+)` \(exit code (\d+); log (.+)\)");
        Assert.True(daveError.Success, summary);
        Assert.NotEqual("0", daveError.Groups[2].Value);
        Assert.Equal(Path.ChangeExtension(Out("dave"), ".log"), daveError.Groups[3].Value);
        Assert.Contains(daveError.Groups[1].Value, File.ReadAllText(daveError.Groups[3].Value));   // the log holds the worker's own line
        Assert.False(File.Exists(Out("dave")));

        // each equals a separate run with the same options: same seed, same LoRA
        string Single(string who) => Path.Combine(dir, "single", who, "lora.safetensors");
        string[] Common(int iterations) => ["--model", Model, "--down", down, "--models", models, "--iterations", $"{iterations}", "--device", "cpu"];
        var singles = new (string Who, string[] Args)[]
        {
            ("alice", ["train", "stage2", "--data", alice, .. Common(2)]),
            ("bob", ["train", "stage2", "--data", bob, .. Common(3), "--seed", "5", "--prompt", "a photo of sks man"]),
            ("carol", ["personalize", carol, .. Common(2), "--resolution", "256", "--max", "2", "--lr", "1e-3"]),
        };
        foreach (var (who, args) in singles)
        {
            var one = CliRunner.Run([.. args, "--out", Single(who)]);
            Assert.True(one.Code == 0, one.Err + one.Out);
            SameLora(Single(who), Out(who));
            SameLora(LoraFiles.UnmergedPath(Single(who)), LoraFiles.UnmergedPath(Out(who)));
        }

        // rerun: the complete are skipped and said so; bob, whose LoRA is gone but whose state is complete, resumes
        var written = File.GetLastWriteTimeUtc(Out("alice"));
        File.Delete(Out("bob"));
        File.WriteAllText(queue, string.Join('\n', File.ReadAllLines(queue).Take(3)) + "\n");   // without dave
        var second = CliProcess.Run(dir, Limit, run);
        output.WriteLine(second.Out + second.Err);
        Assert.True(second.Code == 0, second.Err + second.Out);
        Assert.Contains($"skip   line 1 alice: {Out("alice")} is complete (2 iterations); nothing to do", second.Out);
        Assert.Contains($"skip   line 3 carol: {Out("carol")} is complete (2 iterations); nothing to do", second.Out);
        Assert.Matches($@"start  line 2 bob on worker 0 \(resumes from iteration 3 of {Regex.Escape(Path.ChangeExtension(Out("bob"), ".state.safetensors"))}\)", second.Out);
        Assert.DoesNotContain("start  line 1", second.Out);
        Assert.Equal(written, File.GetLastWriteTimeUtc(Out("alice")));
        SameLora(Single("bob"), Out("bob"));
        summary = File.ReadAllText(queue + ".summary.md");
        Assert.Matches(@"\| 1 \| alice \| - \| skipped \(complete\) \| 2/2 \| - \|", summary);
        Assert.Matches(@"\| 2 \| bob \| worker 0 \| done \| 3/3 \|", summary);
    }

    [Fact]
    public void AQueueFileWithProblemsIsRefusedWholeWithLineNumbersBeforeAnyWork()
    {
        string down = WriteDown(), alice = WriteData("alice", 11);
        string Out(string who) => Path.Combine(dir, "out", who, "lora.safetensors");
        string queue = Path.Combine(dir, "people.jsonl");
        File.WriteAllLines(queue,
        [
            Line(("data", alice), ("out", Out("alice"))),
            "{\"data\": \"" + alice + "\", \"out\": ",                               // 2: cut short
            Line(("data", alice), ("out", Out("bob")), ("colour", "blue")),          // 3: no such key
            Line(("data", alice), ("out", Out("alice"))),                            // 4: alice's output again
            "",
            Line(("data", Path.Combine(dir, "nobody")), ("out", Out("nobody")), ("iterations", 0)),   // 6: no data, bad value
            Line(("out", Out("eve"))),                                               // 7: neither photo nor data
            "[1, 2]",                                                                // 8: not an object
        ]);
        var r = CliRunner.Run("train", "stage2", "--queue", queue, "--workers", "2", "--device", "cpu", "--model", Model, "--down", down);
        Assert.Equal(2, r.Code);
        string error = Assert.Single(r.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith($"error: {queue}: 7 problem(s), nothing was started: ", error);
        Assert.Contains("line 2: not valid JSON", error);
        Assert.Contains("line 3: unknown key 'colour' for a data line (its keys: photo|data, out, name, trigger, down, iterations,", error);
        Assert.Contains($"line 4: out {Out("alice")} is line 1's output too", error);
        Assert.Contains($"line 6: data {Path.Combine(dir, "nobody")}: no such folder", error);
        Assert.Contains("line 6: --iterations: must be at least 1, got 0", error);
        Assert.Contains("line 7: give \"photo\" (one image) or \"data\" (a prepared folder)", error);
        Assert.Contains("line 8: must be a JSON object", error);
        Assert.DoesNotContain("line 1:", error);
        Assert.DoesNotContain("line 5:", error);
        Assert.False(Directory.Exists(Path.Combine(dir, "out")), "a refused queue started something");
        Assert.False(File.Exists(queue + ".summary.md"));

        // the queue's flags: --out is each line's, --gpus needs a GPU device, --workers needs --queue
        Assert.Contains("error: --out: with --queue each line gives its own out",
                        CliRunner.Run("train", "stage2", "--queue", queue, "--out", Out("x"), "--model", Model, "--down", down).Err);
        Assert.Contains("error: --gpus runs one worker per GPU; with --device cpu give --workers N",
                        CliRunner.Run("train", "stage2", "--queue", queue, "--gpus", "0,1", "--device", "cpu", "--model", Model, "--down", down).Err);
        Assert.Contains("error: --gpus and --workers go with --queue FILE",
                        CliRunner.Run("train", "stage2", "--workers", "2", "--data", alice, "--out", Out("x"), "--model", Model, "--down", down).Err);
    }
}
