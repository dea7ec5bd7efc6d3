using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Flux;
using Xunit;

namespace MetaLoraNative.Tests.Model;

public class FusionSettingsTests
{
    [Theory]
    [InlineData(null, Fusions.None)]
    [InlineData("", Fusions.None)]
    [InlineData("none", Fusions.None)]
    [InlineData("all", Fusions.All)]
    [InlineData("qkv", Fusions.QkvNormRope)]
    [InlineData("qkv, gelu", Fusions.QkvNormRope | Fusions.GeluEpilogue)]
    [InlineData("residual-norm,gelu,qkv", Fusions.All)]
    public void Parses_names_and_lists(string? text, Fusions expected) => Assert.Equal(expected, FusionSettings.Parse(text));

    [Fact]
    public void An_unknown_name_is_an_error_naming_the_setting_and_the_choices()
    {
        var e = Assert.Throws<InputException>(() => FusionSettings.Parse("qkv,rope"));
        Assert.Equal("METALORA_FUSE", e.Subject);
        Assert.Contains("'rope'", e.Message);
        Assert.Contains("residual-norm", e.Message);
    }

    [Fact]
    public void Format_round_trips()
    {
        foreach (var f in new[] { Fusions.None, Fusions.All, Fusions.ResidualNorm, Fusions.QkvNormRope | Fusions.GeluEpilogue })
            Assert.Equal(f, FusionSettings.Parse(FusionSettings.Format(f)));
    }
}

public class BenchFuseFlagTests
{
    [Fact]
    public void AnUnknownFusionOnTheCommandLineIsAnErrorNamingTheFlag()
    {
        var (code, _, err) = MetaLoraNative.Tests.Cli.CliRunner.Run("bench", "--device", "cpu", "--preset", "tiny", "--fuse", "qkv,rope");
        Assert.Equal(2, code);
        Assert.Contains("--fuse", err);
        Assert.Contains("'rope'", err);
    }
}
