using System.Diagnostics;
using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Demo;
using MetaLoraNative.Engine.Distributed;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Training;
using MetaLoraNative.Tests.Model;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Distributed;

/// <summary>
/// Data-parallel Stage 1 on the CPU: ranks as threads of this test (own backend, model and communicator each) against
/// one rank running the whole batch, and the CLI's --ranks route as processes.
///
/// Tolerance. One rank rounds each gradient element's fp64 sum over the batch to fp32 once; two ranks round each
/// half once, scale it by 1/2 (exact) and the communicator rounds the fp64 sum of the halves once more, so a
/// gradient element differs by at most about one ulp of the halves. AdamW's update g/(√v + ε) is invariant to a
/// common scale of g and moves by about that relative amount, a few 2^-24 of its size (at most lr per element),
/// and D itself may round the other way: ≤ ulp(|D|) per step. Feedback through the next steps' gradients is of
/// the same order, so after N steps |ΔD| ≤ N · (ulp(max|D|) + 8 · 2^-24 · lr), with max|D| taken over both runs.
/// </summary>
[Collection("distributed")]
public sealed class Stage1ParallelTests(ITestOutputHelper output) : TinyModelTest("stage1-parallel", 2)
{
    const ulong WeightSeed = 2;

    static List<Identity> People() => Enumerable.Range(0, 4).Select(k => TinyDemo.MakeIdentity(c, $"p{k}", 3, 5)).ToList();

    static Stage1Options Options(int total, int batch, string? state) => new()
    {
        Train = new TrainOptions { LearningRate = 2e-3f, BatchSize = batch, Seed = 9 },
        TotalIterations = total, BucketIterations = 8, WarmupIterations = 3, IdentitiesPerBucket = 2, Rank1 = 4, Rank2 = 1,
        StatePath = state, StateEvery = 4,
    };

    static readonly CommunicatorOptions Fast = new() { PeerTimeout = TimeSpan.FromSeconds(3), OperationTimeout = TimeSpan.FromSeconds(60) };

    /// <summary>Every D of a Stage-1 run on <paramref name="worldSize"/> thread ranks, per rank.</summary>
    static float[][][] RunRanks(int worldSize, Stage1Options o, IReadOnlyList<Identity> people, List<string>? log = null) =>
        LoopbackRanks.Results(LoopbackRanks.Run(worldSize, Fast, (comm, _) =>
        {
            using var be = CpuBackend.F32();
            using var w = FluxWeights.Random(c, be, WeightSeed);
            using var a = Stages.Stage1(new FluxModel(w), people, o, line => { if (comm.Rank == 0) lock (log ?? []) log?.Add(line); },
                                        new Stage1Parallel(comm));
            return a.Down.Select(d => be.Download(d.Value)).ToArray();
        }, TimeSpan.FromMinutes(3)));

    float[][] Downs(LoraAdapter a) => a.Down.Select(d => be.Download(d.Value)).ToArray();

    /// <summary>The derived bound above for <paramref name="steps"/> steps, and the largest difference seen.</summary>
    (double Bound, double Seen) Compare(float[][] one, float[][] many, int steps, float lr)
    {
        double maxAbs = one.Concat(many).SelectMany(x => x).Max(v => Math.Abs(v)), seen = 0;
        for (int t = 0; t < one.Length; t++)
            for (int i = 0; i < one[t].Length; i++) seen = Math.Max(seen, Math.Abs(one[t][i] - many[t][i]));
        double bound = steps * ((double)MathF.BitIncrement((float)maxAbs) - (float)maxAbs + 8 * Math.Pow(2, -24) * lr);
        output.WriteLine($"{steps} steps: max |ΔD| = {seen:E3}, bound {bound:E3} (max|D| {maxAbs:F4})");
        return (bound, seen);
    }

    [Theory]
    [InlineData(4, 0, 4, 0)]
    [InlineData(4, 1, 4, 1)]
    [InlineData(5, 0, 3, 0)]
    [InlineData(5, 2, 3, 4)]
    [InlineData(2, 3, 4, 2)]
    public void SlicesCoverTheGlobalBatchInOrder(int batch, int rank, int world, int expectedStart)
    {
        var all = Enumerable.Range(0, world).Select(r => Stage1Parallel.Slice(batch, r, world)).ToArray();
        Assert.Equal(batch, all.Sum(s => s.Count));
        for (int r = 1; r < world; r++) Assert.Equal(all[r - 1].Start + all[r - 1].Count, all[r].Start);
        Assert.True(all.Max(s => s.Count) - all.Min(s => s.Count) <= 1);
        Assert.Equal(expectedStart, Stage1Parallel.Slice(batch, rank, world).Start);
    }

    [Fact]
    public void TwoRanksOfBatchTwoGiveTheDOfOneRankOfBatchFour()
    {
        const int steps = 10;   // crosses a warm-up/meta boundary and a bucket change
        var people = People();
        using var single = Stages.Stage1(m, people, Options(steps, 4, null), _ => { });
        var lines = new List<string>();
        var ranks = RunRanks(2, Options(steps, 4, null), people, lines);

        for (int t = 0; t < ranks[0].Length; t++) Assert.Equal(ranks[0][t], ranks[1][t]);   // replicas bit-identical
        var (bound, seen) = Compare(Downs(single), ranks[0], steps, 2e-3f);
        Assert.True(seen <= bound, $"max |ΔD| {seen:E3} exceeds the derived bound {bound:E3}");
        var fresh = LoraAdapter.Create(be, c, FluxNames.LoraTargets(c), LoraMode.Meta, 4, 1, 9);
        Assert.True(Compare(Downs(fresh), ranks[0], steps, 2e-3f).Seen > 100 * bound, "D did not train: the comparison would be empty");
        fresh.Dispose();
        Assert.Equal(steps, lines.Count(l => l.StartsWith("step ")));
    }

    [Fact]
    public void TwoRanksResumedOnOneRankEndWhereAnUninterruptedRunEnds()
    {
        var people = People();
        using var straight = Stages.Stage1(m, people, Options(12, 4, null), _ => { });
        string state = Path.Combine(dir, "s1.state.safetensors");
        RunRanks(2, Options(8, 4, state), people);                 // "interrupted" after 8, on two ranks
        var lines = new List<string>();
        using var resumed = Stages.Stage1(m, people, Options(12, 4, state), lines.Add);   // resumed on one
        Assert.Contains(lines, l => l.Contains("resumed Stage 1") && l.Contains("iteration 8"));
        Assert.Equal(4, lines.Count(l => l.StartsWith("step ")));
        var (bound, seen) = Compare(Downs(straight), Downs(resumed), 12, 2e-3f);
        Assert.True(seen <= bound, $"max |ΔD| {seen:E3} exceeds the derived bound {bound:E3}");
    }

    /// <summary>
    /// The scaling figures of docs/DISTRIBUTED.md: per rank and step, the bytes the socket communicator sends and the
    /// all-reduce's share of the step time, for 2 and 4 ranks of batch 1 each (threads of this process: the cores are
    /// shared, as ranks on one machine share them). The bytes follow from the star (rank ≠ 0 sends one frame per
    /// bucket: 48 header and description bytes plus the payload; rank 0 sends N−1 frames) and the step's factors:
    /// D (in meta steps) plus M and U of the batch's identities, plus the loss.
    /// </summary>
    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public void ScalingFiguresForTwoAndFourRanks(int worldSize)
    {
        var people = People();
        var o = Options(6, worldSize, null) with { WarmupIterations = 0 };   // every step trains D
        var figures = LoopbackRanks.Results(LoopbackRanks.Run(worldSize, Fast, (comm, _) =>
        {
            using var be = CpuBackend.F32();
            using var w = FluxWeights.Random(c, be, WeightSeed);
            var parallel = new Stage1Parallel(comm);
            using var a = Stages.Stage1(new FluxModel(w), people, o, _ => { }, parallel);
            long down = a.Down.Sum(d => d.Value.Length), identity = a.Identities[0].Parameters().Sum(p => p.Value.Length);
            return (parallel.LastReduce, parallel.Totals, Down: down, Identity: identity);
        }, TimeSpan.FromMinutes(3)));
        var r1 = figures[1];
        long payload = r1.LastReduce.PayloadBytes;
        long identities = (payload / 4 - 1 - r1.Down) / r1.Identity;
        Assert.Equal(4 * (r1.Down + identities * r1.Identity + 1), payload);
        Assert.InRange(identities, 1, Math.Min(worldSize, 2));                 // a bucket holds 2 identities
        Assert.Equal(r1.LastReduce.Buckets * 48L + payload, r1.LastReduce.BytesSent);
        Assert.Equal((worldSize - 1) * r1.LastReduce.BytesSent, figures[0].LastReduce.BytesSent);
        foreach (var (f, rank) in figures.Select((f, r) => (f, r)))
            output.WriteLine($"{worldSize} ranks, rank {rank}: {f.LastReduce.BytesSent:N0} bytes sent in the last step's all-reduce " +
                             $"({f.LastReduce.Buckets} bucket(s), payload {payload:N0} B); all-reduce {f.Totals.ReduceMilliseconds / f.Totals.Steps:F1} ms " +
                             $"of {f.Totals.Milliseconds / f.Totals.Steps:F1} ms per step = {100 * f.Totals.ReduceMilliseconds / f.Totals.Milliseconds:F1} %");
    }

    [Fact]
    public void DivergedReplicasFailOnEveryRankNamingTheRank()
    {
        var outcomes = LoopbackRanks.Run(2, Fast, (comm, _) =>
        {
            using var be = CpuBackend.F32();
            using var a = LoraAdapter.Create(be, c, FluxNames.LoraTargets(c), LoraMode.Meta, 4, 1, 9);
            if (comm.Rank == 1) be.ScaleInPlace(a.Down[3].Value, 1.0001f);
            new Stage1Parallel(comm).CheckReplicas(a, 40);
            return 0;
        });
        foreach (var o in outcomes)
        {
            var e = Assert.IsType<RuntimeFailure>(o.Error);
            Assert.Equal("iteration 40", e.Subject);
            Assert.Contains("rank(s) 1 differs from rank 0's", e.Message);
        }
    }

    static string Cli => MetaLoraNative.Tests.Cli.CliProcess.Dll;

    [Fact]
    public void TheCliOnTwoCpuRanksStopsWhenAWorkerIsKilled()
    {
        var data = Path.Combine(dir, "data");
        foreach (var id in People()) LatentDataset.SaveIdentity(Path.Combine(data, id.Name), id);
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = dir };
        foreach (var a in new[] { Cli, "train", "stage1", "--model", $"random:tiny:{WeightSeed}", "--data", data, "--out", Path.Combine(dir, "d.safetensors"),
                                  "--batch-size", "2", "--iterations", "100000", "--bucket-iterations", "8", "--warmup-iterations", "3",
                                  "--identities-per-bucket", "2", "--rank1", "4", "--ranks", "2" })
            psi.ArgumentList.Add(a);
        foreach (var v in new[] { "RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS" }) psi.Environment.Remove(v);
        using var launcher = Process.Start(psi)!;
        var text = new System.Text.StringBuilder();
        var stepped = new ManualResetEventSlim();
        void Line(string? l)
        {
            if (l == null) return;
            lock (text) text.AppendLine(l);
            if (l.StartsWith("[rank 1] step ")) stepped.Set();
        }
        launcher.OutputDataReceived += (_, e) => Line(e.Data);
        launcher.ErrorDataReceived += (_, e) => Line(e.Data);
        launcher.BeginOutputReadLine();
        launcher.BeginErrorReadLine();
        try
        {
            Assert.True(stepped.Wait(TimeSpan.FromMinutes(2)), $"rank 1 never stepped:\n{text}");
            int worker = Children(launcher.Id).Single(pid => Environ(pid).Contains("RANK=1"));
            var clock = Stopwatch.StartNew();
            using (var w = Process.GetProcessById(worker)) w.Kill();
            Assert.True(launcher.WaitForExit(TimeSpan.FromSeconds(30)), $"the launcher did not stop:\n{text}");
            launcher.WaitForExit();
            output.WriteLine($"stopped {clock.Elapsed.TotalSeconds:F1} s after the kill");
            string all = text.ToString();
            output.WriteLine(all[Math.Max(0, all.Length - 1500)..]);
            Assert.NotEqual(0, launcher.ExitCode);
            Assert.Contains("error: rank 1 failed with exit code", all);     // the launcher's RuntimeFailure (its subject opens the message)
            Assert.Contains("[rank 0] error: rank 0 lost rank 1", all);                        // rank 0's communicator stopped it
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(20), $"took {clock.Elapsed.TotalSeconds:F1} s");
        }
        finally
        {
            if (!launcher.HasExited) launcher.Kill(entireProcessTree: true);
        }
    }

    static IEnumerable<int> Children(int pid) =>
        Directory.EnumerateDirectories("/proc").Select(d => int.TryParse(Path.GetFileName(d), out int p) ? p : -1)
                 .Where(p => p > 0 && ParentOf(p) == pid);

    static int ParentOf(int pid)
    {
        try
        {
            string stat = File.ReadAllText($"/proc/{pid}/stat");
            return int.Parse(stat[(stat.LastIndexOf(')') + 2)..].Split(' ')[1]);   // "pid (comm) state ppid ..."
        }
        catch (IOException) { return -1; }
    }

    static string[] Environ(int pid)
    {
        try { return File.ReadAllText($"/proc/{pid}/environ").Split('\0'); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return []; }
    }
}
