namespace MetaLoraNative.Tests;

public class SmokeTests
{
    [Fact]
    public void ShapesResolveInferredDimension() =>
        Assert.Equal(new[] { 2, 6 }, MetaLoraNative.Engine.Shapes.Resolve(new[] { 2, -1 }, 12));
}
