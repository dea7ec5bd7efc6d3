using MetaLoraNative.Engine.Distributed;

namespace MetaLoraNative.Tests.Distributed;

public class DistributedConfigTests
{
    static DistributedConfig? Parse(params (string Name, string Value)[] vars)
    {
        var env = vars.ToDictionary(v => v.Name, v => v.Value);
        return DistributedConfig.Parse(name => env.GetValueOrDefault(name));
    }

    [Fact]
    public void ReadsTheTorchrunVariables()
    {
        var c = Parse(("RANK", "3"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "3"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500"))!;
        Assert.Equal(new DistributedConfig(3, 8, 3, "127.0.0.1", 29500), c);
        Assert.Equal(3, c.DeviceOrdinal);   // torchrun's convention: the GPU is LOCAL_RANK
    }

    [Fact]
    public void SlurmVariablesStandInForTheRanks()
    {
        var c = Parse(("SLURM_PROCID", "1"), ("SLURM_NTASKS", "2"), ("SLURM_LOCALID", "1"), ("MASTER_ADDR", "localhost"), ("MASTER_PORT", "1234"))!;
        Assert.Equal((1, 2, 1, 1234), (c.Rank, c.WorldSize, c.LocalRank, c.MasterPort));
    }

    [Fact]
    public void NoVariablesMeansASingleProcessRun()
    {
        Assert.Null(Parse());
        Assert.Equal(DistributedConfig.Single, Parse(("RANK", "0"), ("WORLD_SIZE", "1")));
    }

    [Fact]
    public void TheDeviceComesFromMetaloraDeviceThenAOneGpuVisibleListThenLocalRank()
    {
        var baseVars = new[] { ("RANK", "2"), ("WORLD_SIZE", "4"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500") };
        Assert.Equal(2, Parse(baseVars)!.DeviceOrdinal);   // LOCAL_RANK defaults to RANK
        Assert.Equal(0, Parse([.. baseVars, ("CUDA_VISIBLE_DEVICES", "5")])!.DeviceOrdinal);
        Assert.Equal(2, Parse([.. baseVars, ("CUDA_VISIBLE_DEVICES", "4,5,6,7")])!.DeviceOrdinal);
        Assert.Equal(6, Parse([.. baseVars, ("CUDA_VISIBLE_DEVICES", "5"), ("METALORA_DEVICE", "6")])!.DeviceOrdinal);
    }

    [Fact]
    public void TheEnvironmentRoundTrips()
    {
        var c = new DistributedConfig(1, 4, 1, "127.0.0.1", 29511, Device: 3);
        var env = c.ToEnvironment();
        Assert.Equal(c, DistributedConfig.Parse(name => env.GetValueOrDefault(name)));
    }

    [Theory]
    [InlineData("RANK", "x", "RANK='x' is not an integer")]
    [InlineData("RANK", "4", "RANK=4 is out of range; it must lie in [0, 3] of WORLD_SIZE=4")]
    [InlineData("WORLD_SIZE", "0", "WORLD_SIZE=0 is out of range")]
    [InlineData("LOCAL_RANK", "-1", "LOCAL_RANK=-1 is out of range")]
    [InlineData("MASTER_PORT", "70000", "MASTER_PORT=70000 is out of range; it must lie in [1, 65535]")]
    [InlineData("MASTER_PORT", "", "MASTER_PORT is not set")]
    [InlineData("MASTER_ADDR", " ", "MASTER_ADDR is not set")]
    [InlineData("WORLD_SIZE", "", "WORLD_SIZE is not set but RANK is")]
    [InlineData("METALORA_DEVICE", "gpu0", "METALORA_DEVICE='gpu0' is not an integer")]
    public void BadValuesNameTheVariable(string name, string value, string message)
    {
        var env = new Dictionary<string, string>
        {
            ["RANK"] = "1", ["WORLD_SIZE"] = "4", ["LOCAL_RANK"] = "1", ["MASTER_ADDR"] = "127.0.0.1", ["MASTER_PORT"] = "29500",
            [name] = value,
        };
        var e = Assert.Throws<MetaLoraNative.Engine.InputException>(() => DistributedConfig.Parse(n => env.GetValueOrDefault(n)));
        Assert.Contains(message, e.Message);
    }
}

public class BucketPlanTests
{
    [Fact]
    public void TensorsAreLaidEndToEndAndSplitAtBucketEdges()
    {
        var plan = BucketPlan.Build([5, 0, 7, 2], maxElements: 4);
        Assert.Equal([4, 4, 4, 2], plan.Select(b => b.Elements));
        Assert.Equal([new BucketSegment(0, 0, 0, 4)], plan[0].Segments);
        Assert.Equal([new BucketSegment(0, 4, 0, 1), new BucketSegment(2, 0, 1, 3)], plan[1].Segments);
        Assert.Equal([new BucketSegment(2, 3, 0, 4)], plan[2].Segments);
        Assert.Equal([new BucketSegment(3, 0, 0, 2)], plan[3].Segments);
        // every element of every tensor is covered exactly once
        long[] lengths = [5, 0, 7, 2];
        for (int t = 0; t < lengths.Length; t++)
            Assert.Equal(lengths[t], plan.SelectMany(b => b.Segments).Where(s => s.Tensor == t).Sum(s => s.Count));
        Assert.Empty(BucketPlan.Build([0, 0], 4));
        Assert.Throws<ArgumentException>(() => BucketPlan.Build([1], 0));
    }
}
