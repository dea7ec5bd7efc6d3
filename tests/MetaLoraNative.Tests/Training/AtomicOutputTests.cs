using MetaLoraNative.Engine.IO;
using MetaLoraNative.Tests.Testing;
using static MetaLoraNative.Tests.Cli.CliRunner;

namespace MetaLoraNative.Tests.Training;

/// <summary>Output folders (data synth, augment) are built aside: a failure half-way (a full disk) leaves nothing partial.</summary>
[Collection("console")]
public sealed class AtomicOutputTests() : TempFolderTest("atomic")
{
    static void FullDiskAfterOneFile(string folder)
    {
        File.WriteAllText(Path.Combine(folder, "crop_01.png"), "written");
        Directory.CreateDirectory(Path.Combine(folder, "person000"));
        throw new IOException("No space left on device");
    }

    [Fact]
    public void AFailedBuildLeavesNoOutputFolderAndNoPartialOne()
    {
        string target = Path.Combine(dir, "crops");
        Assert.Throws<IOException>(() => AtomicFolder.Write(target, FullDiskAfterOneFile));
        Assert.Empty(Directory.EnumerateFileSystemEntries(dir));
    }

    [Fact]
    public void AFailedBuildIntoAnExistingFolderLeavesItAsItWas()
    {
        string target = Path.Combine(dir, "crops");
        Directory.CreateDirectory(target);
        File.WriteAllText(Path.Combine(target, "crop_01.png"), "old");
        Assert.Throws<IOException>(() => AtomicFolder.Write(target, FullDiskAfterOneFile));
        Assert.Equal(["crop_01.png"], Directory.GetFileSystemEntries(target).Select(Path.GetFileName));
        Assert.Equal("old", File.ReadAllText(Path.Combine(target, "crop_01.png")));
        Assert.Equal([target], Directory.GetDirectories(dir));

        // a successful build refreshes what it writes and keeps the rest
        File.WriteAllText(Path.Combine(target, "notes.txt"), "mine");
        AtomicFolder.Write(target, f => File.WriteAllText(Path.Combine(f, "crop_01.png"), "new"));
        Assert.Equal("new", File.ReadAllText(Path.Combine(target, "crop_01.png")));
        Assert.Equal("mine", File.ReadAllText(Path.Combine(target, "notes.txt")));
        Assert.Equal([target], Directory.GetDirectories(dir));
    }

    [Fact]
    public void DataSynthMovesItsDatasetIntoPlaceAndAFailedOneLeavesNothing()
    {
        string data = Path.Combine(dir, "ids");
        var ok = Run("data", "synth", "--out", data, "--identities", "2", "--images", "1");
        Assert.True(ok.Code == 0, ok.Err);
        Assert.Equal(2, Directory.GetDirectories(data).Length);
        Assert.Equal([data], Directory.GetDirectories(dir));

        string bad = Path.Combine(dir, "bad");
        var fail = Run("data", "synth", "--out", bad, "--identities", "3", "--images", "1", "--preset", "no-such-preset");
        Assert.NotEqual(0, fail.Code);
        Assert.False(Directory.Exists(bad));
        Assert.Equal([data], Directory.GetDirectories(dir));
    }
}
