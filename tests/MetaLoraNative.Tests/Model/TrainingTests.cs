using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Demo;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Training;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Model;

public sealed class TrainingTests(ITestOutputHelper output) : IDisposable
{
    readonly string dir = Directory.CreateTempSubdirectory("metalora-train-").FullName;
    public void Dispose() => Directory.Delete(dir, recursive: true);

    static List<Identity> People(FluxConfig c, int n) =>
        Enumerable.Range(0, n).Select(k => TinyDemo.MakeIdentity(c, $"p{k}", 3, 5)).ToList();

    Stage1Options S1(int total, string? state) => new()
    {
        Train = new TrainOptions { LearningRate = 2e-3f, BatchSize = 2, Seed = 9 },
        TotalIterations = total, BucketIterations = 8, WarmupIterations = 3, IdentitiesPerBucket = 2, Rank1 = 4, Rank2 = 1,
        CheckpointPath = state, CheckpointEvery = 5,
    };

    [Fact]
    public void Stage1ResumedFromItsCheckpointEndsExactlyWhereAnUninterruptedRunEnds()
    {
        using var be = CpuBackend.F32();
        var c = FluxConfig.Tiny;
        using var w = FluxWeights.Random(c, be, 2);
        var m = new FluxModel(w);
        var people = People(c, 4);

        using var straight = Stages.Stage1(m, people, S1(20, null), _ => { });
        string state = Path.Combine(dir, "s1.state.safetensors");
        using (Stages.Stage1(m, people, S1(12, state), _ => { })) { }      // "interrupted" after 12
        var lines = new List<string>();
        using var resumed = Stages.Stage1(m, people, S1(20, state), lines.Add);
        Assert.Contains(lines, l => l.Contains("resumed Stage 1") && l.Contains("iteration 12"));
        Assert.Equal(8, lines.Count(l => l.StartsWith("step ")));
        for (int t = 0; t < straight.Targets.Count; t++)
            Assert.Equal(be.Download(straight.Down[t].Value), be.Download(resumed.Down[t].Value));
        Assert.Equal(be.Download(straight.Identities[3].Up[0].Value), be.Download(resumed.Identities[3].Up[0].Value));
    }

    [Fact]
    public void WarmupIterationsLeaveTheMetaDownUntouched()
    {
        using var be = CpuBackend.F32();
        var c = FluxConfig.Tiny;
        using var w = FluxWeights.Random(c, be, 2);
        var m = new FluxModel(w);
        var o = S1(3, null);
        using var fresh = LoraAdapter.Create(be, c, FluxNames.LoraTargets(c), LoraMode.Meta, 4, 1, o.Train.Seed);
        using var trained = Stages.Stage1(m, People(c, 2), o, _ => { });
        for (int t = 0; t < fresh.Targets.Count; t++)
            Assert.Equal(be.Download(fresh.Down[t].Value), be.Download(trained.Down[t].Value));
        Assert.Contains(trained.Identities[0].Up, u => be.SumSquares(u.Value) > 0);
    }

    [Fact]
    public void Stage2LowersTheLossOnItsIdentityWithDFrozen()
    {
        using var be = CpuBackend.F32();
        var c = FluxConfig.Tiny;
        using var w = FluxWeights.Random(c, be, 2);
        var m = new FluxModel(w);
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
        var person = TinyDemo.MakeIdentity(FluxConfig.Tiny, "x", 3, 1);
        string folder = Path.Combine(dir, "x");
        LatentDataset.SaveIdentity(folder, person);
        var back = LatentDataset.LoadIdentity(folder);
        Assert.Equal("x", back.Name);
        Assert.Equal(3, back.Examples.Count);
        Assert.Equal(person.Examples[2].Latents, back.Examples[2].Latents);
        Assert.Equal(person.Examples[2].Txt, back.Examples[2].Txt);
        Assert.Equal((4, 4, 8), (back.Examples[0].GridH, back.Examples[0].GridW, back.Examples[0].TxtLength));
    }

    [Fact]
    public void DemoRunsBothStagesAndWritesLoadableLoras()
    {
        using var be = CpuBackend.F32();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var r = TinyDemo.Run(be, new TinyDemo.Options { OutputDirectory = dir }, output.WriteLine);
        output.WriteLine($"demo: {clock.Elapsed.TotalSeconds:F1} s; stage 1 {r.Stage1Before:F5} → {r.Stage1After:F5}; stage 2 {r.Stage2Before:F5} → {r.Stage2After:F5} (random D: {r.Stage2RandomDown:F5})");
        Assert.True(r.Stage1After < r.Stage1Before);
        Assert.True(r.Stage2After < r.Stage2Before);
        // the point of Stage 1: personalising from the meta-trained D beats personalising from a random one
        Assert.True(r.Stage2After < r.Stage2RandomDown, $"meta D {r.Stage2After} vs random D {r.Stage2RandomDown}");
        using var peft = LoraFiles.Load(r.PeftPath, FluxConfig.Tiny, be);
        using var kohya = LoraFiles.Load(r.KohyaPath, FluxConfig.Tiny, be);
        Assert.Equal(FluxNames.LoraTargets(FluxConfig.Tiny).Count, peft.Targets.Count);
    }
}
