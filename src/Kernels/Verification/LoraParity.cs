using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;

namespace MetaLoraNative.Kernels.Verification;

/// <summary>
/// One kind of LoRA'd linear at FLUX.1-dev's widths: its BFL module (the first of its kind), d_in and the row slices
/// its targets own. The 494 ai-toolkit targets fall into eight kinds: the double blocks' modulation (3072 → 18432),
/// fused qkv (3072 → 3 × 3072), attention proj (3072 → 3072), MLP in (3072 → 12288) and out (12288 → 3072); the
/// single blocks' linear1 (3072 → 3 × 3072 + 12288), linear2 (15360 → 3072) and modulation (3072 → 9216).
/// </summary>
/// <param name="OutFeatures">The BFL linear's d_out (all its rows, whichever targets are included).</param>
public sealed record LoraKind(string Module, int InFeatures, int OutFeatures, IReadOnlyList<LoraTarget> Targets)
{
    /// <summary>The same module with only one of its targets (its own GEMMs, no stacking).</summary>
    public LoraKind Only(LoraTarget target) => this with { Targets = [target] };

    /// <summary>"3072->3x3072", "3072->3072+3072+3072+12288", "15360->3072".</summary>
    public string Shape
    {
        get
        {
            var rows = Targets.Select(t => t.Rows).ToArray();
            string outs = rows.Length == 1 ? $"{rows[0]}" : rows.Distinct().Count() == 1 ? $"{rows.Length}x{rows[0]}" : string.Join("+", rows);
            return $"{InFeatures}->{outs}";
        }
    }

    /// <summary>The distinct kinds of a config's LoRA targets, in target order.</summary>
    public static IReadOnlyList<LoraKind> Of(FluxConfig config) =>
        FluxNames.LoraTargets(config)
            .GroupBy(t => t.BflModule)
            .Select(g => new LoraKind(g.Key, g.First().InFeatures, FluxNames.LinearShape(config, g.Key).Out, g.ToList()))
            .DistinctBy(k => (k.InFeatures, string.Join(",", k.Targets.Select(t => $"{t.RowStart}:{t.Rows}"))))
            .ToList();
}

/// <summary>
/// The LoRA checks at the real widths: a Meta LoRA with r1 = 16 and r2 = 1 (the paper's Stage 2 ranks) on one module
/// of every <see cref="LoraKind"/>, run through <see cref="LoraBinding"/> alone (its deltas into a zero output, its
/// backward), so the frozen weight's cost is not paid and d_out up to 21504 stays cheap on the fp64 oracle. Three
/// samples of two identities, so the binding runs two groups and accumulates across them, as a Stage-1 batch does.
/// </summary>
public static partial class CudaParity
{
    public const int LoraRank1 = 16, LoraRank2 = 1;
    const int LoraTokens = 37;                            // per sample: not a multiple of any tile
    static readonly int[] LoraIdentities = [0, 0, 1];    // two groups: samples 0-1 (identity 0) and sample 2 (identity 1)
    const ulong LoraSeed = 23;

    static IEnumerable<ParityCheck> LoraChecks()
    {
        var kinds = LoraKind.Of(FluxConfig.FluxDev);
        foreach (var k in kinds)
            yield return new ParityCheck($"lora {k.Module} {k.Shape}",
                $"Meta LoRA r1 {LoraRank1}, r2 {LoraRank2} on {k.Module} ({k.Targets.Count} target(s), {k.Shape}), 3 samples of 2 identities: " +
                "delta, dx and every D, M, U gradient vs fp64, baseline the bf16-emulating CPU engine",
                p => LoraKindCheck(p, k, LoraPath.Stacked));
        // The fused Stage-2 path (D frozen) on every kind: a = x·(M·D)ᵀ, y's slice += a·Uᵀ, dM, dU, dx
        foreach (var k in kinds)
            yield return new ParityCheck($"lora fused {k.Module} {k.Shape}",
                $"fused Stage-2 LoRA (D frozen) r1 {LoraRank1}, r2 {LoraRank2} on {k.Module} ({k.Targets.Count} target(s), {k.Shape}), " +
                "3 samples of 2 identities: delta, dx and every M, U gradient vs fp64, baseline the bf16-emulating CPU engine",
                p => LoraKindCheck(p, k, LoraPath.Fused));
        // The D gradient's fp32 accumulation, on the stacked (multi-target) modules and one single-target module.
        foreach (var k in kinds.Where(k => k.Targets.Count > 1).Append(kinds.First(k => k.Module.EndsWith("img_attn.proj", StringComparison.Ordinal))))
            yield return new ParityCheck($"lora dD fp32 {k.Module}",
                $"Stage-1 D gradients of {k.Module} (r1 {LoraRank1}) with bf16-exact inputs to their GEMM: fp32 accumulation, 1e-5 relative",
                p => LoraDownGradientCheck(p, k));
    }

    /// <summary>How the identity factors are set: random (every gradient nonzero), or so that ddown is bf16-exact.</summary>
    public enum LoraFactors
    {
        /// <summary>M from <see cref="LoraAdapter.AddIdentity(string, ulong)"/>, U = 0.3·N(0, 1).</summary>
        Random,
        /// <summary>
        /// U one-hot per identity (a single 1 in each target's column) and M of signed powers of two: then
        /// dmid = dyₛ·U is one element of dy and ddown = dmid·M a power-of-two multiple of it, both exact in bf16 on
        /// every backend, so the D gradient's GEMM sees identical bf16-exact inputs everywhere and its only error is
        /// the accumulation.
        /// </summary>
        ExactDownInputs,
    }

    /// <summary>What one LoRA module's pass leaves: the delta, dx and every trainable factor's gradient, in fp64.</summary>
    public sealed record LoraRun(double[] Delta, double[] Dx, (string Name, double[] Grad)[] Grads);

    /// <summary>
    /// One forward (deltas into zeros) and backward of the binding on the kind's module, Stage-1 style (D, M and U
    /// all train) on the stacked path, or Stage-2 style (D frozen) on the fused path. Inputs depend only on the sample index, so a prefix of <paramref name="identityOfSample"/> gives the
    /// same rows, and factors only on the target's name; x and dy (all of the module's rows) are bf16-exact.
    /// </summary>
    public static LoraRun RunLoraModule(IBackend be, LoraKind kind, int[] identityOfSample, LoraFactors factors, LoraPath path = LoraPath.Stacked)
    {
        int samples = identityOfSample.Length, dIn = kind.InFeatures, dOut = kind.OutFeatures;
        using var adapter = LoraAdapter.Create(be, FluxConfig.FluxDev, kind.Targets, LoraMode.Meta, LoraRank1, LoraRank2, LoraSeed);
        for (int id = 0; id <= identityOfSample.Max(); id++)
        {
            var f = adapter.AddIdentity($"id{id}", LoraSeed + (ulong)id);
            for (int t = 0; t < kind.Targets.Count; t++)
            {
                // from the target's name, not its index: a module with one of its targets gets the same factors
                var up = f.Up[t];
                int salt = (int)(RandomWeights.Fnv1a64(kind.Targets[t].Name) % 97);
                float[] u = factors == LoraFactors.Random
                    ? [.. RandomWeights.Normal($"up.{id}.{up.Name}", LoraSeed, (int)up.Value.Length).Select(v => 0.3f * v)]
                    : OneHot((int)up.Value.Length, (7 + 13 * id + 5 * salt) % up.Shape[0]);
                SetValues(be, up.Value, u);
                if (factors == LoraFactors.ExactDownInputs) SetValues(be, f.Mid[t]!.Value, PowersOfTwo(LoraRank2 * LoraRank1, id, salt));
            }
        }
        var binding = new LoraBinding(adapter, identityOfSample, trainDown: path == LoraPath.Stacked, trainIdentity: true, path);
        var parameters = binding.TrainableParameters().ToArray();
        foreach (var p in parameters) p.ZeroGrad();

        using var x = be.Upload(SampleRows("lora.x", samples, dIn), samples, LoraTokens, dIn);
        using var y = be.Zeros(samples, LoraTokens, dOut);
        binding.AddDelta(kind.Module, x, y);
        using var dy = be.Upload(SampleRows("lora.dy", samples, dOut), samples, LoraTokens, dOut);
        using var dx = be.Zeros(samples, LoraTokens, dIn);
        binding.Backward(kind.Module, x, dy, dx);
        binding.FinishBackward();
        return new LoraRun(be.DownloadDouble(y), be.DownloadDouble(dx),
            [.. parameters.Select(p => (p.Name, be.DownloadDouble(p.Grad)))]);

        static float[] OneHot(int n, int at)
        {
            var v = new float[n];
            v[at] = 1f;
            return v;
        }
    }

    /// <summary>Signed powers of two 2^-2 .. 2^1, different per identity and target: exact in bf16, and exact products.</summary>
    static float[] PowersOfTwo(int n, int identity, int target) =>
        [.. Enumerable.Range(0, n).Select(i => ((i + identity + target) % 3 == 0 ? -1f : 1f) * MathF.Pow(2f, (i + 2 * identity + target) % 4 - 2))];

    /// <summary>(samples · LoraTokens · width) bf16-exact values, sample by sample from its own stream.</summary>
    static float[] SampleRows(string name, int samples, int width) =>
        [.. Enumerable.Range(0, samples).SelectMany(s => Rand(LoraTokens * width, (int)(RandomWeights.Fnv1a64($"{name}.{s}") & 0x7fffffff)))];

    /// <summary>A factor's name without the block prefix: attn.to_q.lora_down.weight.</summary>
    static string ShortName(string name)
    {
        int b = name.IndexOf("blocks.", StringComparison.Ordinal);
        int dot = b < 0 ? -1 : name.IndexOf('.', b + "blocks.".Length);
        return dot < 0 ? name : name[(dot + 1)..];
    }

    static void SetValues(IBackend be, Tensor master, float[] values)
    {
        using var t = be.Upload(values, master.Shape, Precision.Master);
        be.Copy(t, master);
    }

    static void LoraKindCheck(ParityContext p, LoraKind kind, LoraPath path)
    {
        var g = RunLoraModule(p.Gpu, kind, LoraIdentities, LoraFactors.Random, path);
        var r = RunLoraModule(p.Cpu, kind, LoraIdentities, LoraFactors.Random, path);
        using var emulation = new Bf16EmulationBackend();
        var e = RunLoraModule(emulation, kind, LoraIdentities, LoraFactors.Random, path);
        p.Bf16("lora delta (y)", g.Delta, r.Delta, e.Delta);
        p.Bf16("lora dx", g.Dx, r.Dx, e.Dx);
        int expected = kind.Targets.Count * ((path == LoraPath.Stacked ? 1 : 0) + 2 * (LoraIdentities.Max() + 1));   // D (stacked), then M and U per identity
        ParityContext.Require(g.Grads.Length == expected && r.Grads.Length == expected,
            $"{g.Grads.Length} GPU and {r.Grads.Length} reference gradients, expected {expected}");
        for (int i = 0; i < g.Grads.Length; i++)
        {
            ParityContext.Require(r.Grads[i].Grad.Any(v => v != 0), $"{r.Grads[i].Name}: the reference gradient is zero");
            p.Bf16($"grad[{i}] {ShortName(r.Grads[i].Name)}", g.Grads[i].Grad, r.Grads[i].Grad, e.Grads[i].Grad);
        }
    }

    /// <summary>Relative tolerance of the D gradients with exact GEMM inputs: fp32 accumulation over 111 rows.</summary>
    public const double LoraDownGradientTolerance = 1e-5;

    /// <summary>
    /// The D gradients of a Stage-1 pass with <see cref="LoraFactors.ExactDownInputs"/>: the GEMM dD += ddownᵀ·x gets
    /// bf16-exact inputs on every backend, so a correct GPU differs from the fp64 oracle only by fp32 accumulation
    /// (about 1e-7 relative over 111 rows), held to 1e-5 · max|ref|. A bf16 tensor anywhere between that GEMM and the
    /// fp32 gradient (the stacked gradient's Narrow this engine once had) rounds every element by up to 2^-9 of
    /// itself, i.e. an error of 2^-9 to 2^-8 of max|ref| at the largest elements: 200 times the tolerance. The CPU test
    /// LoraDownGradientTests shows both on the bf16 emulation.
    /// </summary>
    static void LoraDownGradientCheck(ParityContext p, LoraKind kind)
    {
        var g = RunLoraModule(p.Gpu, kind, LoraIdentities, LoraFactors.ExactDownInputs);
        var r = RunLoraModule(p.Cpu, kind, LoraIdentities, LoraFactors.ExactDownInputs);
        var downs = r.Grads.Select((x, i) => (x.Name, i)).Where(x => x.Name.EndsWith(".lora_down.weight", StringComparison.Ordinal)).ToArray();
        ParityContext.Require(downs.Length == kind.Targets.Count, $"{downs.Length} D gradients for {kind.Targets.Count} targets");
        foreach (var (name, i) in downs)
        {
            ParityContext.Require(r.Grads[i].Grad.Any(v => v != 0), $"{name}: the reference gradient is zero");
            p.F32($"grad[{i}] {ShortName(name)}", g.Grads[i].Grad, r.Grads[i].Grad, LoraDownGradientTolerance);
        }
    }
}
