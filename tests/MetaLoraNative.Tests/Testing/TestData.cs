namespace MetaLoraNative.Tests.Testing;

/// <summary>Seeded random test inputs. Values are fp32-representable so fp32 and fp64 engines see the same inputs.</summary>
public sealed class TestData(int seed)
{
    private readonly Random _rng = new(seed);

    /// <summary>n standard-normal values times <paramref name="scale"/>, rounded to fp32.</summary>
    public double[] Normal(int n, double scale = 1)
    {
        var v = new double[n];
        for (int i = 0; i < n; i++)
        {
            // Box–Muller
            double u1 = 1 - _rng.NextDouble(), u2 = _rng.NextDouble();
            v[i] = (float)(scale * Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
        }
        return v;
    }

    /// <summary>n values uniform in [lo, hi), rounded to fp32.</summary>
    public double[] Uniform(int n, double lo, double hi)
    {
        var v = new double[n];
        for (int i = 0; i < n; i++) v[i] = (float)(lo + (hi - lo) * _rng.NextDouble());
        return v;
    }

    public static int Numel(params int[] shape) => shape.Aggregate(1, (a, b) => a * b);
}
