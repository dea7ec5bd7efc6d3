using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace MetaLoraNative.Tests.Testing;

/// <summary>Input files the CLI tests on the stand-in models share: a photo and a Meta-Down for the tiny-t5 preset.</summary>
public static class StandInFiles
{
    /// <summary>A PNG of colour gradients (the stand-in face detector finds its face in the middle).</summary>
    public static string WritePhoto(string path, int width = 640, int height = 480)
    {
        using var img = new Image<Rgb24>(width, height);
        for (int y = 0; y < height; y++)
            for (int x = 0; x < width; x++)
                img[x, y] = new Rgb24((byte)(x * 255 / width), (byte)(y * 255 / height), (byte)((x + y) % 256));
        img.SaveAsPng(path);
        return path;
    }

    /// <summary>A Meta-Down (r1 4, seed 3) for every LoRA target of tiny-t5, the --down of personalize and train stage2.</summary>
    public static string WriteMetaDown(string path)
    {
        using var be = CpuBackend.F32();
        var c = FluxConfig.TinyT5;
        using var down = LoraAdapter.Create(be, c, FluxNames.LoraTargets(c), LoraMode.Meta, 4, 1, 3);
        LoraFiles.SaveMeta(down, null, path);
        return path;
    }
}
