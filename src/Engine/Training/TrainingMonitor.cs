// What a training run reports besides its factors, in one place for all three trainers (Stage 1, Stage 2, the
// standard LoRA): the progress line, metrics.jsonl (one JSON object per step), the loss plot at every state save,
// sample images and merged-LoRA snapshots at fixed intervals, each snapshot scored when the run selects by identity. The shared loop (Stages.Run) calls Begin once, Step
// after every optimisation step and StateSaved after every state write. Drawing and sampling live outside the
// engine (ImageSharp, the VAE), so they come in as delegates.
using System.Text;
using System.Text.Json;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Lora;

namespace MetaLoraNative.Engine.Training;

/// <summary>A point of the loss curve: the step, the training loss and its EMA, the eval loss where one was measured.</summary>
public sealed record LossPoint(long Step, double Loss, double Smoothed, double? EvalLoss);

/// <summary>What the monitor writes and when; every interval 0 turns its output off.</summary>
public sealed record MonitorOptions
{
    /// <summary>metrics.jsonl: one line per step {step, loss, ema, grad_norm, lr, ms, phase[, eval_loss]}; null: none.</summary>
    public string? MetricsPath { get; init; }
    /// <summary>Steps between evaluations (<see cref="Trainer.Evaluate"/> over <see cref="EvalExamples"/>).</summary>
    public int EvalEvery { get; init; }
    public IReadOnlyList<Example> EvalExamples { get; init; } = [];
    /// <summary>The loss plot, redrawn at every state save and at the last step; null: none.</summary>
    public string? LossPlotPath { get; init; }
    public Action<string, IReadOnlyList<LossPoint>>? DrawLossPlot { get; init; }
    /// <summary>Steps between sample sets; <see cref="Sample"/> draws them with identity 0 of the adapter.</summary>
    public int SampleEvery { get; init; }
    public Action<FluxModel, LoraBinding, long>? Sample { get; init; }
    /// <summary>Steps between rolling snapshots (only the <see cref="Keep"/> newest stay; 0 keeps all).</summary>
    public int SaveEvery { get; init; }
    public int Keep { get; init; }
    /// <summary>Steps that always get a snapshot that is never deleted (the paper's iteration sweeps).</summary>
    public IReadOnlyCollection<long> SnapshotSteps { get; init; } = [];
    /// <summary>Snapshot file of a step (the main output's name with .stepNNNNNN) and the writer of one snapshot.</summary>
    public Func<long, string>? SnapshotPath { get; init; }
    public Action<LoraAdapter, string>? SaveSnapshot { get; init; }
    /// <summary>Checkpoint selection: called with the model, identity 0's binding, the step and the file right after each snapshot is written.</summary>
    public Action<FluxModel, LoraBinding, long, string>? ScoreSnapshot { get; init; }
    /// <summary>Refreshes one line in place (a terminal); null prints every step as its own log line.</summary>
    public Action<string>? LiveLine { get; init; }
    /// <summary>Weight of the newest loss in the smoothed loss: ema ← (1 − α)·ema + α·loss.</summary>
    public double EmaAlpha { get; init; } = 0.1;
}

public sealed class TrainingMonitor(MonitorOptions options, Action<string> log)
{
    readonly List<LossPoint> history = [];
    readonly List<string> rolling = [];
    FluxModel? model;
    LoraAdapter? adapter;
    TrainOptions train = new();
    double ema = double.NaN;
    bool liveOpen;

    public MonitorOptions Options => options;
    public IReadOnlyList<LossPoint> History => history;

    /// <summary>
    /// Starts (or resumes at <paramref name="start"/>) a run: metrics.jsonl keeps its lines up to the resumed step,
    /// which also refill the loss history and the EMA; a fresh run starts the file empty.
    /// </summary>
    public void Begin(FluxModel model, LoraAdapter adapter, TrainOptions train, long start)
    {
        this.model = model;
        this.adapter = adapter;
        this.train = train;
        history.Clear();
        ema = double.NaN;
        if (options.MetricsPath is not { } path) return;
        var kept = new StringBuilder();
        if (start > 0 && File.Exists(path))
            foreach (var line in File.ReadLines(path))
            {
                var p = ParseLine(line, path);
                if (p.Step > start) break;
                history.Add(p);
                ema = p.Smoothed;
                kept.Append(line).Append('\n');
            }
        AtomicFile.WriteAllText(path, kept.ToString());
    }

    /// <summary>After one step: the progress line, the metrics line (with the eval loss when due), samples and snapshots.</summary>
    /// <param name="skipped">The numeric guard dropped this step's update: its loss is not finite and stays out of the
    /// smoothed loss and the plot; the metrics line still records it.</param>
    public void Step(StepReport r, bool skipped = false)
    {
        if (model is null || adapter is null) throw new InvalidOperationException("TrainingMonitor.Begin must run before Step");
        if (!skipped) ema = double.IsNaN(ema) ? r.Loss : (1 - options.EmaAlpha) * ema + options.EmaAlpha * r.Loss;
        double? eval = null;
        if (options.EvalEvery > 0 && options.EvalExamples.Count > 0 && (r.Step % options.EvalEvery == 0 || r.Step == r.Total))
            eval = Trainer.Evaluate(model, Binding(), options.EvalExamples, train);
        if (!skipped) history.Add(new LossPoint(r.Step, r.Loss, ema, eval));

        string line = $"{r} | ema {ema:F6} | {r.Milliseconds / 1000:F2} s/it" + (eval is double e ? $" | eval {e:F6}" : "") +
                      (skipped ? " | skipped (non-finite)" : "");
        if (options.LiveLine is { } live)
        {
            live(line);
            liveOpen = true;
            if (eval != null || r.Step == r.Total) Say("");    // keep the eval's line (and the last one) on screen
        }
        else log(line);
        if (options.MetricsPath is { } path) File.AppendAllText(path, MetricsLine(r, ema, eval) + "\n");

        if (options.SampleEvery > 0 && options.Sample is { } sample && (r.Step % options.SampleEvery == 0 || r.Step == r.Total))
            sample(model, Binding(), r.Step);
        bool sweep = options.SnapshotSteps.Contains(r.Step);
        bool roll = options.SaveEvery > 0 && r.Step % options.SaveEvery == 0;
        if ((sweep || roll) && options.SnapshotPath is { } name && options.SaveSnapshot is { } save)
        {
            string file = name(r.Step);
            save(adapter, file);
            Say($"snapshot at step {r.Step}: {file}");
            options.ScoreSnapshot?.Invoke(model, Binding(), r.Step, file);
            if (roll && !sweep) Roll(file);
        }
        if (r.Step == r.Total) DrawPlot();
    }

    /// <summary>After a state write: the loss plot is redrawn.</summary>
    public void StateSaved(long step) => DrawPlot();

    void Roll(string file)
    {
        rolling.Add(file);
        while (options.Keep > 0 && rolling.Count > options.Keep)
        {
            string old = rolling[0];
            rolling.RemoveAt(0);
            foreach (var f in new[] { old, Path.ChangeExtension(old, ".kohya.safetensors") })
                if (File.Exists(f)) File.Delete(f);
            Say($"removed the oldest snapshot {old} (--keep {options.Keep})");
        }
    }

    void DrawPlot()
    {
        if (options.LossPlotPath is { } path && options.DrawLossPlot is { } draw && history.Count > 0) draw(path, history);
    }

    /// <summary>Identity 0 of the adapter, nothing trained: what evaluation and samples run with.</summary>
    LoraBinding Binding() => new(adapter!, [0], trainDown: false, trainIdentity: false);

    void Say(string line)
    {
        if (liveOpen && options.LiveLine is { } live)
        {
            live("\n");
            liveOpen = false;
        }
        if (line.Length > 0) log(line);
    }

    static string MetricsLine(StepReport r, double ema, double? eval)
    {
        var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            w.WriteNumber("step", r.Step);
            w.WriteNumber("loss", r.Loss);
            w.WriteNumber("ema", ema);
            w.WriteNumber("grad_norm", r.GradNorm);
            w.WriteNumber("lr", r.LearningRate);
            w.WriteNumber("ms", Math.Round(r.Milliseconds, 3));
            w.WriteString("phase", r.Phase);
            if (eval is double e) w.WriteNumber("eval_loss", e);
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(buffer.ToArray());
    }

    /// <summary>Reads one metrics.jsonl line back (a resumed run's history).</summary>
    public static LossPoint ParseLine(string line, string path)
    {
        try
        {
            using var doc = JsonDocument.Parse(line);
            var o = doc.RootElement;
            double? eval = o.TryGetProperty("eval_loss", out var e) ? e.GetDouble() : null;
            return new LossPoint(o.GetProperty("step").GetInt64(), o.GetProperty("loss").GetDouble(), o.GetProperty("ema").GetDouble(), eval);
        }
        catch (Exception ex) when (ex is JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
        {
            throw new InvalidDataException($"{path}: not a metrics line ({ex.Message}): {line}");
        }
    }
}
