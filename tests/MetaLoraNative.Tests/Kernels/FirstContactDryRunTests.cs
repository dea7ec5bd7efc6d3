using System.Diagnostics;
using System.Text.Json;
using System.Text.RegularExpressions;
using MetaLoraNative.Kernels.Verification;
using MetaLoraNative.Tests.Reference;
using Xunit.Abstractions;

namespace MetaLoraNative.Tests.Kernels;

/// <summary>
/// tools/gpu/first-contact.sh in its dry run (DRY_RUN=1): every stage on the CPU with the tiny preset and the built CLI,
/// then the closing table and first-contact.json, so the script's stage, table and JSON code paths are proven before a
/// GPU is lent. Needs bash and Debian's python3-torch (.ci/install-torch.sh); skips and says so without them.
/// </summary>
public class FirstContactDryRunTests(ITestOutputHelper output) : IDisposable
{
    readonly string root = Directory.CreateTempSubdirectory("metalora-fc-").FullName;
    public void Dispose() => Directory.Delete(root, recursive: true);

    static readonly string[] Stages =
    [
        "nvidia-smi", "doctor", "kernels", "check-cuda", "bench-512", "bench-512-stacked", "bench-512-dev", "bench-512-w8a8", "ref-case", "ref-torch-fp32", "ref-torch-bf16",
        "step-scalar", "step-mma", "compare-scalar", "compare-mma", "bench-1024-mma", "torch", "vram-24", "vram-16", "vram-10",
        "queue-data", "nccl-stage1", "nccl-proof", "queue-2",
    ];

    /// <summary>
    /// Part 2's kernels-bench stage (GPU only, so not in the dry run) names benches that exist, among them every
    /// attention, residual-norm, grouped GEMM, GELU, qkv_norm_rope, fp8, elementwise, layout and LoRA up-backward bench of KernelBenches.Dev.
    /// </summary>
    [Fact]
    public void TheKernelsBenchStageRunsEveryPlaygroundBench()
    {
        string script = File.ReadAllText(Path.Combine(TorchReferenceTests.Repo, "tools", "gpu", "first-contact.sh"));
        var stage = Regex.Match(script, @"stage kernels-bench \d+ ""\$\{ML\[@\]\}"" kernels bench --dev --only((?:[^\n]*\\\n)*[^\n]*)");
        Assert.True(stage.Success, "no kernels-bench stage in first-contact.sh");
        var names = Regex.Matches(stage.Groups[1].Value, "\"([^\"]+)\"").Select(m => m.Groups[1].Value).ToArray();
        var known = KernelBenches.All.Concat(KernelBenches.Dev).Select(b => b.Name).ToHashSet();
        Assert.All(names, n => Assert.Contains(n, known));
        string[] families = ["attention ", "residual-norm ", "gemm group ", "gelu-epilogue ", "gelu strided ", "qkv_norm_rope ", "linear w8a", "elementwise ", "layout ", "lora upback "];
        var required = KernelBenches.Dev.Select(b => b.Name).Where(n => families.Any(f => n.StartsWith(f, StringComparison.Ordinal))).ToArray();
        Assert.Equal(21, required.Length);
        Assert.All(required, n => Assert.Contains(n, names));
        Assert.Contains("attention scalar", names);
    }

    [SkippableFact]
    public void TheDryRunRunsEveryStageAndWritesTheTableAndJson()
    {
        string? missing = File.Exists("/bin/bash") ? TorchReferenceTests.TorchMissing() : "no /bin/bash";
        if (missing != null) output.WriteLine(missing);
        Skip.If(missing != null, missing);
        string outDir = Path.Combine(root, "out"), work = Path.Combine(root, "work");
        var psi = new ProcessStartInfo("/bin/bash") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = TorchReferenceTests.Repo };
        psi.ArgumentList.Add(Path.Combine("tools", "gpu", "first-contact.sh"));
        psi.Environment["DRY_RUN"] = "1";
        psi.Environment["OUT"] = outDir;
        psi.Environment["WORK"] = work;
        psi.Environment["PYTHON"] = TorchReferenceTests.Python;
        psi.Environment["METALORA"] = $"dotnet {Path.Combine(AppContext.BaseDirectory, "metalora.dll")}";
        var clock = Stopwatch.StartNew();
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        bool exited = p.WaitForExit(600_000);
        if (!exited) p.Kill(true);
        string text = stdout.Result + stderr.Result;
        output.WriteLine($"{clock.Elapsed.TotalSeconds:F0} s");
        output.WriteLine(text.Length > 6000 ? text[^6000..] : text);
        Assert.True(exited, "the dry run did not finish in 10 minutes");
        Assert.True(p.ExitCode == 0, $"exit {p.ExitCode}");

        // $OUT: at most 8 plain files, each at most 16 MiB, names of letters, digits, '.', '_', '-'
        var files = Directory.GetFileSystemEntries(outDir, "*", SearchOption.AllDirectories);
        Assert.InRange(files.Length, 1, 8);
        Assert.All(files, f => Assert.True(File.Exists(f), $"{f} is not a plain file"));
        Assert.All(files, f => Assert.Matches(new Regex("^[A-Za-z0-9._-]+$"), Path.GetFileName(f)));
        Assert.All(files, f => Assert.InRange(new FileInfo(f).Length, 1, 16L << 20));
        foreach (string name in new[] { "first-contact.log", "first-contact.json", "check-cuda.json", "bench-512.json", "bench-1024-mma.json", "torch.jsonl", "compare.txt" })
            Assert.True(File.Exists(Path.Combine(outDir, name)), $"{name} is missing");

        using var summary = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "first-contact.json")));
        var s = summary.RootElement;
        Assert.True(s.GetProperty("dry_run").GetBoolean());
        Assert.True(s.GetProperty("pass").GetBoolean());
        Assert.Equal(Stages, s.GetProperty("stages").EnumerateArray().Select(x => x.GetProperty("stage").GetString()));
        // check cuda found no GPU here and said so in its JSON
        Assert.StartsWith("no usable GPU", s.GetProperty("device").GetString());
        // both engine steps met docs/REFERENCE_CHECK.md's rule against PyTorch's fp32 step
        foreach (string attn in new[] { "scalar", "mma" })
        {
            var c = s.GetProperty("reference").GetProperty(attn);
            Assert.True(c.GetProperty("pass").GetBoolean(), $"compare {attn}");
            Assert.True(c.GetProperty("compared").GetInt32() > 2);
        }
        // ours at 512² and 1024², PyTorch eager at both, and the ratios between them
        var speed = s.GetProperty("speed").EnumerateArray().ToArray();
        foreach (int res in new[] { 512, 1024 })
        {
            var ours = speed.Single(r => r.GetProperty("engine").GetString() == "metalora" && r.GetProperty("resolution").GetInt32() == res);
            var torch = speed.Single(r => r.GetProperty("engine").GetString() == "torch" && r.GetProperty("resolution").GetInt32() == res);
            double ms = ours.GetProperty("train_ms").GetDouble(), tms = torch.GetProperty("train_ms").GetDouble();
            Assert.True(ms > 0 && tms > 0);
            Assert.Equal(Math.Round(tms / ms, 3), ours.GetProperty("speedup_vs_torch_eager").GetDouble(), 3);
        }
        // bench-512 counted its step: no host synchronisation in the device step, the host path's two
        using (var bench = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "bench-512.json"))))
        {
            var total = bench.RootElement.GetProperty("launches").GetProperty("total");
            Assert.Equal(0, total.GetProperty("syncs").GetInt32());
            Assert.Equal(1, total.GetProperty("read_backs").GetInt32());
            Assert.Equal(2, bench.RootElement.GetProperty("host_path_launches").GetProperty("total").GetProperty("syncs").GetInt32());
        }
        string log = File.ReadAllText(Path.Combine(outDir, "first-contact.log"));
        Assert.Contains("x eager", log);
        Assert.Contains("reference 512² (mma attention)", log);
        // the one-rank Stage 1 went through the launcher, and the two-person queue trained both on two workers
        Assert.Contains("[rank 0] wrote Meta-Down", log);
        Assert.Matches(@"\| 1 \| person000 \| worker \d \| done \| 3/3 \|", log);
        Assert.Matches(@"\| 2 \| person001 \| worker \d \| done \| 3/3 \|", log);
    }
}
