using System.Globalization;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;

namespace MetaLoraNative.Engine.Lora;

/// <summary>On-disk layouts of a trained adapter.</summary>
public enum LoraFormat
{
    /// <summary>PEFT/diffusers keys as ai-toolkit writes them: transformer.….to_q.lora_A.weight / lora_B.weight.</summary>
    Peft,
    /// <summary>kohya sd-scripts: lora_unet_double_blocks_0_img_attn_qkv.lora_down/up.weight + .alpha, fused q/k/v stacked.</summary>
    Kohya,
    /// <summary>Unmerged Meta-LoRA: per target lora_down (D), lora_mid (M), lora_up (U).</summary>
    Meta,
}

/// <summary>
/// Writing and reading adapters. Export merges A = M·D and B = U into a standard rank-r2 LoRA that other tools
/// load; import reads any of the three layouts back into a standard-mode adapter (or a Meta adapter for Meta files);
/// <see cref="Bake"/> adds a LoRA's B·A into the frozen weights W0. "Merge" here always means M·D → A, never W0.
/// </summary>
public static class LoraFiles
{
    /// <summary>
    /// Every LoRA file's metadata: metalora.* (layout, ranks, targets), kohya's ss_* fields (sd-scripts' FLUX network
    /// module is networks.lora_flux) and a Stability ModelSpec block. The modelspec keys are those of the spec
    /// (github.com/Stability-AI/ModelSpec, v1.0.0): sai_model_spec, architecture ("base-id/lora" for a LoRA),
    /// implementation (the reference code's address), title (default the file name) and date (ISO 8601). A run adds
    /// its settings through <paramref name="extra"/>, which wins over the defaults.
    /// </summary>
    static Dictionary<string, string> Metadata(LoraAdapter a, string format, string source, IReadOnlyDictionary<string, string>? extra, string path)
    {
        var m = new Dictionary<string, string>
        {
            ["format"] = "pt",
            ["metalora.format"] = format,
            ["metalora.base_model"] = a.Config.Name,
            ["metalora.rank1"] = a.Rank1.ToString(CultureInfo.InvariantCulture),
            ["metalora.rank2"] = a.Rank2.ToString(CultureInfo.InvariantCulture),
            ["metalora.targets"] = a.Targets.Count.ToString(CultureInfo.InvariantCulture),
            ["metalora.source"] = source,
            ["ss_base_model_version"] = "flux1",
            ["ss_network_dim"] = a.Rank2.ToString(CultureInfo.InvariantCulture),
            ["ss_network_alpha"] = a.Rank2.ToString(CultureInfo.InvariantCulture),
            ["ss_network_module"] = "networks.lora_flux",
            ["modelspec.sai_model_spec"] = "1.0.0",
            ["modelspec.architecture"] = (a.Config.GuidanceEmbed ? "flux-1-dev" : "flux-1-schnell") + "/lora",
            ["modelspec.implementation"] = "https://github.com/black-forest-labs/flux",
            ["modelspec.title"] = System.IO.Path.GetFileNameWithoutExtension(path),
            ["modelspec.date"] = DateTime.UtcNow.ToString("yyyy-MM-ddTHH:mm:ssZ", CultureInfo.InvariantCulture),
        };
        foreach (var (k, v) in a.Config.ToMetadata()) m[k] = v;
        if (extra != null) foreach (var (k, v) in extra) m[k] = v;
        return m;
    }

    /// <summary>The merged factors of one target: A = M·D (r2 × d_in) (or D itself in standard mode) and B = U (rows × r2).</summary>
    public static (float[] A, int[] AShape, float[] B, int[] BShape) Merged(LoraAdapter a, int identity, int target)
    {
        var be = a.Backend;
        var d = a.Down[target];
        var id = a.Identities[identity];
        var up = id.Up[target];
        if (id.Mid[target] is { } mid)
        {
            using var merged = be.Zeros([mid.Shape[0], d.Shape[1]], Precision.Master);
            be.Gemm(mid.Value, false, d.Value, false, merged);                          // (r2, r1)·(r1, d_in)
            return (be.Download(merged), merged.Shape, be.Download(up.Value), up.Shape);
        }
        return (be.Download(d.Value), d.Shape, be.Download(up.Value), up.Shape);
    }

    /// <summary>Writes the merged LoRA of one identity in PEFT or kohya layout.</summary>
    public static void Export(LoraAdapter a, int identity, string path, LoraFormat format, SafetensorsDType dtype = SafetensorsDType.BF16,
                              string source = "metalora", IReadOnlyDictionary<string, string>? metadata = null)
    {
        var tensors = new List<SafetensorsTensor>();
        if (format == LoraFormat.Peft)
        {
            for (int t = 0; t < a.Targets.Count; t++)
            {
                var (A, aShape, B, bShape) = Merged(a, identity, t);
                tensors.Add(new(a.Targets[t].Name + ".lora_A.weight", aShape, A, dtype));
                tensors.Add(new(a.Targets[t].Name + ".lora_B.weight", bShape, B, dtype));
            }
        }
        else if (format == LoraFormat.Kohya)
        {
            // Fused BFL linears carry one LoRA: down stacks each slice's A (k·r × d_in), up is block-diagonal
            // (d_out × k·r), so up·down reproduces every slice's B·A in its rows. alpha = k·r keeps the scale at 1.
            foreach (var module in a.Targets.Select(t => t.BflModule).Distinct())
            {
                var idx = a.TargetsOf(module).ToArray();
                var parts = idx.Select(t => Merged(a, identity, t)).ToArray();
                int dIn = parts[0].AShape[1];
                int rank = parts.Sum(p => p.AShape[0]);
                int dOut = FluxNames.LinearShape(a.Config, module).Out;
                var down = new float[rank * dIn];
                var up = new float[dOut * rank];
                int r0 = 0;
                for (int k = 0; k < idx.Length; k++)
                {
                    var (A, aShape, B, _) = parts[k];
                    var target = a.Targets[idx[k]];
                    A.CopyTo(down, r0 * dIn);
                    for (int row = 0; row < target.Rows; row++)
                        for (int j = 0; j < aShape[0]; j++)
                            up[(target.RowStart + row) * rank + r0 + j] = B[row * aShape[0] + j];
                    r0 += aShape[0];
                }
                string name = FluxNames.KohyaName(module);
                tensors.Add(new(name + ".lora_down.weight", [rank, dIn], down, dtype));
                tensors.Add(new(name + ".lora_up.weight", [dOut, rank], up, dtype));
                tensors.Add(new(name + ".alpha", [], [rank], dtype));
            }
        }
        else throw new ArgumentException("use SaveMeta for the unmerged Meta-LoRA layout");
        SafetensorsWriter.Write(path, tensors, Metadata(a, format == LoraFormat.Peft ? "peft" : "kohya", source, metadata, path));
    }

    /// <summary>
    /// The extension of the unmerged D/M/U file beside a merged LoRA (me.safetensors → me.metalora). It holds
    /// safetensors bytes, but not under ".safetensors": ComfyUI and other UIs list every *.safetensors in their loras/
    /// folder as a LoRA, and they find no lora_A/lora_B (or kohya) keys in a Meta file, so they would apply nothing.
    /// </summary>
    public const string UnmergedExtension = ".metalora";

    /// <summary>The name unmerged files had before <see cref="UnmergedExtension"/>; still read, with a note.</summary>
    public const string LegacyUnmergedSuffix = ".meta.safetensors";

    /// <summary>The unmerged D/M/U file beside the merged LoRA <paramref name="mergedPath"/>: same folder and stem, <see cref="UnmergedExtension"/>.</summary>
    public static string UnmergedPath(string mergedPath) => System.IO.Path.ChangeExtension(mergedPath, UnmergedExtension);

    /// <summary>Writes the unmerged Meta-LoRA (D, M, U) of one identity, or D alone when identity is null (Stage 1's result).</summary>
    public static void SaveMeta(LoraAdapter a, int? identity, string path, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var be = a.Backend;
        var tensors = new List<SafetensorsTensor>();
        for (int t = 0; t < a.Targets.Count; t++)
        {
            tensors.Add(new(a.Down[t].Name, a.Down[t].Shape, be.Download(a.Down[t].Value)));
            if (identity is int id)
            {
                var f = a.Identities[id];
                if (f.Mid[t] is { } m) tensors.Add(new(m.Name, m.Shape, be.Download(m.Value)));
                tensors.Add(new(f.Up[t].Name, f.Up[t].Shape, be.Download(f.Up[t].Value)));
            }
        }
        SafetensorsWriter.Write(path, tensors, Metadata(a, a.Mode == LoraMode.Meta ? "meta" : "standard", "metalora", metadata, path));
    }

    /// <summary>
    /// A file's key layout from its tensor names: kohya (lora_unet_*), Meta (lora_down/lora_mid/lora_up) or PEFT
    /// (lora_A/lora_B); null when none of them.
    /// </summary>
    public static LoraFormat? Layout(IEnumerable<string> names)
    {
        var list = names as IReadOnlyCollection<string> ?? [.. names];
        return list.Any(n => n.StartsWith("lora_unet_", StringComparison.Ordinal)) ? LoraFormat.Kohya
            : list.Any(n => n.EndsWith(".lora_down.weight", StringComparison.Ordinal)) ? LoraFormat.Meta
            : list.Any(n => n.EndsWith(".lora_A.weight", StringComparison.Ordinal)) ? LoraFormat.Peft
            : null;
    }

    /// <summary>
    /// Reads a LoRA file of any supported layout for a model config. Meta files give a Meta adapter (with one identity
    /// when M/U are present); PEFT and kohya files give a standard adapter with one identity whose B carries the
    /// kohya alpha/rank scale. Everything is checked before use, each fault an <see cref="InputFileException"/> naming
    /// the file and the tensor: every key is a factor of a target of the model (or a kohya alpha), never silently
    /// ignored; every factor is 2-D with rank ≥ 1, one rank per file (kohya: per module), and d_in/d_out of its target;
    /// a target's factors come complete (no lora_B without its lora_A); every value is finite.
    /// </summary>
    /// <param name="log">Gets a one-line note when the file has the old unmerged name (<see cref="LegacyUnmergedSuffix"/>).</param>
    public static LoraAdapter Load(string path, FluxConfig config, IBackend backend, Action<string>? log = null)
    {
        if (path.EndsWith(LegacyUnmergedSuffix, StringComparison.OrdinalIgnoreCase))
            log?.Invoke($"note: {path} has the old name of an unmerged D/M/U file; rename it to " +
                        $"{path[..^LegacyUnmergedSuffix.Length]}{UnmergedExtension} so LoRA loaders do not list it as a LoRA");
        using var file = SafetensorsFile.Open(path);
        var names = file.Entries.Keys.ToHashSet();
        var all = FluxNames.LoraTargets(config);
        if (names.Count == 0) throw Fault(path, "holds no tensors (expected lora_A/lora_B, lora_down/lora_mid/lora_up or kohya lora_unet_* keys)");
        var layout = Layout(names);
        if (layout == LoraFormat.Kohya) return LoadKohya(file, config, backend, all);

        bool meta = layout == LoraFormat.Meta;
        var mode = meta ? LoraMode.Meta : LoraMode.Standard;
        // Every key a file of this layout may hold, and the target it belongs to.
        var owner = new Dictionary<string, LoraTarget>();
        foreach (var t in all)
        {
            owner[LoraAdapter.DownKey(t, mode)] = t;
            owner[LoraAdapter.UpKey(t, mode)] = t;
            if (meta) owner[LoraAdapter.MidKey(t)] = t;
        }
        var unknown = names.Where(n => !owner.ContainsKey(n)).Order(StringComparer.Ordinal).ToList();
        if (unknown.Count > 0)
            throw Fault(path, $"{unknown.Count} key{(unknown.Count == 1 ? "" : "s")} match no LoRA factor of a target of the {config.Name} model " +
                              $"({(meta ? "lora_down/lora_mid/lora_up" : "lora_A/lora_B")} layout), e.g. {SafetensorsHeader.Quote(unknown[0])}");
        var targets = all.Where(t => names.Contains(LoraAdapter.DownKey(t, mode))).ToList();
        var orphan = names.FirstOrDefault(n => !names.Contains(LoraAdapter.DownKey(owner[n], mode)));
        if (orphan != null) throw Fault(path, $"{SafetensorsHeader.Quote(orphan)} has no {SafetensorsHeader.Quote(LoraAdapter.DownKey(owner[orphan], mode))} beside it");
        bool hasIdentity = targets.Any(t => names.Contains(LoraAdapter.UpKey(t, mode)));
        if (hasIdentity)
            foreach (var t in targets)
                foreach (var key in meta ? new[] { LoraAdapter.MidKey(t), LoraAdapter.UpKey(t, mode) } : [LoraAdapter.UpKey(t, mode)])
                    if (!names.Contains(key))
                        throw Fault(path, $"{SafetensorsHeader.Quote(key)} is missing: other targets carry their {(meta ? "lora_mid/lora_up" : "lora_B")}, so every target must");

        // rows/cols: -1 any rank (≥ 1), else the exact size; the first factor of a kind fixes the file's rank.
        LoraParameter Param(string key, int rows, int cols)
        {
            var e = file[key];
            if (e.Shape.Length != 2 || e.Shape[0] < 1 || e.Shape[1] < 1 || (rows >= 0 && e.Shape[0] != rows) || (cols >= 0 && e.Shape[1] != cols))
                throw Fault(path, $"{SafetensorsHeader.Quote(key)} has shape {Shapes.Format(e.Shape)}, expected " +
                                  $"({(rows >= 0 ? rows : "rank ≥ 1")}, {(cols >= 0 ? cols : "rank ≥ 1")})");
            return new LoraParameter(key, backend.Upload(FiniteFloats(file, key), e.Shape, Precision.Master));
        }

        var down = new LoraParameter[targets.Count];
        for (int i = 0; i < targets.Count; i++)
            down[i] = Param(LoraAdapter.DownKey(targets[i], mode), i == 0 ? -1 : down[0].Shape[0], targets[i].InFeatures);   // (r1, d_in)
        int r1 = down[0].Shape[0];
        int r2 = r1;
        LoraParameter?[]? mids = null;
        LoraParameter[]? ups = null;
        if (hasIdentity)
        {
            mids = new LoraParameter?[targets.Count];
            ups = new LoraParameter[targets.Count];
            for (int i = 0; i < targets.Count; i++)
            {
                var t = targets[i];
                if (meta) mids[i] = Param(LoraAdapter.MidKey(t), i == 0 ? -1 : mids[0]!.Shape[0], r1);                 // (r2, r1)
                ups[i] = Param(LoraAdapter.UpKey(t, mode), t.Rows, mids[i]?.Shape[0] ?? r1);                           // (d_out, r2)
            }
            r2 = ups[0].Shape[1];
        }
        var adapter = new LoraAdapter(backend, config, targets, mode, r1, r2, down);
        if (hasIdentity) adapter.AddIdentity(new IdentityFactors(System.IO.Path.GetFileNameWithoutExtension(path), mids!, ups!));
        return adapter;
    }

    static InputFileException Fault(string path, string fault) => new(path, fault);

    /// <summary>A factor's values, refused when one is NaN or infinite (it would poison every weight it is baked into).</summary>
    static float[] FiniteFloats(SafetensorsFile file, string key) => file.ReadFiniteFloats(key);

    static LoraAdapter LoadKohya(SafetensorsFile file, FluxConfig config, IBackend backend, IReadOnlyList<LoraTarget> all)
    {
        const string Down = ".lora_down.weight", Up = ".lora_up.weight", Alpha = ".alpha";
        var byModule = all.GroupBy(t => t.BflModule).ToDictionary(g => FluxNames.KohyaName(g.Key), g => g.ToList());
        // The module a key belongs to (its name less a kohya suffix), or null when it is no key of a known module.
        string? ModuleOf(string key) =>
            new[] { Down, Up, Alpha }.Where(x => key.EndsWith(x, StringComparison.Ordinal)).Select(x => key[..^x.Length]).FirstOrDefault(byModule.ContainsKey);
        var unknown = file.Entries.Keys.Where(n => ModuleOf(n) == null).Order(StringComparer.Ordinal).ToList();
        if (unknown.Count > 0)
            throw Fault(file.Path, $"{unknown.Count} key{(unknown.Count == 1 ? "" : "s")} match no kohya module (lora_down/lora_up/alpha) of a LoRA " +
                                   $"target of the {config.Name} model, e.g. {SafetensorsHeader.Quote(unknown[0])}");
        var modules = file.Entries.Keys.Select(n => ModuleOf(n)!).Distinct().Order(StringComparer.Ordinal).ToList();
        var targets = new List<LoraTarget>();
        var downs = new List<LoraParameter>();
        var ups = new List<LoraParameter>();
        foreach (var m in modules)
        {
            foreach (var key in new[] { m + Down, m + Up })
                if (!file.Contains(key)) throw Fault(file.Path, $"{SafetensorsHeader.Quote(key)} is missing: module '{m}' needs lora_down and lora_up");
            var downEntry = file[m + Down];
            var upEntry = file[m + Up];
            int dIn = byModule[m][0].InFeatures, dOut = FluxNames.LinearShape(config, byModule[m][0].BflModule).Out;
            if (downEntry.Shape.Length != 2 || downEntry.Shape[0] < 1 || downEntry.Shape[1] != dIn)
                throw Fault(file.Path, $"{SafetensorsHeader.Quote(m + Down)} has shape {Shapes.Format(downEntry.Shape)}, expected (rank ≥ 1, {dIn})");
            int rank = downEntry.Shape[0];
            if (upEntry.Shape.Length != 2 || upEntry.Shape[0] != dOut || upEntry.Shape[1] != rank)
                throw Fault(file.Path, $"{SafetensorsHeader.Quote(m + Up)} has shape {Shapes.Format(upEntry.Shape)}, expected ({dOut}, {rank})");
            float alpha = rank;
            if (file.Contains(m + Alpha))
            {
                var a = file[m + Alpha];
                if (a.Shape.Aggregate(1L, (p, d) => p * d) != 1) throw Fault(file.Path, $"{SafetensorsHeader.Quote(m + Alpha)} has shape {Shapes.Format(a.Shape)}, expected one value");
                alpha = FiniteFloats(file, m + Alpha)[0];
            }
            float scale = alpha / rank;
            var down = FiniteFloats(file, m + Down);
            var up = FiniteFloats(file, m + Up);
            var slices = byModule[m].OrderBy(t => t.RowStart).ToList();
            foreach (var t in slices)
                if (upEntry.Shape[0] < t.RowStart + t.Rows || upEntry.Shape[1] != rank || downEntry.Shape[1] != t.InFeatures)
                    throw Fault(file.Path, $"'{m}' has down {Shapes.Format(downEntry.Shape)} / up {Shapes.Format(upEntry.Shape)}, which do not fit {t.BflModule}");
            // A block-diagonal up (slice i's rows use only columns [i·r, (i+1)·r), as fused q/k/v and q/k/v/proj_mlp
            // are written) splits back to rank r per slice, as diffusers' converter does: A = down rows of block i,
            // B = that block of up. Otherwise each slice gets the whole down (rank k·r) and its rows of up.
            int r = BlockDiagonalRank(slices, up, rank);
            for (int s = 0; s < slices.Count; s++)
            {
                var t = slices[s];
                int c0 = r == rank ? 0 : s * r;
                var a = new float[r * t.InFeatures];
                Array.Copy(down, c0 * t.InFeatures, a, 0, a.Length);
                var b = new float[t.Rows * r];
                for (int row = 0; row < t.Rows; row++)
                    for (int j = 0; j < r; j++) b[row * r + j] = up[(t.RowStart + row) * rank + c0 + j] * scale;
                targets.Add(t);
                downs.Add(new LoraParameter(t.Name + ".lora_A.weight", backend.Upload(a, [r, t.InFeatures], Precision.Master)));
                ups.Add(new LoraParameter(t.Name + ".lora_B.weight", backend.Upload(b, [t.Rows, r], Precision.Master)));
            }
        }
        if (targets.Count == 0) throw Fault(file.Path, "no kohya LoRA modules found");
        var adapter = new LoraAdapter(backend, config, targets, LoraMode.Standard, downs[0].Shape[0], downs[0].Shape[0], [.. downs]);
        adapter.AddIdentity(new IdentityFactors(System.IO.Path.GetFileNameWithoutExtension(file.Path), new LoraParameter?[targets.Count], [.. ups]));
        return adapter;
    }

    /// <summary>
    /// rank / k when the k slices' rows of <paramref name="up"/> (d_out × rank) are zero outside their own column block
    /// of width rank / k; else <paramref name="rank"/> (one slice, or a fused LoRA that is not block-diagonal).
    /// </summary>
    static int BlockDiagonalRank(IReadOnlyList<LoraTarget> slices, float[] up, int rank)
    {
        int k = slices.Count;
        if (k < 2 || rank % k != 0) return rank;
        int r = rank / k;
        for (int s = 0; s < k; s++)
            for (int row = slices[s].RowStart; row < slices[s].RowStart + slices[s].Rows; row++)
                for (int j = 0; j < rank; j++)
                    if (j / r != s && up[row * rank + j] != 0f) return rank;
        return r;
    }

    /// <summary>W0[rows of each target] += strength · B·A (B·A = U·M·D for a Meta adapter): bakes an identity into the frozen weights.</summary>
    public static void Bake(FluxWeights weights, LoraAdapter a, int identity, float strength = 1f)
    {
        var be = weights.Backend;
        for (int t = 0; t < a.Targets.Count; t++)
        {
            var target = a.Targets[t];
            var (A, aShape, B, bShape) = Merged(a, identity, t);
            using var ta = be.Upload(A, aShape, Precision.Master);
            using var tb = be.Upload(B, bShape, Precision.Master);
            using var delta = be.Zeros([target.Rows, target.InFeatures], Precision.Master);
            be.Gemm(tb, false, ta, false, delta, strength);                 // (rows, r)·(r, d_in)
            be.AddNarrow(weights[target.BflModule + ".weight"], delta, 0, target.RowStart);
        }
    }

    public static string Describe(LoraAdapter a) =>
        $"{a.Mode} LoRA, {a.Targets.Count} targets, rank {a.Rank1}{(a.Mode == LoraMode.Meta ? "→" + a.Rank2 : "")}, {a.Identities.Count} identities";
}
