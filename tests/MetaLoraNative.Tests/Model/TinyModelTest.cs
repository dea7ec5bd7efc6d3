using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Tests.Testing;

namespace MetaLoraNative.Tests.Model;

/// <summary>The tiny model with random weights of one seed on the fp32 CPU engine, and a temporary folder, per test.</summary>
public abstract class TinyModelTest : TempFolderTest
{
    protected static readonly FluxConfig c = FluxConfig.Tiny;
    protected readonly IBackend be = CpuBackend.F32();
    protected readonly FluxWeights w;
    protected readonly FluxModel m;

    protected TinyModelTest(string name, ulong weightSeed) : base(name)
    {
        w = FluxWeights.Random(c, be, weightSeed);
        m = new FluxModel(w);
    }

    public override void Dispose()
    {
        w.Dispose();
        be.Dispose();
        base.Dispose();
    }
}
