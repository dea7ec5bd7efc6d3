using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Demo;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Training;
using MetaLoraNative.Tests.Model;
using static MetaLoraNative.Tests.Model.TrainingTests;

namespace MetaLoraNative.Tests.Training;

/// <summary>A state belongs to the run that wrote it: other options are refused, --force-new starts over, old states still resume.</summary>
public sealed class RunOwnershipTests() : TinyModelTest("owner", 2)
{
    Stage2Options S2(string state, float lr = 1e-2f, int iterations = 8, ulong seed = 1, bool forceNew = false) => new()
    {
        Train = new TrainOptions { LearningRate = lr, BatchSize = 1, Seed = seed, ForceNew = forceNew },
        Iterations = iterations, Rank2 = 2, StatePath = state, StateEvery = 3,
    };

    readonly Identity person = TinyDemo.MakeIdentity(c, "someone", 3, 77);
    string State => Path.Combine(dir, "me.state.safetensors");

    LoraAdapter Down(ulong seed = 3) => LoraAdapter.Create(be, c, FluxNames.LoraTargets(c), LoraMode.Meta, 4, 1, seed);

    [Fact]
    public void AResumeWithOtherOptionsIsRefusedListingEveryDifference()
    {
        using var down = Down();
        string state = State;
        using (Stages.Stage2(m, down, person, S2(state), _ => { })) { }
        byte[] before = File.ReadAllBytes(state);

        var e = Assert.Throws<InputException>(() => Stages.Stage2(m, down, person, S2(state, lr: 1e-3f, iterations: 6, seed: 5), _ => { }));
        Assert.Equal(state, e.Subject);
        Assert.Contains("lr: state 0.01, now 0.001", e.Message);
        Assert.Contains("iterations: state 8, now 6", e.Message);   // fewer: the state is past the new end
        // more iterations extend the same run and are no difference
        Assert.DoesNotContain("iterations", Assert.Throws<InputException>(() => Stages.Stage2(m, down, person, S2(state, lr: 1e-3f, iterations: 12), _ => { })).Message);
        Assert.Contains("seed: state 1, now 5", e.Message);
        Assert.DoesNotContain("rank2", e.Message);
        Assert.Equal(before, File.ReadAllBytes(state));

        // other data and another Meta-Down are other runs too
        var other = TinyDemo.MakeIdentity(c, "someone", 3, 78);
        Assert.Contains("data: state", Assert.Throws<InputException>(() => Stages.Stage2(m, down, other, S2(state), _ => { })).Message);
        using var down2 = Down(seed: 4);
        Assert.Contains("down: state", Assert.Throws<InputException>(() => Stages.Stage2(m, down2, person, S2(state), _ => { })).Message);
    }

    [Fact]
    public void ForceNewMovesTheOldStateAsideAndTrainsFromTheStart()
    {
        using var down = Down();
        string state = State;
        using (Stages.Stage2(m, down, person, S2(state), _ => { })) { }
        byte[] old = File.ReadAllBytes(state);

        var lines = new List<string>();
        using var fresh = Stages.Stage2(m, down, person, S2(state, lr: 1e-3f, forceNew: true), lines.Add);
        Assert.Contains(lines, l => l.Contains("--force-new") && l.Contains(state + ".old"));
        Assert.Equal(8, lines.Count(l => l.StartsWith("step ", StringComparison.Ordinal)));
        Assert.Equal(old, File.ReadAllBytes(state + ".old"));
        using var straight = Stages.Stage2(m, down, person, S2(state, lr: 1e-3f) with { StatePath = null }, _ => { });
        Assert.Equal(be.Download(straight.Identities[0].Up[0].Value), be.Download(fresh.Identities[0].Up[0].Value));
    }

    [Fact]
    public void AStateWithoutARunRecordStillResumesWithAWarning()
    {
        using var down = Down();
        string state = State;
        using var straight = Stages.Stage2(m, down, person, S2(state) with { StatePath = null }, _ => { });
        Interrupted(() => Stages.Stage2(m, down, person, S2(state), InterruptAt(5)));
        SafetensorsEdit.Rewrite(state, (_, meta) =>
        {
            Assert.True(meta.Remove(RunIdentity.MetadataKey));
            Assert.True(meta.Remove(TrainingState.SkippedKey));
        });

        var lines = new List<string>();
        using var resumed = Stages.Stage2(m, down, person, S2(state), lines.Add);
        Assert.Contains(lines, l => l.StartsWith("warning:", StringComparison.Ordinal) && l.Contains(state));
        Assert.Contains(lines, l => l.Contains("resumed Stage 2") && l.Contains("iteration 3"));
        Assert.Equal(be.Download(straight.Identities[0].Up[0].Value), be.Download(resumed.Identities[0].Up[0].Value));
    }
}
