using System.Text;

namespace MetaLoraNative.Engine.Flux;

/// <summary>
/// Deterministic, stateless weights for a named tensor: the same values come out of this class and of
/// tools/reference (Python), so both engines can run the flux-dev shape without a 24 GB weight file.
///
///   key   = fnv1a64(utf8(name)) ^ (seed · 0x9E3779B97F4A7C15)
///   u_i   = (splitmix64(key + i) >> 40) / 2^24        (i: flat row-major index; exact in fp32)
///   w_i   = fp32(2u − 1)
///   value = w · fp32(1/√d_in) for rank-2 ".weight", 0.02f · w for ".bias", 1 + 0.1f · w for ".scale".
/// </summary>
public static class RandomWeights
{
    public static ulong Fnv1a64(string text)
    {
        ulong h = 0xcbf29ce484222325UL;
        foreach (byte b in Encoding.UTF8.GetBytes(text)) { h ^= b; h *= 0x100000001b3UL; }
        return h;
    }

    public static ulong SplitMix64(ulong z)
    {
        z += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>Uniform values w in [−1, 1) for indices [start, start + destination.Length) of the named stream.</summary>
    public static void Uniform(string name, ulong seed, long start, Span<float> destination)
    {
        ulong key = Fnv1a64(name) ^ (seed * 0x9E3779B97F4A7C15UL);
        for (int i = 0; i < destination.Length; i++)
        {
            float u = (SplitMix64(key + (ulong)(start + i)) >> 40) / 16777216f;
            destination[i] = 2f * u - 1f;
        }
    }

    /// <summary>The full tensor with the rule for its kind (see the class summary).</summary>
    public static float[] Tensor(string name, int[] shape, ulong seed)
    {
        var values = new float[Shapes.Numel(shape)];
        FillTensor(name, shape, seed, values);
        return values;
    }

    public static void FillTensor(string name, int[] shape, ulong seed, Span<float> values)
    {
        Uniform(name, seed, 0, values);
        if (name.EndsWith(".scale", StringComparison.Ordinal))
            for (int i = 0; i < values.Length; i++) values[i] = 1f + 0.1f * values[i];
        else if (name.EndsWith(".bias", StringComparison.Ordinal))
            for (int i = 0; i < values.Length; i++) values[i] = 0.02f * values[i];
        else if (shape.Length == 2)
        {
            float bound = (float)(1.0 / Math.Sqrt(shape[1]));
            for (int i = 0; i < values.Length; i++) values[i] = values[i] * bound;
        }
    }

    /// <summary>Standard normal samples (Box–Muller over the same stream), for noise and synthetic data.</summary>
    public static float[] Normal(string name, ulong seed, int count)
    {
        ulong key = Fnv1a64(name) ^ (seed * 0x9E3779B97F4A7C15UL);
        var result = new float[count];
        for (int i = 0; i < count; i += 2)
        {
            double u1 = ((SplitMix64(key + (ulong)i) >> 11) + 1.0) / 9007199254740993.0;   // (0, 1]
            double u2 = (SplitMix64(key + (ulong)i + 1) >> 11) / 9007199254740992.0;
            double r = Math.Sqrt(-2.0 * Math.Log(u1));
            result[i] = (float)(r * Math.Cos(2 * Math.PI * u2));
            if (i + 1 < count) result[i + 1] = (float)(r * Math.Sin(2 * Math.PI * u2));
        }
        return result;
    }
}
