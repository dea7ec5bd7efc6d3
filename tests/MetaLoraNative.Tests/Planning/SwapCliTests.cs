using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Tests.Testing;
using static MetaLoraNative.Tests.Cli.CliRunner;

namespace MetaLoraNative.Tests.Planning;

/// <summary>
/// --base-dtype and --swap-blocks through `metalora train stage2`: the run loads as asked, logs the swap and its first
/// step's copies, records the base dtype in the LoRA's metadata and its state, and a resume with another is refused.
/// </summary>
[Collection("console")]
public sealed class SwapCliTests() : TempFolderTest("swap-cli")
{
    [Fact]
    public void Stage2WithAnFp8BaseAndSwapRecordsTheBaseDTypeAndRefusesAResumeWithAnother()
    {
        var synth = Run("data", "synth", "--out", Path.Combine(dir, "ids"), "--identities", "1", "--images", "2");
        Assert.True(synth.Code == 0, synth.Err);
        string data = Path.Combine(dir, "ids", "person000"), down = Path.Combine(dir, "down.safetensors"), output = Path.Combine(dir, "me.safetensors");
        using (var be = CpuBackend.F32())
        using (var a = LoraAdapter.Create(be, FluxConfig.Tiny, FluxNames.LoraTargets(FluxConfig.Tiny), LoraMode.Meta, 4, 1, 3))
            LoraFiles.SaveMeta(a, null, down);
        (int Code, string Out, string Err) Stage2(int iterations, string dtype) =>
            Run("train", "stage2", "--model", "random:tiny:1", "--down", down, "--data", data, "--out", output, "--iterations", $"{iterations}",
                "--state-every", "1", "--base-dtype", dtype, "--swap-blocks", "3");

        var r = Stage2(2, "fp8");
        Assert.True(r.Code == 0, r.Err);
        string log = r.Out + r.Err;
        Assert.Contains("block swap: 3 blocks in host memory (2 double, 1 single", log);
        Assert.Contains("first step: block swap: 3 block copies", log);
        using (var f = SafetensorsFile.Open(output)) Assert.Equal("fp8", f.Metadata["metalora.base_dtype"]);

        var resumed = Stage2(3, "bf16");
        Assert.Equal(2, resumed.Code);
        Assert.Contains("base_dtype: state fp8, now bf16", resumed.Err);
    }
}
