using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Training;

namespace MetaLoraNative.Engine.Debugging;

/// <summary>
/// One forward + backward on fixed inputs, written to a file any other implementation can be compared with
/// (tools/reference/step.py writes the same layout). Contract:
///   IN   img (B, L_img, in), img_ids (B, L_img, 3), txt (B, L_txt, ctx), txt_ids (B, L_txt, 3), timesteps (B), y (B, vec),
///        guidance (B) [omitted for models without guidance], target (B, L_img, out)
///   OUT  output (B, L_img, out), loss (), and grad.KEY for every LoRA factor KEY of the LoRA file (same shape).
/// The loss is mean((output − target)²); gradients are of that loss.
/// </summary>
public static class ReferenceStep
{
    public static readonly string[] InputNames = ["img", "img_ids", "txt", "txt_ids", "timesteps", "y", "guidance", "target"];

    public sealed record Result(double Loss, int Factors, TimeSpan Elapsed);

    public static Result Run(string model, string inputs, string lora, string output, IBackend backend)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        using var weights = FluxLoader.Load(model, backend);
        var flux = new FluxModel(weights);
        using var adapter = LoraFiles.Load(lora, weights.Config, backend);
        if (adapter.Identities.Count == 0)
            throw new InvalidDataException($"{lora}: holds only Down factors; a step needs a complete LoRA (Meta D/M/U or A/B)");
        using var x = ReadInputs(inputs, weights.Config, backend, out var target);
        using var _t = target;

        var binding = new LoraBinding(adapter, new int[x.Img.Dim(0)], trainDown: true, trainIdentity: true);
        var parameters = binding.TrainableParameters().ToArray();
        double loss = Trainer.LossAndGradients(flux, x, target, binding, recompute: false, out var prediction);
        using var _p = prediction;

        var tensors = new List<SafetensorsTensor>
        {
            new("output", prediction.Shape, backend.Download(prediction)),
            new("loss", [], [(float)loss]),
        };
        tensors.AddRange(parameters.Select(p => new SafetensorsTensor("grad." + p.Name, p.Shape, backend.Download(p.Grad))));
        SafetensorsWriter.Write(output, tensors, new Dictionary<string, string>
        {
            ["metalora.backend"] = backend.Name,
            ["metalora.model"] = model,
            ["metalora.loss"] = loss.ToString("R", System.Globalization.CultureInfo.InvariantCulture),
        });
        return new Result(loss, parameters.Length, clock.Elapsed);
    }

    /// <summary>Reads and checks an inputs file against the model's config.</summary>
    public static FluxInputs ReadInputs(string path, FluxConfig c, IBackend be, out Tensor target)
    {
        using var f = SafetensorsFile.Open(path);
        Tensor T(string name, params int[] expectRank)
        {
            if (!f.Contains(name)) throw new InvalidDataException($"{path}: input '{name}' is missing (expected {string.Join(", ", InputNames)})");
            var e = f[name];
            if (e.Shape.Length != expectRank[0]) throw new InvalidDataException($"{path}: '{name}' has rank {e.Shape.Length}, expected {expectRank[0]}");
            return be.Upload(f.ReadFloats(name), e.Shape);
        }
        var img = T("img", 3);
        int B = img.Dim(0), L = img.Dim(1);
        void Expect(Tensor t, string name, params int[] shape)
        {
            if (!t.Shape.AsSpan().SequenceEqual(shape))
                throw new InvalidDataException($"{path}: '{name}' has shape {Shapes.Format(t.Shape)}, expected {Shapes.Format(shape)}");
        }
        Expect(img, "img", B, L, c.InChannels);
        var txt = T("txt", 3);
        int Lt = txt.Dim(1);
        Expect(txt, "txt", B, Lt, c.ContextInDim);
        var imgIds = T("img_ids", 3); Expect(imgIds, "img_ids", B, L, 3);
        var txtIds = T("txt_ids", 3); Expect(txtIds, "txt_ids", B, Lt, 3);
        var ts = T("timesteps", 1); Expect(ts, "timesteps", B);
        var y = T("y", 2); Expect(y, "y", B, c.VecInDim);
        Tensor? g = null;
        if (c.GuidanceEmbed) { g = T("guidance", 1); Expect(g, "guidance", B); }
        target = T("target", 3);
        Expect(target, "target", B, L, c.OutChannels);
        return new FluxInputs(img, imgIds, txt, txtIds, ts, y, g);
    }
}
