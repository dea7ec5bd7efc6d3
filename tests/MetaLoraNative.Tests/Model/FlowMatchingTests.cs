using MetaLoraNative.Engine.Training;

namespace MetaLoraNative.Tests.Model;

public class FlowMatchingTests
{
    static float[] Draw(TimestepSampling s, int seqLen, int n = 4000) =>
        Enumerable.Range(0, n).Select(i => FlowMatching.SampleTimestep(s, seqLen, 3, i, 0)).ToArray();

    [Fact]
    public void SigmoidSamplingIsLogitNormalAroundOneHalf()
    {
        var t = Draw(TimestepSampling.Sigmoid, 1024);
        Assert.All(t, x => Assert.InRange(x, 0f, 1f));
        var logits = t.Select(x => Math.Log(x / (1 - x))).ToArray();
        double mean = logits.Average(), sd = Math.Sqrt(logits.Select(l => (l - mean) * (l - mean)).Average());
        Assert.InRange(mean, -0.06, 0.06);         // N(0, 1) logits: the mean of 4,000 draws is within 4 standard errors
        Assert.InRange(sd, 0.94, 1.06);
    }

    [Fact]
    public void UniformSamplingCoversTheUnitInterval()
    {
        var t = Draw(TimestepSampling.Uniform, 1024);
        Assert.InRange(t.Average(), 0.48, 0.52);
        Assert.InRange(t.Count(x => x < 0.1f) / (double)t.Length, 0.08, 0.12);
    }

    [Fact]
    public void ShiftFollowsFluxsResolutionDependentMu()
    {
        Assert.Equal(0.5, FlowMatching.Mu(256), 12);
        Assert.Equal(1.15, FlowMatching.Mu(4096), 12);
        // t' = e^mu / (e^mu + 1/t - 1): at t = 0.5 that is the logistic of mu
        Assert.Equal(1 / (1 + Math.Exp(-1.15)), FlowMatching.TimeShift(1.15, 0.5), 12);
        // a 1024² image (4,096 tokens) is pushed towards noise more than a 256-token one
        Assert.True(Draw(TimestepSampling.Shift, 4096).Average() > Draw(TimestepSampling.Shift, 256).Average() + 0.05);
    }

    [Fact]
    public void InterpolationIsTheRectifiedFlowPath()
    {
        var (xt, v) = FlowMatching.Interpolate([2f, -1f], [0.5f, 3f], 0.25f);
        Assert.Equal([0.75f * 2 + 0.25f * 0.5f, 0.75f * -1 + 0.25f * 3], xt);
        Assert.Equal([0.5f - 2f, 3f + 1f], v);
    }

    [Fact]
    public void DrawsDependOnlyOnSeedStepAndSample()
    {
        Assert.Equal(FlowMatching.SampleTimestep(TimestepSampling.Sigmoid, 64, 9, 17, 1), FlowMatching.SampleTimestep(TimestepSampling.Sigmoid, 64, 9, 17, 1));
        Assert.NotEqual(FlowMatching.SampleTimestep(TimestepSampling.Sigmoid, 64, 9, 17, 1), FlowMatching.SampleTimestep(TimestepSampling.Sigmoid, 64, 9, 18, 1));
    }
}

public class SamplerTests
{
    [Fact]
    public void ScheduleRunsFromOneToZeroShiftedLikeFlux()
    {
        var t = MetaLoraNative.Engine.Sampling.FluxSampler.Schedule(4, 4096);
        Assert.Equal(5, t.Length);
        Assert.Equal(1f, t[0]);
        Assert.Equal(0f, t[4]);
        Assert.Equal((float)FlowMatching.TimeShift(1.15, 0.5), t[2], 6);
        Assert.True(t.Zip(t.Skip(1)).All(p => p.First > p.Second));
        var plain = MetaLoraNative.Engine.Sampling.FluxSampler.Schedule(4, 4096, shift: false);
        Assert.Equal([1f, 0.75f, 0.5f, 0.25f, 0f], plain);
    }
}

public class GradientNormTests
{
    [Fact]
    public void TheManyTensorSumOfSquaresIsTheSumOfSingleOnes()
    {
        using var be = MetaLoraNative.Engine.Backends.Cpu.CpuBackend.F64();
        using var a = be.Upload([1f, 2f, -3f], 3);
        using var b = be.Upload([0.5f, 4f], 2);
        Assert.Equal(14.0 + 16.25, be.SumSquares([a, b]));
        Assert.Equal(be.SumSquares(a) + be.SumSquares(b), be.SumSquares([a, b]));
        Assert.Equal(0.0, be.SumSquares(Array.Empty<MetaLoraNative.Engine.Tensor>()));
    }
}
