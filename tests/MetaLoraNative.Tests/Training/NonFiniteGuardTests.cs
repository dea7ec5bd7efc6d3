using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Demo;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Training;
using MetaLoraNative.Tests.Model;
using static MetaLoraNative.Tests.Model.TrainingTests;

namespace MetaLoraNative.Tests.Training;

/// <summary>The numeric guard of both stages on the tiny model: NaN data, divergence, poisoned states, skip mode.</summary>
public sealed class NonFiniteGuardTests() : TinyModelTest("guard", 2)
{
    /// <summary>The identity with one NaN in the latents of one example.</summary>
    internal static Identity WithNaN(Identity id, int example)
    {
        var examples = id.Examples.ToList();
        var latents = (float[])examples[example].PackedLatents.Clone();
        latents[3] = float.NaN;
        examples[example] = examples[example] with { PackedLatents = latents };
        return id with { Examples = examples };
    }

    LoraAdapter Down() => LoraAdapter.Create(be, c, FluxNames.LoraTargets(c), LoraMode.Meta, 4, 1, 3);

    Stage2Options S2(int iterations, string? state, float lr = 1e-2f, NonFinitePolicy policy = NonFinitePolicy.Stop, int maxSkips = 10) => new()
    {
        Train = new TrainOptions { LearningRate = lr, BatchSize = 1, Seed = 1, OnNonFinite = policy, MaxNonFiniteSkips = maxSkips },
        Iterations = iterations, Rank2 = 2, StatePath = state, StateEvery = 3,
    };

    Stage1Options S1(int total, string? state, float lr = 2e-3f) => new()
    {
        Train = new TrainOptions { LearningRate = lr, BatchSize = 2, Seed = 9 },
        TotalIterations = total, BucketIterations = 8, WarmupIterations = 3, IdentitiesPerBucket = 2, Rank1 = 4, Rank2 = 1,
        StatePath = state, StateEvery = 2,
    };

    /// <summary>The failure names the step; the state on disk, if any, is from before that step and holds only finite values.</summary>
    void AssertStoppedCleanly(NonFiniteTrainingException e, string state, string what)
    {
        Assert.Matches($@"^non-finite {what} at step \d+ \(last finite state: ", e.Message);
        long step = long.Parse(System.Text.RegularExpressions.Regex.Match(e.Message, @"step (\d+)").Groups[1].Value);
        if (!File.Exists(state))
        {
            Assert.Contains("last finite state: none", e.Message);
            return;
        }
        Assert.Contains($"last finite state: {state}", e.Message);
        using var f = SafetensorsFile.Open(state);
        Assert.True(long.Parse(f.Metadata["metalora.iteration"]) < step);
        foreach (var key in f.Entries.Keys) Assert.All(f.ReadFloats(key), v => Assert.True(float.IsFinite(v), key));
    }

    [Fact]
    public void Stage2StopsAtTheFirstNaNStepOfItsDataAndSavesNothingAfterIt()
    {
        using var down = Down();
        var person = WithNaN(TinyDemo.MakeIdentity(c, "someone", 4, 77), 2);
        string state = Path.Combine(dir, "me.state.safetensors");
        var e = Assert.Throws<NonFiniteTrainingException>(() => Stages.Stage2(m, down, person, S2(40, state), _ => { }));
        Assert.IsAssignableFrom<RuntimeFailure>(e);
        Assert.Equal("Stage 2", e.Subject);
        AssertStoppedCleanly(e, state, "loss");
    }

    [Fact]
    public void Stage1StopsOnNaNDataOfOneIdentity()
    {
        var people = Enumerable.Range(0, 2).Select(k => TinyDemo.MakeIdentity(c, $"p{k}", 3, 5)).ToList();
        people[1] = WithNaN(people[1], 0);
        string state = Path.Combine(dir, "s1.state.safetensors");
        var e = Assert.Throws<NonFiniteTrainingException>(() => Stages.Stage1(m, people, S1(40, state), _ => { }));
        Assert.Equal("Stage 1", e.Subject);
        AssertStoppedCleanly(e, state, "loss");
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void ALearningRateThatDivergesStopsTheRunBeforeAnyNonFiniteStateOrResult(int stage)
    {
        string state = Path.Combine(dir, "x.state.safetensors");
        using var down = Down();
        var people = Enumerable.Range(0, 2).Select(k => TinyDemo.MakeIdentity(c, $"p{k}", 3, 5)).ToList();
        var e = Assert.Throws<NonFiniteTrainingException>(() => stage == 1
            ? Stages.Stage1(m, people, S1(60, state, lr: 1e6f), _ => { })
            : Stages.Stage2(m, down, people[0], S2(60, state, lr: 1e6f), _ => { }));
        Assert.Matches(@"^non-finite (loss|grad norm|factors)", e.Message);
        AssertStoppedCleanly(e, state, "(loss|grad norm|factors)");
    }

    [Fact]
    public void AStateWithNaNAdamMomentsIsRefusedAndLeftUntouched()
    {
        using var down = Down();
        var person = TinyDemo.MakeIdentity(c, "someone", 4, 77);
        string state = Path.Combine(dir, "me.state.safetensors");
        Interrupted(() => Stages.Stage2(m, down, person, S2(8, state), InterruptAt(5)));   // state of 3
        string moment = "";
        SafetensorsEdit.Rewrite(state, (tensors, _) =>
        {
            var t = tensors.First(t => t.Name.StartsWith("adam.v.", StringComparison.Ordinal));
            t.Data[0] = float.NaN;
            moment = t.Name;
        });
        byte[] before = File.ReadAllBytes(state);

        var e = Assert.Throws<InputException>(() => Stages.Stage2(m, down, person, S2(8, state), _ => { }));
        Assert.Equal(state, e.Subject);
        // the state's key is adam.v.identity.N.<factor>; the message names the factor
        Assert.Contains(System.Text.RegularExpressions.Regex.Replace(moment, @"^adam\.v\.(identity\.\d+\.)?", ""), e.Message);
        Assert.Contains("NaN or Inf", e.Message);
        Assert.Equal(before, File.ReadAllBytes(state));
    }

    [Fact]
    public void SkipModeDropsTheNaNStepsContinuesAndResumesBitIdentically()
    {
        using var down = Down();
        var person = WithNaN(TinyDemo.MakeIdentity(c, "someone", 4, 77), 1);
        var lines = new List<string>();
        using var straight = Stages.Stage2(m, down, person, S2(14, null, policy: NonFinitePolicy.Skip, maxSkips: 100), lines.Add);
        int skipped = lines.Count(l => l.EndsWith("skipped (non-finite)", StringComparison.Ordinal));
        Assert.InRange(skipped, 1, 13);
        foreach (var p in straight.Identities[0].Parameters())
            Assert.All(be.Download(p.Value), v => Assert.True(float.IsFinite(v)));
        Assert.Contains(straight.Identities[0].Up, u => be.SumSquares(u.Value) > 0);

        string state = Path.Combine(dir, "me.state.safetensors");
        Interrupted(() => Stages.Stage2(m, down, person, S2(14, state, policy: NonFinitePolicy.Skip, maxSkips: 100), InterruptAt(8)));
        using var resumed = Stages.Stage2(m, down, person, S2(14, state, policy: NonFinitePolicy.Skip, maxSkips: 100), _ => { });
        for (int k = 0; k < straight.Targets.Count; k++)
        {
            Assert.Equal(be.Download(straight.Identities[0].Up[k].Value), be.Download(resumed.Identities[0].Up[k].Value));
            Assert.Equal(be.Download(straight.Identities[0].Mid[k]!.Value), be.Download(resumed.Identities[0].Mid[k]!.Value));
        }
        using var f = SafetensorsFile.Open(state);
        Assert.Equal(skipped.ToString(System.Globalization.CultureInfo.InvariantCulture), f.Metadata[TrainingState.SkippedKey]);
    }

    [Fact]
    public void SkipModeStopsOnceItsLimitIsSpent()
    {
        using var down = Down();
        var person = WithNaN(TinyDemo.MakeIdentity(c, "someone", 4, 77), 1);
        var e = Assert.Throws<NonFiniteTrainingException>(() => Stages.Stage2(m, down, person, S2(40, null, policy: NonFinitePolicy.Skip, maxSkips: 1), _ => { }));
        Assert.Contains("1 non-finite steps were skipped already (--max-nonfinite-skips 1)", e.Message);
        Assert.Contains("last finite state: none", e.Message);
    }
}
