using System.Diagnostics;
using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Quantization;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Model;

/// <summary>
/// Loading an fp8 base (FluxLoader, FluxWeights): a bf16 checkpoint quantised tensor by tensor, checkpoints already
/// in fp8 (ComfyUI's unscaled E4M3, musubi's and ComfyUI's scaled fp8) taken as stored, the diffusers layout, bad
/// fp8 files, and the host memory a load needs (measured in a child process under a hard GC heap limit).
/// </summary>
public sealed class Fp8LoadingTests(ITestOutputHelper output) : IDisposable
{
    readonly string dir = Directory.CreateTempSubdirectory("metalora-fp8-").FullName;
    public void Dispose() => Directory.Delete(dir, recursive: true);

    /// <summary>Block linears in a FLUX config: five per stream of a double block, three per single block.</summary>
    internal static int BlockLinears(FluxConfig c) => 10 * c.Depth + 3 * c.DepthSingleBlocks;

    static bool IsBlockLinearWeight(string name) => name.Split('.') is [var kind, _, .., "weight"] && kind is "double_blocks" or "single_blocks";

    string WriteBf16(FluxConfig c, ulong seed, string file = "bf16.safetensors")
    {
        using var be = CpuBackend.F32();
        using var w = FluxWeights.Random(c, be, seed);
        string path = Path.Combine(dir, file);
        FluxLoader.Save(w, path, SafetensorsDType.BF16);
        return path;
    }

    /// <summary>s · e4m3(code) in fp64 from the OCP definition (not the engine's table).</summary>
    static double Decode(byte code, double scale) => IO.HalfPrecisionTests.OcpE4M3(code) * scale;

    [Fact]
    public void ABf16CheckpointLoadsWithItsBlockLinearsQuantizedAndEverythingElseAsStored()
    {
        var c = FluxConfig.Tiny;
        string path = WriteBf16(c, 3);
        using var be = CpuBackend.F64();
        using var bf16 = FluxLoader.Load(path, be);
        using var fp8 = FluxLoader.Load(path, be, null, BaseDType.Fp8, out var report);
        output.WriteLine(report.ToString());
        Assert.Equal(BaseDType.Fp8, fp8.BaseDType);
        Assert.Equal(BlockLinears(c), fp8.QuantizedCount);
        Assert.Equal(BlockLinears(c), report.Quantized);
        foreach (var (name, shape) in c.TensorShapes())
        {
            var stored = bf16.Values(name);
            if (!IsBlockLinearWeight(name))
            {
                Assert.Null(fp8.Quantized(name));
                Assert.Equal(stored, fp8.Values(name));
                continue;
            }
            var q = Fp8Rows.Quantize(stored, shape[0], shape[1], name);
            var expected = q.Codes.Select((code, i) => (float)Decode(code, q.Scale[i / shape[1]])).ToArray();
            Assert.Equal(expected, fp8.Values(name));
        }
        var e = Assert.Throws<InputException>(() => fp8["double_blocks.0.img_attn.qkv.weight"]);
        Assert.Contains("--base-dtype bf16", e.Message);
        Assert.True(report.StagingPeakBytes >= c.TensorShapes().Max(t => Shapes.Numel(t.Shape)) * 4);
    }

    /// <summary>
    /// A checkpoint in fp8 as ComfyUI's flux1-dev-fp8 stores it: every weight matrix in E4M3 without scales (the codes
    /// are the weights), vectors in bf16; optionally under ComfyUI's all-in-one prefix beside other models' tensors.
    /// </summary>
    string WriteComfyFp8(FluxConfig c, ulong seed, string prefix, out Dictionary<string, byte[]> codes)
    {
        codes = [];
        var tensors = new List<SafetensorsTensor>();
        foreach (var (name, shape) in c.TensorShapes())
        {
            var values = RandomWeights.Tensor(name, shape, seed);
            if (shape.Length == 2)
            {
                var q = Fp8Rows.Quantize(values, shape[0], shape[1], name);   // any valid codes will do
                codes[name] = q.Codes;
                tensors.Add(SafetensorsTensor.Float8E4M3(prefix + name, shape, q.Codes));
            }
            else tensors.Add(new SafetensorsTensor(prefix + name, shape, values, SafetensorsDType.BF16));
        }
        if (prefix.Length > 0) tensors.Add(new SafetensorsTensor("first_stage_model.decoder.conv_in.weight", [2, 2], [1, 2, 3, 4]));
        string path = Path.Combine(dir, $"comfy{prefix.Length}.safetensors");
        SafetensorsWriter.Write(path, tensors, c.ToMetadata());
        return path;
    }

    [Theory]
    [InlineData("")]
    [InlineData(FluxLoader.ComfyPrefix)]
    public void AnUnscaledFp8CheckpointLoadsItsCodesAsStored(string prefix)
    {
        var c = FluxConfig.Tiny;
        string path = WriteComfyFp8(c, 4, prefix, out var codes);
        using var be = CpuBackend.F64();
        using var fp8 = FluxLoader.Load(path, be, null, BaseDType.Fp8);
        using var bf16 = FluxLoader.Load(path, be, null, BaseDType.Bf16);
        Assert.Equal(BlockLinears(c), fp8.QuantizedCount);
        foreach (var (name, code) in codes)
        {
            var expected = code.Select(b => (float)Decode(b, 1)).ToArray();   // scale 1: the codes are the weights
            Assert.Equal(expected, fp8.Values(name));
            Assert.Equal(expected, bf16.Values(name));
            Assert.Equal(IsBlockLinearWeight(name), fp8.Quantized(name) != null);
        }
    }

    [Theory]
    [InlineData("scalar")]
    [InlineData("one")]
    [InlineData("rows")]
    [InlineData("rows1")]
    public void AScaledFp8CheckpointAppliesItsScaleWeight(string layout)
    {
        var c = FluxConfig.Micro;
        var tensors = new List<SafetensorsTensor>();
        var expected = new Dictionary<string, (byte[] Codes, float[] Scale)>();
        foreach (var (name, shape) in c.TensorShapes())
        {
            var values = RandomWeights.Tensor(name, shape, 5);
            if (!IsBlockLinearWeight(name))
            {
                tensors.Add(new SafetensorsTensor(name, shape, values));
                continue;
            }
            var q = Fp8Rows.Quantize(values, shape[0], shape[1], name);
            float[] scale = layout is "scalar" or "one" ? [q.Scale.Max()] : q.Scale;
            int[] scaleShape = layout switch { "scalar" => [], "one" => [1], "rows" => [shape[0]], _ => [shape[0], 1] };
            expected[name] = (q.Codes, scale);
            tensors.Add(SafetensorsTensor.Float8E4M3(name, shape, q.Codes));
            tensors.Add(new SafetensorsTensor(name[..^".weight".Length] + ".scale_weight", scaleShape, scale));
        }
        string path = Path.Combine(dir, "scaled.safetensors");
        SafetensorsWriter.Write(path, tensors, c.ToMetadata());
        using var be = CpuBackend.F64();
        using var fp8 = FluxLoader.Load(path, be, null, BaseDType.Fp8);
        using var bf16 = FluxLoader.Load(path, be, null, BaseDType.Bf16);
        foreach (var (name, (codes, scale)) in expected)
        {
            int cols = codes.Length / fp8.Quantized(name)!.Rows;
            var exact = codes.Select((b, i) => Decode(b, scale[scale.Length == 1 ? 0 : i / cols])).ToArray();
            using var held = be.Dequantize(fp8.Quantized(name)!);
            Assert.Equal(exact, be.DownloadDouble(held));                                     // codes and scales as stored
            Assert.Equal(exact.Select(v => (float)v).ToArray(), bf16.Values(name));         // decoded and scaled in fp32
        }
    }

    [Fact]
    public void BadFp8CheckpointsFailNamingTheFileAndTheTensor()
    {
        var c = FluxConfig.Micro;
        const string target = "single_blocks.0.linear2.weight";
        string Write(string file, Func<string, int[], float[], IEnumerable<SafetensorsTensor>> make)
        {
            string path = Path.Combine(dir, file);
            SafetensorsWriter.Write(path, c.TensorShapes().SelectMany(t => make(t.Name, t.Shape, RandomWeights.Tensor(t.Name, t.Shape, 1))), c.ToMetadata());
            return path;
        }
        using var be = CpuBackend.F32();

        string nan = Write("nan.safetensors", (name, shape, v) =>
        {
            if (name != target) return [new SafetensorsTensor(name, shape, v)];
            var codes = Fp8Rows.Quantize(v, shape[0], shape[1], name).Codes;
            codes[3] = 0x7F;
            return [SafetensorsTensor.Float8E4M3(name, shape, codes)];
        });
        var e = Assert.Throws<InvalidDataException>(() => FluxLoader.Load(nan, be, null, BaseDType.Fp8));
        Assert.Contains(nan, e.Message);
        Assert.Contains(target, e.Message);
        Assert.Contains("NaN", e.Message);

        string blockwise = Write("blockwise.safetensors", (name, shape, v) =>
            name != target ? [new SafetensorsTensor(name, shape, v)]
                : [SafetensorsTensor.Float8E4M3(name, shape, new byte[v.Length]),
                   new SafetensorsTensor("single_blocks.0.linear2.scale_weight", [shape[0], 2, 1], new float[shape[0] * 2])]);
        foreach (var dtype in new[] { BaseDType.Fp8, BaseDType.Bf16 })
        {
            e = Assert.Throws<InvalidDataException>(() => FluxLoader.Load(blockwise, be, null, dtype));
            Assert.Contains("single_blocks.0.linear2.scale_weight", e.Message);
            Assert.Contains("block-wise", e.Message);
        }
    }

    [Fact]
    public void ADiffusersCheckpointLoadsAsFp8LikeItsBflTwin()
    {
        var c = FluxConfig.Tiny;
        string folder = CheckpointLayoutTests.WriteDiffusers(dir, c, 8);
        using var be = CpuBackend.F64();
        using var random = FluxWeights.Random(c, be, 8);
        string bfl = Path.Combine(dir, "twin.safetensors");
        FluxLoader.Save(random, bfl);
        using var fromDiffusers = FluxLoader.Load(folder, be, null, BaseDType.Fp8);
        using var fromBfl = FluxLoader.Load(bfl, be, null, BaseDType.Fp8);
        Assert.Equal(BlockLinears(c), fromDiffusers.QuantizedCount);
        foreach (var (name, _) in c.TensorShapes()) Assert.Equal(fromBfl.Values(name), fromDiffusers.Values(name));
    }

    /// <summary>
    /// The host never holds a full copy of the model: a checkpoint written in bf16 is loaded with --base-dtype fp8 by
    /// the CLI in a child process whose GC heap is capped (DOTNET_GCHeapHardLimit: any allocation beyond it after a
    /// full collection is an OutOfMemoryException), so the cap is a measured bound on the peak of live managed memory.
    /// On the CPU backend the model itself lives in that heap, so the bound is
    ///   the fp8 model (codes, scales, the rest in fp32) + the largest tensor in fp32 (the one in flight) + a margin,
    /// the margin (32 MiB) covering the runtime, the command line, the bench's LoRA adapter and its batch (--vram 64
    /// only lifts the planner's budget above the heap limit: the bench plans a step it will not run). The same
    /// load with a bf16 base (the whole model in fp32) must fail under the same cap, which shows the cap bites.
    /// The model is hidden 512 over 2 + 2 blocks (27 M parameters), large enough for a full copy to exceed the bound.
    /// </summary>
    [Fact]
    public void LoadingAsFp8KeepsTheHostPeakUnderTheFp8ModelPlusOneTensor()
    {
        var c = FluxConfig.Tiny with { Name = "custom", HiddenSize = 512, NumHeads = 8, MlpHiddenDim = 2048, AxesDim = [16, 24, 24] };
        string path = WriteBf16(c, 1, "custom-bf16.safetensors");
        long fp8Model = 0, fp32Model = 0, largest = 0;
        foreach (var (name, shape) in c.TensorShapes())
        {
            long n = Shapes.Numel(shape);
            fp8Model += IsBlockLinearWeight(name) ? n + 4L * shape[0] : 4 * n;
            fp32Model += 4 * n;
            largest = Math.Max(largest, 4 * n);
        }
        const long margin = 32L << 20;
        long bound = fp8Model + largest + margin;
        output.WriteLine($"fp8 model {fp8Model >> 20} MiB, largest tensor {largest >> 20} MiB, bound {bound >> 20} MiB, fp32 model {fp32Model >> 20} MiB");
        Assert.True(fp32Model > bound, "the test model is too small for a full copy to break the bound");

        var fp8 = RunCli(bound, "bench", "--device", "cpu", "--weights", path, "--base-dtype", "fp8", "--recompute", "on",
                         "--resolution", "512", "--txt", "16", "--steps", "0", "--warmup", "0", "--vram", "64");
        output.WriteLine(fp8.Out);
        Assert.True(fp8.Code == 0, $"fp8 load under a {bound >> 20} MiB heap failed:\n{fp8.Err}");
        Assert.Contains("block linears in fp8", fp8.Out);
        Assert.Contains("peak working set", fp8.Out);

        var bf16 = RunCli(bound, "bench", "--device", "cpu", "--weights", path, "--base-dtype", "bf16", "--recompute", "on",
                          "--resolution", "512", "--txt", "16", "--steps", "0", "--warmup", "0", "--vram", "64");
        Assert.NotEqual(0, bf16.Code);
        Assert.Contains("OutOfMemory", bf16.Err);
    }

    /// <summary>Runs the metalora CLI next to the test assembly in a child process with its GC heap capped.</summary>
    static (int Code, string Out, string Err) RunCli(long heapLimit, params string[] args)
    {
        var start = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "metalora.dll"));
        foreach (var a in args) start.ArgumentList.Add(a);
        start.Environment["DOTNET_GCHeapHardLimit"] = $"0x{heapLimit:X}";
        using var p = Process.Start(start)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        p.WaitForExit();
        return (p.ExitCode, stdout.Result, stderr.Result);
    }
}
