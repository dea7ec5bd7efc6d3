using System.Text.Json;
using MetaLoraNative.Engine.Benchmarks;
using MetaLoraNative.Tests.Cli;

namespace MetaLoraNative.Tests.Training;

/// <summary>The fp8 adoption rule's measurement (LossCurve, `metalora bench loss-curve`): the comparison on made-up curves, and a few-step run on the tiny model.</summary>
public sealed class LossCurveTests : IDisposable
{
    readonly string dir = Directory.CreateTempSubdirectory("metalora-loss-curve-").FullName;
    public void Dispose() => Directory.Delete(dir, recursive: true);

    static LossCurve.Run R(string variant, ulong seed, params double[] losses) => new(variant, seed, losses, LossCurve.Windowed(losses, 2));

    [Fact]
    public void WindowedMeansIncludeTheShortLastWindow()
    {
        Assert.Equal(new[] { 1.5, 3.5, 5.0 }, LossCurve.Windowed([1, 2, 3, 4, 5], 2));
        Assert.Equal(new[] { 2.0 }, LossCurve.Windowed([1, 2, 3], 5));
    }

    [Fact]
    public void AVariantIsWithinWhenEveryWindowsSeedMeanIsWithinTheBf16Spread()
    {
        var o = new LossCurve.Options { Seeds = 2, Steps = 4, Window = 2 };
        var r = LossCurve.Compare(o,
        [
            R("bf16", 1, 1.0, 1.0, 0.8, 0.8), R("bf16", 2, 1.2, 1.2, 0.9, 0.9),   // windows 1.0 / 1.2, 0.8 / 0.9: spread 0.2, 0.1
            R("fp8", 1, 1.1, 1.1, 0.86, 0.86), R("fp8", 2, 1.2, 1.2, 0.9, 0.9),    // seed-means 1.15, 0.88: |Δ| 0.05, 0.03
            R("fp8-w8a8", 1, 1.0, 1.0, 1.0, 1.0), R("fp8-w8a8", 2, 1.2, 1.2, 1.0, 1.0),   // 1.1, 1.0: |Δ| 0, 0.15 > 0.1
        ]);
        Assert.Equal(new[] { 0.2, 0.1 }, r.Bf16Spread.Select(v => Math.Round(v, 12)));
        Assert.Equal(new[] { 1.1, 0.85 }, r.Bf16Means.Select(v => Math.Round(v, 12)));
        var fp8 = Assert.Single(r.Verdicts, v => v.Variant == "fp8");
        Assert.True(fp8.Within);
        Assert.Equal(0.05, fp8.MaxDeviation, 12);
        Assert.Equal(0.3, fp8.WorstRatio, 12);
        var w8a8 = Assert.Single(r.Verdicts, v => v.Variant == "fp8-w8a8");
        Assert.False(w8a8.Within);
        Assert.Equal(1.5, w8a8.WorstRatio, 12);
    }

    [Fact]
    public void OneSeedHasNoSpreadSoOnlyAnIdenticalCurvePasses()
    {
        var o = new LossCurve.Options { Seeds = 1, Steps = 2, Window = 2 };
        var r = LossCurve.Compare(o, [R("bf16", 1, 1, 2), R("fp8", 1, 1, 2), R("fp8-w8a8", 1, 1, 2.000001)]);
        Assert.Equal(new[] { 0.0 }, r.Bf16Spread);
        Assert.True(r.Verdicts[0].Within);
        Assert.False(r.Verdicts[1].Within);
        Assert.True(double.IsPositiveInfinity(r.Verdicts[1].WorstRatio));
        Assert.Contains("null", LossCurve.ToJson(r));                             // ∞ is written as null, not as invalid JSON
        Assert.Throws<ArgumentException>(() => LossCurve.Compare(o, [R("fp8", 1, 1, 2)]));
    }

    [Fact]
    public void TheCommandRunsTheTinyModelAndWritesTheSpreadAsJson()
    {
        string json = Path.Combine(dir, "curve.json");
        var (code, stdout, stderr) = CliRunner.Run("bench", "loss-curve", "--device", "cpu", "--preset", "tiny", "--steps", "4", "--window", "2",
                                                    "--seeds", "2", "--examples", "2", "--json", json);
        Assert.True(code == 0, stderr);
        Assert.Contains("bf16 spread", stdout);
        Assert.Contains("fp8-w8a8", stdout);
        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        var root = doc.RootElement;
        Assert.Equal(4, root.GetProperty("steps").GetInt32());
        var spread = root.GetProperty("bf16_spread").EnumerateArray().Select(e => e.GetDouble()).ToArray();
        Assert.Equal(2, spread.Length);
        Assert.All(spread, s => Assert.True(s > 0, "two seeds gave identical windowed means"));
        var runs = root.GetProperty("runs").EnumerateArray().ToArray();
        Assert.Equal(6, runs.Length);                                             // 3 variants × 2 seeds
        Assert.All(runs, r => Assert.Equal(4, r.GetProperty("losses").GetArrayLength()));
        // same seed, same data: the fp8 runs differ from the bf16 run only by the rounding of the base (and of x)
        double[] Losses(string v, int seed) => [.. runs.Single(r => r.GetProperty("variant").GetString() == v && r.GetProperty("seed").GetInt32() == seed)
                                                      .GetProperty("losses").EnumerateArray().Select(e => e.GetDouble())];
        Assert.NotEqual(Losses("fp8", 1), Losses("fp8-w8a8", 1));
        Assert.NotEqual(Losses("bf16", 1), Losses("fp8", 1));
        var verdicts = root.GetProperty("verdicts").EnumerateArray().ToArray();
        Assert.Equal(new[] { "fp8", "fp8-w8a8" }, verdicts.Select(v => v.GetProperty("variant").GetString()));
        Assert.All(verdicts, v => Assert.Contains(v.GetProperty("within_bf16_spread").ValueKind, new[] { JsonValueKind.True, JsonValueKind.False }));
    }

    [Fact]
    public void TheCommandRefusesAResolutionOffTheTokenGrid()
    {
        var (code, _, stderr) = CliRunner.Run("bench", "loss-curve", "--device", "cpu", "--resolution", "40", "--steps", "1");
        Assert.NotEqual(0, code);
        Assert.Contains("--resolution", stderr);
    }
}
