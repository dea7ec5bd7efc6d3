using MetaLoraNative.Onnx.Datasets;

namespace MetaLoraNative.Tests.Onnx;

/// <summary>The one reader of person folders behind `prepare --identities` and `score --identities`.</summary>
public class PersonFoldersTests
{
    [Fact]
    public void PhotosAreTheImageFilesInNameOrderAndClassFilesSetTheClass()
    {
        string root = TestAssets.TempDir("people");
        void Touch(string person, params string[] files)
        {
            Directory.CreateDirectory(Path.Combine(root, person));
            foreach (var f in files) File.WriteAllText(Path.Combine(root, person, f), "");
        }
        Touch("bob", "b.JPG", "a.png", "notes.txt", "c.webp", "d.jpeg", "e.bmp", "f.gif");
        File.WriteAllText(Path.Combine(root, "bob", "class.txt"), " Male\n");
        Touch("ann", "x.jpg");
        Touch("empty", "readme.md");
        File.WriteAllText(Path.Combine(root, "empty", "class.txt"), "not read: the folder has no photos");
        var warnings = new List<string>();

        var people = PersonFolders.Read(root, SubjectClass.Woman, warnings.Add);

        Assert.Equal(["ann", "bob"], people.Select(p => p.Name));
        Assert.Equal(SubjectClass.Woman, people[0].Class);                   // no class.txt: the default
        Assert.Equal(SubjectClass.Man, people[1].Class);
        Assert.Equal(["a.png", "b.JPG", "c.webp", "d.jpeg", "e.bmp"], people[1].Photos.Select(Path.GetFileName));
        var w = Assert.Single(warnings);
        Assert.Contains(Path.Combine(root, "empty"), w);
        Assert.Equal("man", SubjectClass.Man.Word());
        Assert.Equal(SubjectClass.Woman, PersonFolders.ParseClass("FEMALE", "x"));
        Directory.Delete(root, true);
    }

    [Fact]
    public void AMissingRootOrOneWithoutPhotosIsAClearError()
    {
        string root = TestAssets.TempDir("no-people");
        Assert.Contains(Path.Combine(root, "nope"), Assert.Throws<DirectoryNotFoundException>(() => PersonFolders.Read(Path.Combine(root, "nope"), SubjectClass.Man)).Message);
        Directory.CreateDirectory(Path.Combine(root, "p"));
        var e = Assert.Throws<InvalidDataException>(() => PersonFolders.Read(root, SubjectClass.Man));
        Assert.Contains(root, e.Message);
        Assert.Contains("no person sub-folder with photos", e.Message);
        Directory.Delete(root, true);
    }
}
