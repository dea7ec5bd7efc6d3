using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using MetaLoraNative.Kernels;
using MetaLoraNative.Kernels.Verification;

namespace MetaLoraNative.Cli.Commands;

/// <summary>
/// `metalora check cuda [--dev] [--quick] [--group G] [--only NAME] [--json FILE]`: runs every CUDA parity check of the
/// engine (src/Kernels/Verification), and with --dev those of the kernel playground (kernels/dev), on this machine's
/// GPU against the fp64 CPU oracle and prints one line per check (its worst error, the tolerance, the bf16 baseline).
/// --quick leaves out the slow checks (the flux-width model, attention at FLUX.1-dev's lengths); --group and --only
/// select. Exit 0 when all pass, 1 on any failure, 2 when there is no usable GPU. The same checks as the xunit CUDA
/// tests, for machines that only have the published binary.
/// </summary>
public static class CheckCommand
{
    public static Command Create()
    {
        var json = new Option<string?>("--json") { Description = "Also write every check and comparison to this JSON file." };
        var only = new Option<string[]>("--only")
        {
            Description = "Run only the checks with these names (see 'metalora check cuda --list').",
            AllowMultipleArgumentsPerToken = true,
        };
        var list = new Option<bool>("--list") { Description = "List the checks and exit." };
        var verbose = new Option<bool>("--verbose") { Description = "Print every comparison of every check, not only the worst." };
        var dev = new Option<bool>("--dev")
        {
            Description = "Also run the checks of the kernel playground (kernels/dev): the opt-in kernels a GPU run must pass before promotion.",
        };
        var quick = new Option<bool>("--quick")
        {
            Description = "Leave out the slow checks (the flux-width model with its fp64 oracle, attention at FLUX.1-dev's lengths): seconds instead of minutes.",
        };
        var group = new Option<string[]>("--group")
        {
            Description = "Run only the checks of these groups: Memory, Gemm, Elementwise, Layout, Norm, Attention, Conditioning, Objective, Lora, Model.",
            AllowMultipleArgumentsPerToken = true,
        };
        var cuda = new Command("cuda", "CUDA backend vs the fp64 CPU oracle: every op, the whole tiny model (output and LoRA gradients) " +
                                       "and a short Stage 2 run, with bf16 tolerances (docs/GPU.md). Exit 1 on a failure, 2 without a GPU.")
        {
            json, only, list, verbose, dev, quick, group,
        };
        cuda.SetAction(r => RunCuda(r.GetValue(json), r.GetValue(only) ?? [], r.GetValue(group) ?? [], r.GetValue(list), r.GetValue(verbose),
                                    r.GetValue(dev), r.GetValue(quick)));
        return new Command("check", "Self-checks that need special hardware.") { cuda };
    }

    static int RunCuda(string? jsonPath, string[] only, string[] groups, bool listOnly, bool verbose, bool dev, bool quick)
    {
        IReadOnlyList<ParityCheck> known = dev ? [.. CudaParity.All, .. CudaParity.Dev] : CudaParity.All;
        var unknownGroups = groups.Where(g => known.All(c => !c.Group.Equals(g, StringComparison.OrdinalIgnoreCase))).ToArray();
        if (unknownGroups.Length > 0)
        {
            Console.Error.WriteLine($"error: --group {string.Join(", ", unknownGroups.Select(g => $"'{g}'"))}: no such group; " +
                                    $"the groups are {string.Join(", ", known.Select(c => c.Group).Distinct())}");
            return 1;
        }
        var unknown = only.Where(n => known.All(c => c.Name != n)).ToArray();
        if (unknown.Length > 0)
        {
            bool inDev = unknown.All(n => CudaParity.Dev.Any(c => c.Name == n));
            Console.Error.WriteLine($"error: no check named {string.Join(", ", unknown.Select(n => $"'{n}'"))}; see --list" +
                                    (inDev && !dev ? " (that is a playground check: add --dev)" : ""));
            return 1;
        }
        var checks = known.Where(c => (only.Length == 0 || only.Contains(c.Name))
                                      && (groups.Length == 0 || groups.Any(g => g.Equals(c.Group, StringComparison.OrdinalIgnoreCase)))
                                      && !(quick && c.Slow && !only.Contains(c.Name))).ToArray();
        if (listOnly)
        {
            foreach (var c in checks) Console.WriteLine($"{c.Group,-13} {c.Name,-52} {(c.Slow ? "slow " : "     ")}{c.Description}");
            return 0;
        }

        if (!CudaBackend.TryCreate(out var probe, out string reason))
        {
            Console.Error.WriteLine($"check cuda: no usable GPU: {reason}");
            // The report still says what happened, so a script's summary can show it.
            if (jsonPath != null) WriteReport(jsonPath, new CheckReport($"no usable GPU: {reason}", Now(), false, []));
            return 2;
        }
        string device = reason;
        probe!.Dispose();
        Console.WriteLine($"CUDA parity on {device}: {checks.Length} checks against the fp64 CPU oracle{(dev ? ", the playground's included" : "")}" +
                          $"{(quick ? ", slow ones left out (--quick)" : "")}");
        Console.WriteLine($"{"check",-52} {"error",10} {"allowed",10} {"baseline",10} {"time",8}  result");

        var results = new List<ParityResult>();
        foreach (var check in checks)
        {
            ParityResult result;
            // A fresh GPU backend and oracle per check, as the tests do: a failure cannot leak into the next check.
            if (!CudaBackend.TryCreate(out var gpu, out string why))
                result = new ParityResult(check.Name, double.NaN, double.NaN, double.NaN, false, [], $"could not open the GPU: {why}", TimeSpan.Zero);
            else
            {
                using (gpu)
                using (var oracle = CudaParity.Oracle())
                    result = check.Run(gpu!, oracle);
            }
            results.Add(result);
            Console.WriteLine($"{check.Name,-52} {F(result.Error),10} {F(result.Allowed),10} {F(result.Baseline),10} {result.Elapsed.TotalSeconds,7:F1}s  " +
                              $"{(result.Pass ? "PASS" : "FAIL")}{(result.Pass ? "" : $"  {result.Failure ?? result.Worst}")}");
            if (verbose || !result.Pass)
                foreach (var m in result.Measures)
                    Console.WriteLine($"    {m.What,-56} {F(m.Error),10} {F(m.Allowed),10} {F(m.Baseline),10} max|ref| {F(m.MaxRef)}{(m.Pass ? "" : "  FAIL")}");
        }

        int failed = results.Count(r => !r.Pass);
        Console.WriteLine(failed == 0 ? $"all {results.Count} CUDA checks passed" : $"{failed} of {results.Count} CUDA checks FAILED");
        if (jsonPath != null)
            WriteReport(jsonPath, new CheckReport(device, Now(), failed == 0,
                results.Select((r, i) => new CheckEntry(checks[i].Group, r.Name, N(r.Error), N(r.Allowed), N(r.Baseline), r.Pass, r.Failure, r.Elapsed.TotalSeconds,
                    r.Measures.Select(m => new MeasureEntry(m.What, N(m.Error), N(m.Allowed), N(m.Baseline), N(m.MaxRef), m.Pass)).ToArray())).ToArray()));
        return failed == 0 ? 0 : 1;
    }

    static string Now() => DateTime.UtcNow.ToString("o", CultureInfo.InvariantCulture);

    static void WriteReport(string jsonPath, CheckReport report)
    {
        string? dir = Path.GetDirectoryName(Path.GetFullPath(jsonPath));
        if (dir != null) Directory.CreateDirectory(dir);
        File.WriteAllText(jsonPath, JsonSerializer.Serialize(report, CheckJson.Default.CheckReport));
        Console.WriteLine($"wrote {jsonPath}");
    }

    static string F(double v) => double.IsNaN(v) ? "-" : v.ToString("E2", CultureInfo.InvariantCulture);

    /// <summary>JSON has no NaN: absent values are null.</summary>
    static double? N(double v) => double.IsNaN(v) || double.IsInfinity(v) ? null : v;
}

internal sealed record MeasureEntry(string What, double? Error, double? Allowed, double? Baseline, double? MaxRef, bool Pass);
internal sealed record CheckEntry(string Group, string Name, double? Error, double? Allowed, double? Baseline, bool Pass, string? Failure, double Seconds, MeasureEntry[] Measures);
internal sealed record CheckReport(string Device, string Utc, bool Pass, CheckEntry[] Checks);

/// <summary>Source-generated JSON (the CLI is published trimmed).</summary>
[JsonSourceGenerationOptions(WriteIndented = true, PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower)]
[JsonSerializable(typeof(CheckReport))]
internal sealed partial class CheckJson : JsonSerializerContext;
