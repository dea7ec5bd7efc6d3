using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Training;
using MetaLoraNative.Tests.Testing;
using static MetaLoraNative.Tests.Cli.CliRunner;

namespace MetaLoraNative.Tests.Training;

/// <summary>
/// Non-finite inputs through `metalora train`: each run fails with a project error naming the problem (found at load
/// or by the in-training guard) and writes no result. A second run on a locked --out is refused with the pid.
/// </summary>
[Collection("console")]
public sealed class NonFiniteCliTests() : TempFolderTest("guard-cli")
{
    string Data(int identities = 2)
    {
        string data = Path.Combine(dir, "ids");
        var r = Run("data", "synth", "--out", data, "--identities", identities.ToString(System.Globalization.CultureInfo.InvariantCulture), "--images", "2");
        Assert.True(r.Code == 0, r.Err);
        return data;
    }

    string Down(bool nan)
    {
        string path = Path.Combine(dir, nan ? "nan-down.safetensors" : "down.safetensors");
        using var be = CpuBackend.F32();
        using var a = LoraAdapter.Create(be, FluxConfig.Tiny, FluxNames.LoraTargets(FluxConfig.Tiny), LoraMode.Meta, 4, 1, 3);
        if (nan) be.Fill(a.Down[5].Value, float.NaN);
        LoraFiles.SaveMeta(a, null, path);
        return path;
    }

    (int Code, string Out, string Err) Stage2(string down, string data, string output, params string[] more) =>
        Run(["train", "stage2", "--model", "random:tiny:1", "--down", down, "--data", data, "--out", output, "--iterations", "4", "--state-every", "2", .. more]);

    static void AssertFailedWithoutResult((int Code, string Out, string Err) r, string output, params string[] mentions)
    {
        Assert.NotEqual(0, r.Code);
        Assert.True(mentions.Any(m => r.Err.Contains(m, StringComparison.OrdinalIgnoreCase)), r.Err);
        Assert.False(File.Exists(output));
        Assert.False(File.Exists(Path.ChangeExtension(output, ".meta.safetensors")));
        Assert.False(File.Exists(Path.ChangeExtension(output, ".metalora")));
        Assert.False(File.Exists(output + ".lock"));
    }

    [Fact]
    public void NaNInTheMetaDownWritesNoLora()
    {
        string output = Path.Combine(dir, "me.safetensors");
        AssertFailedWithoutResult(Stage2(Down(nan: true), Path.Combine(Data(1), "person000"), output), output, "non-finite", "NaN");
    }

    [Fact]
    public void NaNGuidanceWritesNoLora()
    {
        string output = Path.Combine(dir, "me.safetensors");
        var r = Stage2(Down(nan: false), Path.Combine(Data(1), "person000"), output, "--guidance", "NaN");
        AssertFailedWithoutResult(r, output, "non-finite loss at step 1", "guidance");
    }

    [Fact]
    public void NaNInTheDataWritesNoMetaDown()
    {
        string data = Data();
        string example = Path.Combine(data, "person001", "0001.safetensors");
        SafetensorsEdit.Rewrite(example, (tensors, _) => tensors.First(t => t.Name == "t5").Data[7] = float.PositiveInfinity);
        string output = Path.Combine(dir, "down.safetensors");
        var r = Run("train", "stage1", "--model", "random:tiny:1", "--data", data, "--out", output, "--iterations", "12",
                    "--bucket-iterations", "4", "--identities-per-bucket", "2", "--rank1", "4", "--batch-size", "2", "--state-every", "3");
        AssertFailedWithoutResult(r, output, "non-finite", "NaN", "Inf");
        // refused at load, before any step: bad input naming the file and the tensor
        Assert.Equal(2, r.Code);
        Assert.Contains(example, r.Err);
        Assert.Contains("'t5'", r.Err);
    }

    [Fact]
    public void ARunOnAnOutThatAnotherRunHoldsIsRefusedWithItsPid()
    {
        string data = Path.Combine(Data(1), "person000"), down = Down(nan: false), output = Path.Combine(dir, "me.safetensors");
        using (RunLock.Acquire(output, [], _ => { }))
        {
            var r = Stage2(down, data, output);
            Assert.NotEqual(0, r.Code);
            Assert.Contains($"pid {Environment.ProcessId}", r.Err);
            Assert.False(File.Exists(output));
        }
        var ok = Stage2(down, data, output);
        Assert.True(ok.Code == 0, ok.Err);
        Assert.True(File.Exists(output));
        Assert.False(File.Exists(output + ".lock"));

        // the same command again resumes the finished run; other options are refused, --force-new starts over
        var other = Stage2(down, data, output, "--lr", "1e-3");
        Assert.NotEqual(0, other.Code);
        Assert.Contains("lr: state 0.0004, now 0.001", other.Err);
        var fresh = Stage2(down, data, output, "--lr", "1e-3", "--force-new");
        Assert.True(fresh.Code == 0, fresh.Err);
        Assert.Contains("--force-new", fresh.Out);
    }
}
