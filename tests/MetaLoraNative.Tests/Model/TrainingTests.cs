using MetaLoraNative.Engine.Demo;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Training;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Model;

/// <summary>Both stages, their training state and the cached dataset layout, on the tiny model (weights seed 2).</summary>
public sealed class TrainingTests(ITestOutputHelper output) : TinyModelTest("train", 2)
{
    static List<Identity> People(int n) =>
        Enumerable.Range(0, n).Select(k => TinyDemo.MakeIdentity(c, $"p{k}", 3, 5)).ToList();

    Stage1Options S1(int total, string? state) => new()
    {
        Train = new TrainOptions { LearningRate = 2e-3f, BatchSize = 2, Seed = 9 },
        TotalIterations = total, BucketIterations = 8, WarmupIterations = 3, IdentitiesPerBucket = 2, Rank1 = 4, Rank2 = 1,
        StatePath = state, StateEvery = 5,
    };

    /// <summary>A log that kills the run when step <paramref name="step"/> reports (before that step's state save).</summary>
    internal static Action<string> InterruptAt(int step) => line =>
    {
        if (line.StartsWith($"step {step,6}/", StringComparison.Ordinal)) throw new OperationCanceledException($"interrupted at step {step}");
    };

    internal static void Interrupted(Func<IDisposable> run) => Assert.Throws<OperationCanceledException>(() => run().Dispose());

    [Fact]
    public void Stage1ResumedFromItsStateEndsExactlyWhereAnUninterruptedRunEnds()
    {
        var people = People(4);

        using var straight = Stages.Stage1(m, people, S1(20, null), _ => { });
        string state = Path.Combine(dir, "s1.state.safetensors");
        Interrupted(() => Stages.Stage1(m, people, S1(20, state), InterruptAt(12)));    // killed in step 12, state of 10 on disk
        var lines = new List<string>();
        using var resumed = Stages.Stage1(m, people, S1(20, state), lines.Add);
        Assert.Contains(lines, l => l.Contains("resumed Stage 1") && l.Contains("iteration 10"));
        Assert.Equal(10, lines.Count(l => l.StartsWith("step ")));
        for (int t = 0; t < straight.Targets.Count; t++)
            Assert.Equal(be.Download(straight.Down[t].Value), be.Download(resumed.Down[t].Value));
        Assert.Equal(be.Download(straight.Identities[3].Up[0].Value), be.Download(resumed.Identities[3].Up[0].Value));
    }

    [Fact]
    public void WarmupIterationsLeaveTheMetaDownUntouched()
    {
        var o = S1(3, null);
        using var fresh = LoraAdapter.Create(be, c, FluxNames.LoraTargets(c), LoraMode.Meta, 4, 1, o.Train.Seed);
        using var trained = Stages.Stage1(m, People(2), o, _ => { });
        for (int t = 0; t < fresh.Targets.Count; t++)
            Assert.Equal(be.Download(fresh.Down[t].Value), be.Download(trained.Down[t].Value));
        Assert.Contains(trained.Identities[0].Up, u => be.SumSquares(u.Value) > 0);
    }

    [Fact]
    public void Stage2LowersTheLossOnItsIdentityWithDFrozen()
    {
        using var down = LoraAdapter.Create(be, c, FluxNames.LoraTargets(c), LoraMode.Meta, 4, 1, 3);
        var before = down.Down.Select(d => be.Download(d.Value)).ToArray();
        var person = TinyDemo.MakeIdentity(c, "someone", 4, 77);
        var o = new Stage2Options { Train = new TrainOptions { LearningRate = 1e-2f, BatchSize = 1, Seed = 1 }, Iterations = 80, Rank2 = 2 };
        using var personal = Stages.Stage2(m, down, person, o, _ => { });
        double lossBefore = Trainer.Evaluate(m, null, person.Examples, o.Train);
        double lossAfter = Trainer.Evaluate(m, new LoraBinding(personal, [0], false, false), person.Examples, o.Train);
        output.WriteLine($"Stage 2 loss {lossBefore:F5} → {lossAfter:F5}");
        Assert.True(lossAfter < 0.97 * lossBefore, $"loss {lossBefore} → {lossAfter}");
        for (int t = 0; t < down.Targets.Count; t++) Assert.Equal(before[t], be.Download(personal.Down[t].Value));
    }

    [Fact]
    public void CachedExamplesRoundTripThroughTheDatasetLayout()
    {
        var person = TinyDemo.MakeIdentity(c, "x", 3, 1);
        string folder = Path.Combine(dir, "x");
        LatentDataset.SaveIdentity(folder, person);
        var back = LatentDataset.LoadIdentity(folder);
        Assert.Equal("x", back.Name);
        Assert.Equal(3, back.Examples.Count);
        Assert.Equal(person.Examples[2].PackedLatents, back.Examples[2].PackedLatents);
        Assert.Equal(person.Examples[2].T5, back.Examples[2].T5);
        Assert.Equal((4, 4, 8), (back.Examples[0].GridH, back.Examples[0].GridW, back.Examples[0].T5Length));
        using var f = SafetensorsFile.Open(Path.Combine(folder, "0000.safetensors"));
        Assert.Equal(["packed_latents", "pooled", "t5"], f.Entries.Keys.Order(StringComparer.Ordinal));
    }

    [Fact]
    public void DatasetFilesWrittenWithTheOldKeysStillLoad()
    {
        // the layout before the keys were named for what they hold: "latents" (packed) and "txt" (T5)
        var e = TinyDemo.MakeIdentity(c, "old", 1, 3).Examples[0];
        string folder = Path.Combine(dir, "old");
        Directory.CreateDirectory(folder);
        SafetensorsWriter.Write(Path.Combine(folder, "0000.safetensors"),
        [
            new("latents", [e.ImageTokens, 64], e.PackedLatents),
            new("txt", [e.T5Length, c.ContextInDim], e.T5),
            new("pooled", [e.Pooled.Length], e.Pooled),
        ], new Dictionary<string, string> { ["grid_h"] = "4", ["grid_w"] = "4" });
        var back = Assert.Single(LatentDataset.LoadIdentity(folder).Examples);
        Assert.Equal(e.PackedLatents, back.PackedLatents);
        Assert.Equal(e.T5, back.T5);
        Assert.Equal(e.Pooled, back.Pooled);
        Assert.Equal((4, 4, 8), (back.GridH, back.GridW, back.T5Length));
        back.CheckFits(c, "old");
    }

    [Fact]
    public void AStateFileWrittenUnderTheOldMetadataKeyStillResumes()
    {
        var people = People(2);
        using var straight = Stages.Stage1(m, people, S1(9, null), _ => { });
        string state = Path.Combine(dir, "old.state.safetensors");
        Interrupted(() => Stages.Stage1(m, people, S1(9, state), InterruptAt(6)));       // state of 5 on disk
        // rewrite it as the engine wrote states before the rename: the stage under "metalora.checkpoint"
        List<SafetensorsTensor> tensors;
        Dictionary<string, string> meta;
        using (var f = SafetensorsFile.Open(state))
        {
            tensors = f.Entries.Keys.Select(k => new SafetensorsTensor(k, f[k].Shape, f.ReadFloats(k))).ToList();
            meta = new Dictionary<string, string>(f.Metadata);
        }
        Assert.Equal("stage1", meta[TrainingState.StageKey]);
        meta[TrainingState.OldStageKey] = meta[TrainingState.StageKey];
        meta.Remove(TrainingState.StageKey);
        SafetensorsWriter.Write(state, tensors, meta);

        var lines = new List<string>();
        using var resumed = Stages.Stage1(m, people, S1(9, state), lines.Add);
        Assert.Contains(lines, l => l.Contains("resumed Stage 1") && l.Contains("iteration 5"));
        for (int t = 0; t < straight.Targets.Count; t++)
            Assert.Equal(be.Download(straight.Down[t].Value), be.Download(resumed.Down[t].Value));
    }

    [Fact]
    public void TheStateOfTheOtherStageIsAClearErrorNamingTheFile()
    {
        string state = Path.Combine(dir, "s1.state.safetensors");
        using var down = Stages.Stage1(m, People(2), S1(2, state), _ => { });
        var o = new Stage2Options { Train = new TrainOptions { BatchSize = 1, Seed = 1 }, Iterations = 2, StatePath = state };
        var e = Assert.Throws<MetaLoraNative.Engine.InputFileException>(() => Stages.Stage2(m, down, TinyDemo.MakeIdentity(c, "me", 2, 4), o, _ => { }));
        Assert.Equal(state, e.Subject);
        Assert.Contains(state, e.Message);
        Assert.Contains("stage1", e.Message);
    }

    [Fact]
    public void BatchesHaveOneShapeAreGroupedByIdentityAndRepeatForTheSameStream()
    {
        // three identities; the second has examples of another text length, which can never share a batch with the others
        var a = TinyDemo.MakeIdentity(c, "a", 3, 1);
        var b = TinyDemo.MakeIdentity(c, "b", 3, 2);
        var odd = new Identity("odd", b.Examples.Select(e => e with { T5 = e.T5[..(4 * c.ContextInDim)], T5Length = 4 }).ToList());
        var identities = new List<Identity> { a, odd, b };
        var firstIds = new HashSet<int>();
        for (int i = 0; i < 40; i++)
        {
            var (batch, ids) = Batches.Sample(identities, [0, 1, 2], 4, 11, $"batch.{i}");
            Assert.Equal(4, batch.Length);
            Assert.All(batch, e => Assert.True(e.SameShape(batch[0])));
            Assert.Equal(ids.Order(), ids);                                        // grouped by identity
            for (int k = 0; k < 4; k++) Assert.Contains(batch[k], identities[ids[k]].Examples);
            Assert.Equal(ids, Batches.Sample(identities, [0, 1, 2], 4, 11, $"batch.{i}").Ids);
            firstIds.UnionWith(ids);
        }
        Assert.Equal([0, 1, 2], firstIds.Order());                                 // every identity is drawn
        var (one, oneIds) = Batches.Sample(identities, [1], 3, 11, "stage2.batch.0");
        Assert.Equal([1, 1, 1], oneIds);
        Assert.All(one, e => Assert.Contains(e, odd.Examples));
    }

    [Fact]
    public void DemoRunsBothStagesAndWritesLoadableLoras()
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var r = TinyDemo.Run(be, new TinyDemo.Options { OutputDirectory = dir }, output.WriteLine);
        output.WriteLine($"demo: {clock.Elapsed.TotalSeconds:F1} s; stage 1 {r.Stage1Before:F5} → {r.Stage1After:F5}; stage 2 {r.Stage2Before:F5} → {r.Stage2After:F5} (random D: {r.Stage2RandomDown:F5})");
        Assert.True(r.Stage1After < r.Stage1Before);
        Assert.True(r.Stage2After < r.Stage2Before);
        // the point of Stage 1: personalising from the meta-trained D beats personalising from a random one
        Assert.True(r.Stage2After < r.Stage2RandomDown, $"meta D {r.Stage2After} vs random D {r.Stage2RandomDown}");
        using var peft = LoraFiles.Load(r.PeftPath, c, be);
        using var kohya = LoraFiles.Load(r.KohyaPath, c, be);
        Assert.Equal(FluxNames.LoraTargets(c).Count, peft.Targets.Count);
        Assert.Equal(FluxNames.LoraTargets(c).Count, kohya.Targets.Count);
        Assert.Equal(Path.Combine(dir, "new-person.metalora"), r.MetaPath);   // not a *.safetensors a LoRA loader would list
        using var meta = LoraFiles.Load(r.MetaPath, c, be);
        Assert.Equal((LoraMode.Meta, 1), (meta.Mode, meta.Identities.Count));
    }
}
