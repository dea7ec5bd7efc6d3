using MetaLoraNative.Engine.Backends.Cpu;
using MetaLoraNative.Engine.Demo;
using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.IO;
using MetaLoraNative.Engine.Lora;
using MetaLoraNative.Engine.Training;
using MetaLoraNative.Tests.Testing;
using static MetaLoraNative.Tests.Cli.CliRunner;

namespace MetaLoraNative.Tests.Workflow;

/// <summary>
/// The unmerged D/M/U file is OUT.metalora, so a LoRA loader that lists every *.safetensors (ComfyUI's loras/) sees
/// only files it can apply; every reader takes the new name, and the old .meta.safetensors still reads, with a note.
/// </summary>
[Collection("console")]
public sealed class UnmergedFileNameTests() : TempFolderTest("unmerged")
{
    [Fact]
    public void Stage2WritesTheUnmergedFileUnderANameLoraLoadersDoNotList()
    {
        string ids = Path.Combine(dir, "ids"), down = Path.Combine(dir, "d", "down.safetensors"), run = Path.Combine(dir, "loras"), me = Path.Combine(run, "me.safetensors");
        LatentDataset.SaveIdentity(Path.Combine(ids, "p0"), TinyDemo.MakeIdentity(FluxConfig.Tiny, "p0", 2, 1));
        var s1 = Run("train", "stage1", "--model", "random:tiny:1", "--data", ids, "--out", down, "--iterations", "2", "--bucket-iterations", "2",
                     "--batch-size", "1", "--rank1", "4");
        Assert.True(s1.Code == 0, s1.Err + s1.Out);
        var s2 = Run("train", "stage2", "--model", "random:tiny:1", "--down", down, "--data", Path.Combine(ids, "p0"), "--out", me, "--iterations", "2",
                     "--format", "both", "--save-every", "1");
        Assert.True(s2.Code == 0, s2.Err + s2.Out);
        Assert.True(File.Exists(Path.Combine(run, "me.metalora")));
        Assert.False(File.Exists(Path.Combine(run, "me.meta.safetensors")));
        // what a loader lists: every *.safetensors is a merged LoRA (PEFT or kohya keys), none the Meta layout
        var listed = Directory.GetFiles(run, "*.safetensors").Where(f => !f.EndsWith(".state.safetensors", StringComparison.Ordinal)).ToList();
        Assert.Equal(6, listed.Count);   // me, me.kohya and two steps of each (the training state aside)
        foreach (var f in listed)
        {
            using var file = SafetensorsFile.Open(f);
            Assert.Contains(LoraFiles.Layout(file.Entries.Keys), new LoraFormat?[] { LoraFormat.Peft, LoraFormat.Kohya });
        }
        using (var meta = SafetensorsFile.Open(Path.Combine(run, "me.metalora")))
            Assert.Equal(LoraFormat.Meta, LoraFiles.Layout(meta.Entries.Keys));

        using var be = CpuBackend.F32();
        using var unmerged = LoraFiles.Load(Path.Combine(run, "me.metalora"), FluxConfig.Tiny, be);
        Assert.Equal((LoraMode.Meta, 1), (unmerged.Mode, unmerged.Identities.Count));
        var info = Run("lora", "info", "--in", Path.Combine(run, "me.metalora"));
        Assert.True(info.Code == 0, info.Err);
        Assert.Contains("Meta (D/M/U) layout, base tiny (the file's metadata)", info.Out);
        Assert.DoesNotContain("note:", info.Out);
        var convert = Run("lora", "convert", "--in", Path.Combine(run, "me.metalora"), "--out", Path.Combine(dir, "merged.safetensors"));
        Assert.True(convert.Code == 0, convert.Err);
        // the merge of the unmerged file is the merged LoRA stage 2 wrote
        using var merged = LoraFiles.Load(Path.Combine(dir, "merged.safetensors"), FluxConfig.Tiny, be);
        using var written = LoraFiles.Load(me, FluxConfig.Tiny, be);
        Assert.Equal(be.Download(written.Identities[0].Up[0].Value), be.Download(merged.Identities[0].Up[0].Value));

        // a Meta file under the new name is a --down too (Stage 2 takes its D)
        var again = Run("train", "stage2", "--model", "random:tiny:1", "--down", Path.Combine(run, "me.metalora"), "--data", Path.Combine(ids, "p0"),
                        "--out", Path.Combine(dir, "again", "me2.safetensors"), "--iterations", "1");
        Assert.True(again.Code == 0, again.Err + again.Out);
    }

    [Fact]
    public void TheOldNameStillReadsWithANoteToRenameIt()
    {
        string old = Path.Combine(dir, "me.meta.safetensors");
        using (var be = CpuBackend.F32())
        using (var a = LoraAdapter.Random(be, FluxConfig.Tiny, LoraMode.Meta, 4, 2, 1, 5))
            LoraFiles.SaveMeta(a, 0, old);
        string note = $"note: {old} has the old name of an unmerged D/M/U file; rename it to {Path.Combine(dir, "me.metalora")}";
        foreach (var args in new[] { new[] { "lora", "info", "--in", old }, ["lora", "convert", "--in", old, "--out", Path.Combine(dir, "c.safetensors")] })
        {
            var r = Run(args);
            Assert.True(r.Code == 0, r.Err);
            Assert.Contains(note, r.Out);
            Assert.Contains("Meta (D/M/U) layout, base tiny (the file's metadata)", r.Out);   // no --base: the file names its model
        }
        var lines = new List<string>();
        using (var be = CpuBackend.F32())
        using (var loaded = LoraFiles.Load(old, FluxConfig.Tiny, be, lines.Add))
            Assert.Equal(LoraMode.Meta, loaded.Mode);
        Assert.StartsWith(note, Assert.Single(lines));
    }
}
