// Folders of photos, one sub-folder per person: the input of `prepare --identities` (Stage-1 data) and the
// --identities of `score`. One reader for both, with one list of image extensions and one class.txt rule:
//   root/<person>/*.png|jpg|jpeg|webp|bmp   the person's photos, in name order (other files are ignored)
//   root/<person>/class.txt                 optional: man | woman (male | female accepted), else the default class
// A sub-folder without photos is skipped with a warning; a class.txt naming another class is an error naming the file.
namespace MetaLoraNative.Onnx.Datasets;

/// <summary>A person's class: the man/woman wording of prompts ("{class}" in captions, [man/woman] in the paper's).</summary>
public enum SubjectClass { Woman, Man }

/// <summary>One person's folder: name (the folder's), class, and photos in name order (at least one).</summary>
public sealed record PersonFolder(string Name, string Folder, SubjectClass Class, IReadOnlyList<string> Photos);

public static class PersonFolders
{
    public static readonly IReadOnlyList<string> ImageExtensions = [".png", ".jpg", ".jpeg", ".webp", ".bmp"];
    const string ClassFileName = "class.txt";

    static bool IsImage(string path) => ImageExtensions.Contains(Path.GetExtension(path).ToLowerInvariant());

    /// <summary>The image files of a folder in name order; none when the folder does not exist.</summary>
    public static List<string> Images(string folder) =>
        Directory.Exists(folder) ? Directory.GetFiles(folder).Where(IsImage).Order(StringComparer.Ordinal).ToList() : [];

    /// <summary>man|male → Man, woman|female → Woman (any case); anything else is an error naming <paramref name="source"/>.</summary>
    public static SubjectClass ParseClass(string text, string source) => text.Trim().ToLowerInvariant() switch
    {
        "man" or "male" => SubjectClass.Man,
        "woman" or "female" => SubjectClass.Woman,
        var other => throw new InvalidDataException($"{source}: unknown class '{other}' (expected man or woman)"),
    };

    /// <summary>The word a caption uses for the class: "man" or "woman".</summary>
    public static string Word(this SubjectClass c) => c == SubjectClass.Man ? "man" : "woman";

    /// <summary>Every person sub-folder of <paramref name="root"/> that holds photos, in name order.</summary>
    public static List<PersonFolder> Read(string root, SubjectClass defaultClass, Action<string>? warn = null)
    {
        if (!Directory.Exists(root)) throw new DirectoryNotFoundException($"{root}: no such folder (one sub-folder of photos per person)");
        var people = new List<PersonFolder>();
        foreach (var folder in Directory.GetDirectories(root).Order(StringComparer.Ordinal))
        {
            var photos = Images(folder);
            if (photos.Count == 0)
            {
                warn?.Invoke($"{folder} has no photos ({string.Join(", ", ImageExtensions)}); skipped");
                continue;
            }
            string classFile = Path.Combine(folder, ClassFileName);
            var cls = File.Exists(classFile) ? ParseClass(File.ReadAllText(classFile), classFile) : defaultClass;
            people.Add(new PersonFolder(Path.GetFileName(folder), folder, cls, photos));
        }
        if (people.Count == 0)
            throw new InvalidDataException($"{root}: no person sub-folder with photos ({string.Join(", ", ImageExtensions)}); one sub-folder of photos per person");
        return people;
    }
}
