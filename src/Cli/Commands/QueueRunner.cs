using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;
using System.Text;
using System.Text.Json;
using MetaLoraNative.Cli.Config;
using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Distributed;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Training;
using MetaLoraNative.Onnx.Models;

namespace MetaLoraNative.Cli.Commands;

/// <summary>
/// `metalora train stage2 --queue people.jsonl --gpus 0,1,…` (or `--device cpu --workers N`): personalises everyone in
/// a JSON-lines file, one person per line, on every GPU at once.
/// - A line is `{"photo": "me.jpg" | "data": "prepared/dir", "out": "me/lora.safetensors", "prompt": "...", …}`: a
///   photo line runs `personalize` (augment, encode, Stage 2), a data line `train stage2`; every other key is one of
///   that command's flags without the dashes (iterations, lr, seed, rank2, format…), overriding the queue's own flags
///   for that person. `name` names the person (default: the photo's or folder's name), `trigger` is `prompt`.
/// - The whole file is checked before anything starts: each line's JSON and keys, its command line through the
///   commands' own parser and validators, every input readable, every output writable, no two lines with the same
///   output or output folder (the monitor's metrics.jsonl and loss.png are per folder). All problems are reported at
///   once, each with its line number.
/// - A person whose output is complete (the LoRA and its companions, with this line's iterations, seed and lr) is
///   skipped and said so; one with a state file resumes from it (the trainers' own resume).
/// - Each person is one worker process on its GPU (<see cref="QueueScheduler"/>), its output in OUT with extension
///   .log; a failed person is reported with its error line and log and the queue goes on. At the end a summary
///   table is printed and written to QUEUE.summary.md; the exit code is 1 when anyone failed.
/// </summary>
internal static class QueueRunner
{
    public static Option<string?> Queue() => new("--queue")
    {
        Description = "Personalise everyone in a JSON-lines file, one person per line: {\"photo\": \"me.jpg\" | \"data\": \"prepared/dir\", \"out\": \"me/lora.safetensors\", " +
                      "\"prompt\": \"...\", per-person flags such as \"iterations\" or \"seed\"}; --data and --out then come from each line (docs/TRAINING.md).",
    };

    public static Option<string?> Gpus() => new("--gpus") { Description = "With --queue: one worker per GPU id (0,1,2,3), each taking the next person as soon as it is done." };

    public static Option<int?> Workers() => new Option<int?>("--workers") { Description = "With --queue and --device cpu: N CPU worker processes (the same route as --gpus, for CI)." }.AtLeast(1);

    // queue-level flags that never pass to a person's command: the queue's own, and what each line gives itself
    static readonly HashSet<string> QueueOnly = ["--queue", "--gpus", "--workers", "--data", "--out", "--state"];

    // keys a line may not set: they are the queue's (one model and device for every worker) or its line's kind
    static readonly HashSet<string> NotPerPerson = ["model", "device", "standard", "data", "photo", "out", "name", "queue", "gpus", "workers"];

    /// <summary>A queue file's line, checked: the person's command line and what tells a complete output.</summary>
    sealed record Person(int Line, string Name, string Out, string StatePath, string[] Arguments, string Format,
                         int Iterations, string Seed, string Lr, bool ForceNew)
    {
        public string LogPath => Path.ChangeExtension(Out, ".log");
    }

    /// <summary>Runs the queue; <paramref name="stage2"/> is the command the queue's flags were parsed for.</summary>
    public static int Run(ParseResult r, Command stage2, string queuePath, string? gpus, int? workers)
    {
        var given = stage2.Options.Where(o => r.GetResult(o) is OptionResult { Implicit: false }).ToList();
        if (given.FirstOrDefault(o => o.Name is "--data" or "--out" or "--state") is { } perLine)
            throw new InputException(perLine.Name, $"with --queue each line gives its own {CommandConfig.Key(perLine)}; drop {perLine.Name}");
        var flags = given.Where(o => !QueueOnly.Contains(o.Name))
                         .Select(o => (o.Name, Values: r.GetResult(o)!.Tokens.Select(t => t.Value).DefaultIfEmpty("true").ToArray())).ToList();
        string? Flag(string name) => flags.FirstOrDefault(f => f.Name == name).Values?[0];
        var slots = Slots(gpus, workers, Flag("--device") ?? Backends.Auto);
        var people = Read(queuePath, flags, Flag("--models"));

        Console.WriteLine($"queue {queuePath}: {People(people.Count)} on {slots.Count} worker(s) ({string.Join(", ", slots.Select(s => s.Name))})");
        var (file, _) = WorkerLauncher.CurrentExecutable([]);
        var jobs = new List<QueueJob>();
        var skipped = new Dictionary<int, string>();
        foreach (var p in people)
        {
            if (Complete(p) is { } why)
            {
                skipped[p.Line] = why;
                Console.WriteLine($"skip   line {p.Line} {p.Name}: {why}");
                continue;
            }
            var (_, arguments) = WorkerLauncher.CurrentExecutable(p.Arguments);
            jobs.Add(new QueueJob(p.Line, p.Name, file, arguments, p.LogPath, Resumes(p)));
        }

        using var cancel = new CancellationTokenSource();
        ConsoleCancelEventHandler stop = (_, e) =>
        {
            e.Cancel = true;
            cancel.Cancel();
        };
        Console.CancelKeyPress += stop;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        IReadOnlyList<QueueOutcome> outcomes;
        try { outcomes = QueueScheduler.Run(jobs, slots, Common.Log, cancel.Token); }
        finally { Console.CancelKeyPress -= stop; }

        string summaryPath = queuePath + ".summary.md";
        string summary = Summary(queuePath, people, skipped, outcomes, clock.Elapsed);
        Console.WriteLine();
        Console.Write(summary);
        AtomicFile.WriteAllText(summaryPath, summary);
        Console.WriteLine($"summary written to {summaryPath}");
        var failed = people.Where(p => outcomes.FirstOrDefault(o => o.Job.Line == p.Line) is not { Status: QueueStatus.Done } && !skipped.ContainsKey(p.Line)).ToList();
        if (failed.Count > 0)
            throw new RuntimeFailure($"queue {queuePath}", $"{failed.Count} of {People(people.Count)} did not finish " +
                                                          $"({string.Join(", ", failed.Select(p => $"line {p.Line} {p.Name}"))}); see {summaryPath}");
        return 0;
    }

    static List<QueueSlot> Slots(string? gpus, int? workers, string device)
    {
        if (gpus != null && workers != null) throw new InputException("--workers", "give either --gpus or --workers, not both");
        if (gpus != null)
        {
            if (device == "cpu") throw new InputException("--gpus", "--gpus runs one worker per GPU; with --device cpu give --workers N");
            return [.. WorkerLauncher.ParseGpuIds(gpus).Select(QueueSlot.Gpu)];
        }
        if (workers is int n)
        {
            if (device != "cpu") throw new InputException("--workers", "--workers N runs CPU workers (--device cpu); on GPUs give --gpus 0,1,…");
            return [.. Enumerable.Range(0, n).Select(QueueSlot.Cpu)];
        }
        return [QueueSlot.Cpu(0)];
    }

    /// <summary>
    /// Reads and checks the whole queue file; every problem of every line is collected and thrown as one
    /// InputException naming the file, each problem with its line number.
    /// </summary>
    static List<Person> Read(string queuePath, List<(string Name, string[] Values)> queueFlags, string? modelsFlag)
    {
        string[] lines;
        try { lines = File.ReadAllLines(queuePath); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new InputException(queuePath, $"cannot read the queue file: {e.Message}"); }
        var root = Program.CreateRoot();
        var personalize = root.Subcommands.Single(c => c.Name == "personalize");
        var stage2 = root.Subcommands.Single(c => c.Name == "train").Subcommands.Single(c => c.Name == "stage2");
        var problems = new List<string>();
        var people = new List<Person>();
        var outs = new Dictionary<string, int>();
        var folders = new Dictionary<string, int>();
        var checkedPaths = new HashSet<string>();
        bool photos = false;

        for (int i = 0; i < lines.Length; i++)
        {
            int line = i + 1;
            if (lines[i].Trim().Length == 0) continue;
            void Problem(string what) => problems.Add($"line {line}: {what}");
            JsonElement o;
            try
            {
                using var doc = JsonDocument.Parse(lines[i]);
                o = doc.RootElement.Clone();
            }
            catch (JsonException e)
            {
                Problem($"not valid JSON (at character {e.BytePositionInLine + 1})");
                continue;
            }
            if (o.ValueKind != JsonValueKind.Object)
            {
                Problem($"must be a JSON object ({{\"photo\" or \"data\", \"out\", …}}), not {o.ValueKind.ToString().ToLowerInvariant()}");
                continue;
            }
            string? photo = Text(o, "photo", Problem), data = Text(o, "data", Problem), output = Text(o, "out", Problem);
            if ((photo == null) == (data == null))
            {
                Problem(photo == null ? "give \"photo\" (one image) or \"data\" (a prepared folder)" : "give \"photo\" or \"data\", not both");
                continue;
            }
            bool isPhoto = photo != null;
            photos |= isPhoto;

            // inputs readable, output writable, each output and its folder this line's alone
            if (isPhoto) Readable(photo!, "photo", Problem);
            else if (!Directory.Exists(data)) Problem($"data {data}: no such folder (a `metalora prepare` output)");
            else if (!Directory.EnumerateFiles(data!, "*.safetensors", SearchOption.AllDirectories).Any()) Problem($"data {data}: holds no .safetensors examples");
            if (output == null)
            {
                Problem("\"out\" is missing: the LoRA file this person's run writes");
                continue;
            }
            string full = Path.GetFullPath(output), folder = Path.GetDirectoryName(full)!;
            if (outs.TryGetValue(full, out int other)) Problem($"out {output} is line {other}'s output too");
            else if (folders.TryGetValue(folder, out int neighbour))
                Problem($"out {output} is in the folder of line {neighbour}'s output; give each person a folder (metrics.jsonl, loss.png and samples/ are per folder)");
            outs.TryAdd(full, line);
            folders.TryAdd(folder, line);
            Writable(full, Problem);

            // the person's flags: the queue's, then the line's own keys over them
            var command = isPhoto ? personalize : stage2;
            var keys = CommandConfig.Settable(command).Select(CommandConfig.Key).Where(k => !NotPerPerson.Contains(k)).ToHashSet();
            var flags = new Dictionary<string, string[]>();
            foreach (var (flag, values) in queueFlags) flags[Rename(flag, isPhoto)] = values;
            bool keysOk = true;
            foreach (var p in o.EnumerateObject())
            {
                if (p.Name is "photo" or "data" or "out" or "name") continue;
                string key = p.Name == "trigger" ? "prompt" : isPhoto && p.Name == "rank2" ? "rank" : p.Name;
                if (!keys.Contains(key))
                {
                    Problem($"unknown key '{p.Name}' for a {(isPhoto ? "photo" : "data")} line (its keys: photo|data, out, name, trigger, {string.Join(", ", keys)})");
                    keysOk = false;
                }
                else if (Values(p.Value) is { } values) flags["--" + key] = values;
                else
                {
                    Problem($"key '{p.Name}': give a string, number, true/false or a list of them, not {p.Value.ValueKind.ToString().ToLowerInvariant()}");
                    keysOk = false;
                }
            }
            if (!keysOk) continue;

            // the person's command line through the command's own parser and validators
            string[] arguments = [.. isPhoto ? ["personalize", photo!] : new[] { "train", "stage2", "--data", data! },
                                  .. flags.SelectMany(f => f.Value.SelectMany(v => new[] { f.Key, v })), "--out", output];
            var parse = root.Parse(arguments);
            if (parse.Errors.Count > 0)
            {
                foreach (var e in parse.Errors) Problem(e.Message);
                continue;
            }
            if (Value(parse, "--down")?.ToString() is not { } down) Problem("no Meta-Down: give the queue's --down or the line's \"down\"");
            else if (checkedPaths.Add(down)) Readable(down, "down", Problem);

            string name = o.TryGetProperty("name", out var n) && n.ValueKind == JsonValueKind.String ? n.GetString()!
                        : Path.GetFileNameWithoutExtension(Path.TrimEndingDirectorySeparator(isPhoto ? photo! : data!));
            people.Add(new Person(line, name, full, Value(parse, "--state")?.ToString() ?? Path.ChangeExtension(full, ".state.safetensors"),
                                  arguments, Value(parse, "--format")!.ToString()!,
                                  Value(parse, "--iterations") is int it ? it : new Stage2Options().Iterations,
                                  Invariant(Value(parse, "--seed")), Invariant(Value(parse, "--lr")), Value(parse, "--force-new") is true));
        }

        if (lines.All(l => l.Trim().Length == 0)) problems.Add("holds no person (one JSON object per line)");
        if (queueFlags.FirstOrDefault(f => f.Name == "--model") is { Values: [var model] } && !model.StartsWith("random:", StringComparison.Ordinal)
            && !File.Exists(model) && !Directory.Exists(model))
            problems.Insert(0, $"--model {model}: no such file or folder");
        if (photos)
        {
            if (OnnxCommandSupport.ModelsDir(modelsFlag) is not { } models) problems.Insert(0, "photo lines need a models folder: pass --models DIR or set METALORA_MODELS");
            else problems.InsertRange(0, ModelsFolder.Check(models).Select(p => $"photo lines: {p}"));
        }
        if (problems.Count > 0)
            throw new InputException(queuePath, $"{problems.Count} problem(s), nothing was started: {string.Join("; ", problems)}");
        return people;
    }

    static string People(int n) => n == 1 ? "1 person" : $"{n} people";

    // a queue flag as the person's command names it: personalize calls train stage2's --rank2 --rank
    static string Rename(string flag, bool photo) => photo && flag == "--rank2" ? "--rank" : flag;

    static string? Text(JsonElement o, string key, Action<string> problem)
    {
        if (!o.TryGetProperty(key, out var v)) return null;
        if (v.ValueKind == JsonValueKind.String && v.GetString()!.Length > 0) return v.GetString();
        problem($"\"{key}\" must be a non-empty string (a path)");
        return null;
    }

    static string[]? Values(JsonElement v) => v.ValueKind switch
    {
        JsonValueKind.String => [v.GetString()!],
        JsonValueKind.Number => [v.GetRawText()],
        JsonValueKind.True => ["true"],
        JsonValueKind.False => ["false"],
        JsonValueKind.Array when v.EnumerateArray().All(e => e.ValueKind is JsonValueKind.String or JsonValueKind.Number) =>
            [.. v.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.String ? e.GetString()! : e.GetRawText())],
        _ => null,
    };

    static object? Value(ParseResult parse, string flag) =>
        parse.CommandResult.Command.Options.FirstOrDefault(o => o.Name == flag) is { } option && parse.GetResult(option) is { } result
            ? result.GetValueOrDefault<object?>() : null;

    static string Invariant(object? v) => v is IFormattable f ? f.ToString(null, CultureInfo.InvariantCulture) : v?.ToString() ?? "";

    static void Readable(string path, string what, Action<string> problem)
    {
        try
        {
            using var f = File.OpenRead(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
        {
            problem($"{what} {path}: cannot be read ({e.Message})");
        }
    }

    /// <summary>The output's folder, or the nearest folder above it that exists, takes a new file.</summary>
    static void Writable(string output, Action<string> problem)
    {
        if (Directory.Exists(output))
        {
            problem($"out {output} is a folder; give the LoRA file's path");
            return;
        }
        string? folder = Path.GetDirectoryName(output);
        while (folder != null && !Directory.Exists(folder))
        {
            if (File.Exists(folder))
            {
                problem($"out {output}: {folder} is a file, not a folder");
                return;
            }
            folder = Path.GetDirectoryName(folder);
        }
        if (folder == null) return;
        try
        {
            using var probe = new FileStream(Path.Combine(folder, $".metalora-queue-{Environment.ProcessId}.probe"), FileMode.CreateNew,
                                             FileAccess.Write, FileShare.None, 1, FileOptions.DeleteOnClose);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            problem($"out {output}: the folder {folder} is not writable ({e.Message})");
        }
    }

    /// <summary>
    /// Why the person's output is complete ("… complete: 375 iterations"), or null: the LoRA exists, opens, records
    /// this line's iterations, seed and lr, and its companions (.kohya with --format both, the unmerged .meta) exist.
    /// </summary>
    static string? Complete(Person p)
    {
        if (!File.Exists(p.Out)) return null;
        try
        {
            using var f = SafetensorsFile.Open(p.Out);
            var m = f.Metadata;
            if (m.GetValueOrDefault("metalora.iterations") != p.Iterations.ToString(CultureInfo.InvariantCulture)
                || m.GetValueOrDefault("metalora.seed") != p.Seed || m.GetValueOrDefault("metalora.lr") != p.Lr) return null;
        }
        catch (Exception e) when (e is IOException or InvalidDataException or InputException or ArgumentException) { return null; }
        string[] companions = [.. p.Format == "both" ? [Path.ChangeExtension(p.Out, ".kohya.safetensors")] : Array.Empty<string>(),
                               LoraFiles.UnmergedPath(p.Out)];
        return companions.All(File.Exists) ? $"{p.Out} is complete ({p.Iterations} iterations); nothing to do" : null;
    }

    /// <summary>"resumes from iteration 125 of STATE" when the person's state file exists.</summary>
    static string Resumes(Person p) =>
        p.ForceNew ? "starts over (force-new)" : StateIteration(p) is long k ? $"resumes from iteration {k} of {p.StatePath}" : "";

    static long? StateIteration(Person p)
    {
        if (!File.Exists(p.StatePath)) return null;
        try
        {
            using var f = SafetensorsFile.Open(p.StatePath);
            return long.TryParse(f.Metadata.GetValueOrDefault(TrainingState.IterationKey), NumberStyles.None, CultureInfo.InvariantCulture, out long k) ? k : null;
        }
        catch (Exception e) when (e is IOException or InvalidDataException or InputException or ArgumentException) { return null; }
    }

    /// <summary>The table (line, person, GPU, status, iterations, wall time, output) and the failures with their error lines and logs.</summary>
    static string Summary(string queuePath, List<Person> people, Dictionary<int, string> skipped, IReadOnlyList<QueueOutcome> outcomes, TimeSpan wall)
    {
        var w = new StringBuilder();
        var byLine = outcomes.ToDictionary(o => o.Job.Line);
        int done = outcomes.Count(o => o.Status == QueueStatus.Done), failed = outcomes.Count(o => o.Status == QueueStatus.Failed);
        w.AppendLine($"# Queue {Path.GetFileName(queuePath)}");
        w.AppendLine();
        w.AppendLine($"{DateTime.UtcNow:yyyy-MM-ddTHH:mm:ssZ}: {People(people.Count)}, {done} done, {skipped.Count} skipped (complete), {failed} failed, " +
                     $"{people.Count - done - skipped.Count - failed} not finished; wall time {QueueScheduler.Clock(wall)}.");
        w.AppendLine();
        w.AppendLine("| line | person | GPU | status | iterations | wall time | output |");
        w.AppendLine("|---|---|---|---|---|---|---|");
        foreach (var p in people)
        {
            var o = byLine.GetValueOrDefault(p.Line);
            string status = skipped.ContainsKey(p.Line) ? "skipped (complete)"
                          : o?.Status switch { QueueStatus.Done => "done", QueueStatus.Failed => "FAILED", QueueStatus.Cancelled => "cancelled", _ => "not started" };
            long reached = skipped.ContainsKey(p.Line) || o?.Status == QueueStatus.Done ? p.Iterations : StateIteration(p) ?? 0;
            w.AppendLine($"| {p.Line} | {p.Name} | {o?.Slot ?? "-"} | {status} | {reached}/{p.Iterations} | " +
                         $"{(o == null ? "-" : QueueScheduler.Seconds(o.Wall))} | {p.Out} |");
        }
        var failures = outcomes.Where(o => o.Status != QueueStatus.Done).OrderBy(o => o.Job.Line).ToList();
        if (failures.Count > 0)
        {
            w.AppendLine();
            w.AppendLine("## Not finished");
            w.AppendLine();
            foreach (var o in failures) w.AppendLine($"- line {o.Job.Line} {o.Job.Name} on {o.Slot}: `{o.Error}` (exit code {o.ExitCode}; log {o.Job.LogPath})");
        }
        return w.ToString();
    }
}
