using System.Diagnostics;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Debugging;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Reference;

/// <summary>
/// The whole model against the independent PyTorch reference (tools/reference), on the tiny preset: output, loss and
/// every LoRA factor gradient. Needs Debian's python3-torch (.ci/install-torch.sh); skips and says so without it.
///   fp64 engine vs fp64 reference: relative L2 ≤ 1e-6 per tensor (both compute in fp64; files hold fp32).
///   fp32 engine vs fp64 reference: ≤ max(1e-4, 2 × PyTorch fp32's own error) per tensor.
/// </summary>
public sealed class TorchReferenceTests(ITestOutputHelper output) : IDisposable
{
    readonly string dir = Directory.CreateTempSubdirectory("metalora-ref-").FullName;
    public void Dispose() => Directory.Delete(dir, recursive: true);

    internal static string Python => Environment.GetEnvironmentVariable("METALORA_PYTHON") ?? "/usr/bin/python3";

    internal static string Repo
    {
        get
        {
            var d = new DirectoryInfo(AppContext.BaseDirectory);
            while (d != null && !File.Exists(Path.Combine(d.FullName, "MetaLoraNative.sln"))) d = d.Parent;
            return d?.FullName ?? throw new InvalidOperationException("repository root not found");
        }
    }

    internal static (int Code, string Output) Run(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = Repo };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(300_000)) { p.Kill(true); return (-1, "timed out"); }
        return (p.ExitCode, stdout.Result + stderr.Result);
    }

    internal static string? TorchMissing()
    {
        if (!File.Exists(Python)) return $"{Python} not found (install python3-torch with .ci/install-torch.sh)";
        var (code, text) = Run(Python, "-c", "import torch, numpy");
        return code == 0 ? null : $"PyTorch is not importable by {Python}: {text.Trim().Split('\n').Last()}";
    }

    [SkippableTheory]
    [InlineData(false)]
    [InlineData(true)]
    public void TinyModelMatchesThePyTorchReference(bool standardLora)
    {
        var missing = TorchMissing();
        Skip.If(missing != null, missing);
        string ref_ = Path.Combine(Repo, "tools", "reference");
        var caseArgs = new List<string> { Path.Combine(ref_, "make_case.py"), "--preset", "tiny", "--seed", "5", "--out", dir };
        if (standardLora) caseArgs.Add("--standard");
        Assert.Equal(0, Run(Python, [.. caseArgs]).Code);
        string model = Path.Combine(dir, "model.safetensors"), inputs = Path.Combine(dir, "inputs.safetensors"), lora = Path.Combine(dir, "lora.safetensors");

        foreach (var dtype in new[] { "fp64", "fp32" })
        {
            var (code, text) = Run(Python, Path.Combine(ref_, "step.py"), "--model", model, "--inputs", inputs, "--lora", lora,
                                   "--out", Path.Combine(dir, $"torch-{dtype}.safetensors"), "--dtype", dtype);
            Assert.True(code == 0, text);
        }
        using (var f64 = CpuBackend.F64()) ReferenceStep.Run(model, inputs, lora, Path.Combine(dir, "ours-fp64.safetensors"), f64);
        using (var f32 = CpuBackend.F32()) ReferenceStep.Run(model, inputs, lora, Path.Combine(dir, "ours-fp32.safetensors"), f32);

        var exact = Run(Python, Path.Combine(ref_, "compare.py"), Path.Combine(dir, "ours-fp64.safetensors"), Path.Combine(dir, "torch-fp64.safetensors"),
                        "--rtol", "1e-6", "--strict", "--quiet");
        output.WriteLine("fp64 engine vs fp64 reference: " + exact.Output.Trim().Split('\n').Last());
        Assert.True(exact.Code == 0, exact.Output);

        var fp32 = Run(Python, Path.Combine(ref_, "compare.py"), Path.Combine(dir, "ours-fp32.safetensors"), Path.Combine(dir, "torch-fp64.safetensors"),
                       "--baseline", Path.Combine(dir, "torch-fp32.safetensors"), "--strict", "--quiet");
        output.WriteLine("fp32 engine vs fp64 reference (tolerance from PyTorch fp32): " + fp32.Output.Trim().Split('\n').Last());
        Assert.True(fp32.Code == 0, fp32.Output);
    }
}

/// <summary>
/// Our merged PEFT export, loaded by the independent reference (its own target table), gives the output the unmerged
/// three-factor LoRA gives in our engine: the file means to another implementation what it means to us.
/// </summary>
public sealed class ExportedLoraInTheReferenceTests(ITestOutputHelper output) : IDisposable
{
    readonly string dir = Directory.CreateTempSubdirectory("metalora-peft-").FullName;
    public void Dispose() => Directory.Delete(dir, recursive: true);

    [SkippableFact]
    public void ThePyTorchReferenceReadsOurPeftExportAsTheThreeFactorLora()
    {
        var missing = TorchReferenceTests.TorchMissing();
        Skip.If(missing != null, missing);
        string tools = Path.Combine(TorchReferenceTests.Repo, "tools", "reference");
        Assert.Equal(0, TorchReferenceTests.Run(TorchReferenceTests.Python, Path.Combine(tools, "make_case.py"), "--preset", "tiny", "--seed", "8", "--out", dir).Code);
        string model = Path.Combine(dir, "model.safetensors"), inputs = Path.Combine(dir, "inputs.safetensors");
        string meta = Path.Combine(dir, "lora.safetensors"), peft = Path.Combine(dir, "peft.safetensors");

        using (var be = MetaLoraNative.Engine.Backends.Cpu.CpuBackend.F64())
        {
            using var adapter = MetaLoraNative.Engine.Lora.LoraFiles.Load(meta, MetaLoraNative.Engine.Flux.FluxConfig.Tiny, be);
            MetaLoraNative.Engine.Lora.LoraFiles.Export(adapter, 0, peft, MetaLoraNative.Engine.Lora.LoraFormat.Peft, MetaLoraNative.Engine.IO.SafetensorsDType.F32);
            ReferenceStep.Run(model, inputs, meta, Path.Combine(dir, "ours-meta.safetensors"), be);
        }
        var (code, text) = TorchReferenceTests.Run(TorchReferenceTests.Python, Path.Combine(tools, "step.py"), "--model", model, "--inputs", inputs,
                                                   "--lora", peft, "--out", Path.Combine(dir, "torch-peft.safetensors"), "--dtype", "fp64");
        Assert.True(code == 0, text);
        // outputs only: the factor gradients of a merged LoRA are of other tensors
        using var ours = MetaLoraNative.Engine.IO.SafetensorsFile.Open(Path.Combine(dir, "ours-meta.safetensors"));
        using var theirs = MetaLoraNative.Engine.IO.SafetensorsFile.Open(Path.Combine(dir, "torch-peft.safetensors"));
        var a = ours.ReadFloats("output");
        var b = theirs.ReadFloats("output");
        double num = 0, den = 0;
        for (int i = 0; i < a.Length; i++) { num += (a[i] - b[i]) * (double)(a[i] - b[i]); den += (double)b[i] * b[i]; }
        double rel = Math.Sqrt(num / den);
        output.WriteLine($"three-factor output (ours) vs PEFT export in the PyTorch reference: relative L2 {rel:E2}");
        Assert.True(rel < 1e-6, $"relative L2 {rel}");
    }
}
