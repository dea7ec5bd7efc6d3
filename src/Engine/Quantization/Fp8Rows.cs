using MetaLoraNative.Engine.IO;

namespace MetaLoraNative.Engine.Quantization;

/// <summary>
/// One weight in fp8 on the host, as <see cref="IBackend.UploadQuantized"/> takes it: Codes (rows·cols) OCP E4M3,
/// row-major, and Scale (rows) fp32, with W[j, k] = Scale[j] · e4m3(Codes[j·cols + k]).
///
/// <see cref="Quantize"/> is the per-output-channel rule (ai-toolkit's quanto qfloat8 and musubi's channel mode):
/// scale_j = amax_j / 448 with amax_j = max_k |W[j, k]|, codes = e4m3(W[j, k] / scale_j) rounded to nearest even
/// (the division in fp32, then <see cref="HalfPrecision.FloatToFloat8E4M3"/>), so each row's largest magnitude maps
/// to ±448 and nothing saturates. An all-zero row gets scale 1. Each element then carries E4M3's error: at most half
/// an ulp, 2^-4 of its value in the normal range (3 mantissa bits), and at most 2^-10 · scale_j below 2^-6 · scale_j.
/// Because scales are per row, quantising the parts of a row-stacked linear (diffusers' q, k, v) and stacking the
/// results (<see cref="ConcatRows"/>) gives exactly the quantisation of the stacked weight.
/// </summary>
public sealed record Fp8Rows(int Rows, int Cols, byte[] Codes, float[] Scale)
{
    /// <summary>Quantises w (rows, cols) row by row; a non-finite weight fails naming <paramref name="what"/> and the row.</summary>
    public static Fp8Rows Quantize(float[] w, int rows, int cols, string what)
    {
        if (w.Length != (long)rows * cols)
            throw new ArgumentException($"{what}: {w.Length} values do not make a ({rows}, {cols}) weight");
        var codes = new byte[w.Length];
        var scale = new float[rows];
        int bad = -1;
        Parallel.For(0, rows, j =>
        {
            var row = w.AsSpan(j * cols, cols);
            float amax = 0f;
            foreach (float v in row)
            {
                if (!float.IsFinite(v)) { Interlocked.Exchange(ref bad, j); return; }
                amax = MathF.Max(amax, MathF.Abs(v));
            }
            float s = amax > 0f ? amax / HalfPrecision.Float8E4M3Max : 1f;
            var dst = codes.AsSpan(j * cols, cols);
            for (int k = 0; k < cols; k++) dst[k] = HalfPrecision.FloatToFloat8E4M3(row[k] / s);
            scale[j] = s;
        });
        if (bad >= 0)
            throw new InvalidDataException($"{what}: row {bad} holds a non-finite value ({w.AsSpan(bad * cols, cols).ToArray().First(v => !float.IsFinite(v))}); fp8 quantisation needs finite weights");
        return new Fp8Rows(rows, cols, codes, scale);
    }

    /// <summary>
    /// Codes as a checkpoint stores them (ComfyUI's fp8 files, musubi's and ComfyUI's scaled fp8) with their scale:
    /// one value for every row (a per-tensor scale, 1 when the file has none) or one per row. A NaN code (S.1111.111)
    /// or a scale that is not finite and positive fails naming <paramref name="what"/>.
    /// </summary>
    public static Fp8Rows Stored(ReadOnlySpan<byte> codes, ReadOnlySpan<float> scale, int rows, int cols, string what)
    {
        if (codes.Length != (long)rows * cols)
            throw new InvalidDataException($"{what}: {codes.Length} fp8 codes do not make a ({rows}, {cols}) weight");
        if (scale.Length != 1 && scale.Length != rows)
            throw new InvalidDataException($"{what}: {scale.Length} scales for {rows} rows; expected one for the tensor or one per output channel");
        foreach (float s in scale)
            if (!float.IsFinite(s) || s <= 0f)
                throw new InvalidDataException($"{what}: scale {s} is not finite and positive");
        int nan = codes.IndexOfAny((byte)0x7F, (byte)0xFF);
        if (nan >= 0)
            throw new InvalidDataException($"{what}: fp8 code 0x{codes[nan]:X2} (NaN) at row {nan / cols}, column {nan % cols}");
        var perRow = new float[rows];
        if (scale.Length == 1) perRow.AsSpan().Fill(scale[0]);
        else scale.CopyTo(perRow);
        return new Fp8Rows(rows, cols, codes.ToArray(), perRow);
    }

    /// <summary>The parts stacked along the rows (a fused linear from its diffusers parts); every part has the same cols.</summary>
    public static Fp8Rows ConcatRows(IReadOnlyList<Fp8Rows> parts, string what)
    {
        if (parts.Count == 1) return parts[0];
        int cols = parts[0].Cols;
        if (parts.Any(p => p.Cols != cols))
            throw new InvalidDataException($"{what}: parts of {string.Join(", ", parts.Select(p => p.Cols))} columns cannot be stacked");
        return new Fp8Rows(parts.Sum(p => p.Rows), cols, [.. parts.SelectMany(p => p.Codes)], [.. parts.SelectMany(p => p.Scale)]);
    }

    /// <summary>Uploads to a backend.</summary>
    public QuantizedWeight Upload(IBackend backend) => backend.UploadQuantized(Codes, Scale, Rows, Cols);
}
