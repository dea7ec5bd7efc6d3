// The evaluation prompts of the paper's appendix: Table 1 (recontextualisation) and Table 2 (stylistic) are used for
// CLIP-T, Table 3 for (R-)FaceSim. Tables 1 and 2 list ten prompts written for men and ten for women; Table 3 is one
// template with [man/woman], [his/her] and [he/she] filled in for the subject.
//
// The trigger word: a LoRA trained on "a photo of sks person" is prompted with its trigger. A prompt carries the
// placeholder {trigger}, which is replaced by the trigger word ("a photo of {trigger} person" -> "a photo of sks
// person") or, without one, dropped with the space after it (the paper's wording). The built-in prompts get the
// placeholder before their first subject word ("A {trigger} woman in a swimming pool ..."); a prompt file places it
// itself, and a trigger given for a line without it is an error naming the file and line.
using System.Text.RegularExpressions;
using MetaLoraNative.Engine;
using MetaLoraNative.Onnx.Datasets;

namespace MetaLoraNative.Onnx.Scoring;

public static class PaperPrompts
{
    public static readonly IReadOnlyList<string> Table1Man =
    [
        "A man in a firefighter uniform, standing in front of a firetruck, looking straight ahead.",
        "A man in a spacesuit, floating in space with Earth in the background, face clearly visible.",
        "A 90-year-old man with completely white hair, deep wrinkles covering his forehead, around his eyes, and mouth, looking at the viewer, well-lit portrait.",
        "A man as a 1-year-old baby, joyful and playful, looking directly at the camera, soft lighting.",
        "A man riding a bicycle under the Eiffel Tower, smiling at the camera.",
        "A man playing a guitar in the forest, looking at the viewer, natural lighting.",
        "A man working on a laptop in a modern office, facing forward with focused expression.",
        "A man as a medieval knight, wearing a shining armor, cinematic lighting.",
        "A man in a 1920s noir setting, wearing a fedora, moody lighting.",
        "A man standing in the middle of a desert, wearing a long flowing scarf, looking at the camera as a sandstorm approaches.",
    ];

    public static readonly IReadOnlyList<string> Table1Woman =
    [
        "A woman in a swimming pool, water reflecting on her face, looking straight ahead.",
        "A woman in a sunset backview, turning her head slightly towards the camera, warm glow on her face.",
        "A woman piloting a fighter jet, cockpit reflections visible, face clearly in focus.",
        "A woman in New York, standing in Times Square, bright city lights illuminating her face.",
        "A woman reading books in the library, facing forward, glasses on, scholarly expression.",
        "A woman driving a car, cityscape in the background, focused expression, looking ahead.",
        "A woman standing in the middle of a desert, wearing a long flowing scarf, looking at the camera as a sandstorm approaches.",
        "A woman walking along a misty cobblestone street in an old European town, holding a vintage lantern, gazing into the distance.",
        "A woman sitting on a rooftop at dusk, overlooking a glowing city skyline, sipping from a warm cup, smiling at the camera.",
        "A woman in a 1920s noir setting, wearing a vintage dress, moody lighting.",
    ];

    public static readonly IReadOnlyList<string> Table2Man =
    [
        "A man as a cyberpunk character, neon lights reflecting on his face, highly detailed.",
        "A man as an ink wash painting, traditional Asian art style, serene expression.",
        "A man as a futuristic android, half-human half-machine, glowing circuits on face.",
        "A man in an art nouveau portrait, elegant and highly stylized.",
        "A Pixar character of a man, expressive and exaggerated facial features.",
        "A man sculpted out of marble, photorealistic, museum lighting.",
        "A pop-art style portrait of a man, bright colors and bold outlines.",
        "A Funko pop figure of a man, oversized head, cartoonish features.",
        "A pencil drawing of a man, highly detailed, face in full view.",
        "A painting of a man in Van Gogh style, expressive brush strokes, looking at the viewer.",
    ];

    public static readonly IReadOnlyList<string> Table2Woman =
    [
        "A woman as a cyberpunk character, neon lights reflecting on her face, highly detailed.",
        "A woman as an ink wash painting, traditional Asian art style, serene expression.",
        "A woman as a futuristic android, half-human half-machine, glowing circuits on face.",
        "A woman in an art nouveau portrait, elegant and highly stylized.",
        "A painting of a woman in Van Gogh style, expressive brush strokes, looking at the viewer.",
        "A Pixar character of a woman, expressive and exaggerated facial features.",
        "A woman sculpted out of marble, photorealistic, museum lighting.",
        "A pop-art style portrait of a woman, bright colors and bold outlines.",
        "A Funko pop figure of a woman, oversized head, cartoonish features.",
        "A mysterious woman witcher at night, glowing magical energy in her hands, looking directly at the viewer.",
    ];

    public static readonly IReadOnlyList<string> Table3Template =
    [
        "A [man/woman] standing in a sunlit urban plaza, facing directly toward the camera with a fully visible, highly detailed face and direct eye contact.",
        "A [man/woman] in a casual outfit, positioned in a blooming garden with soft natural light, [his/her] face clearly visible and [his/her] eyes meeting the camera.",
        "A [man/woman] in a minimalist, modern outfit, set against a softly lit abstract background, with [his/her] face rendered in intricate detail and direct eye contact.",
        "A [man/woman] in elegant attire, standing against a scenic landscape at sunrise, [his/her] face captured in sharp detail with a steady, direct gaze.",
        "A [man/woman] in a relaxed, stylish ensemble, posed on a quiet beach at sunset, with a fully visible, richly detailed face and clear eye contact.",
        "A [man/woman] in a fashionable outfit, placed in a vibrant urban art scene, with [his/her] face prominently visible, detailed, and looking straight at the camera.",
        "A [man/woman] with a confident expression, standing in a serene park under bright daylight, [his/her] face rendered in high detail and engaging directly with the viewer.",
        "A [man/woman] in a chic outfit, situated in a picturesque alleyway with soft ambient lighting, with [his/her] face clearly displayed in full detail and direct gaze.",
        "A [man/woman] in a modern, casual look, standing in a contemporary indoor space with artistic lighting, [his/her] face fully visible and rendered with intricate detail as [he/she] looks at the camera.",
        "A [man/woman] in a trendy outfit, positioned in a lively outdoor market where natural light highlights [his/her] features, [his/her] face completely unobstructed and detailed, with direct eye contact.",
    ];

    /// <summary>Fills [man/woman], [his/her], [he/she] (and [him/her]) for the subject.</summary>
    public static string Substitute(string template, SubjectClass subject)
    {
        bool man = subject == SubjectClass.Man;
        return template
            .Replace("[man/woman]", man ? "man" : "woman")
            .Replace("[his/her]", man ? "his" : "her")
            .Replace("[he/she]", man ? "he" : "she")
            .Replace("[him/her]", man ? "him" : "her");
    }

    public const string TriggerPlaceholder = "{trigger}";

    static readonly Regex SubjectWord = new(@"\b(man|woman)\b", RegexOptions.CultureInvariant);

    /// <summary>A built-in prompt with {trigger} before its first subject word ("A man in ..." → "A {trigger} man in ...").</summary>
    static string WithPlaceholder(string prompt) =>
        SubjectWord.IsMatch(prompt) ? SubjectWord.Replace(prompt, TriggerPlaceholder + " $1", 1)
            : throw new InvalidOperationException($"built-in prompt without a subject word: {prompt}");

    /// <summary>
    /// {trigger} replaced by <paramref name="trigger"/>, or dropped (with its following space) when there is none; a
    /// trigger for a prompt without the placeholder is an error against <paramref name="source"/> (a file and line).
    /// </summary>
    public static string FillTrigger(string prompt, string? trigger, string source)
    {
        if (!prompt.Contains(TriggerPlaceholder, StringComparison.Ordinal))
            return trigger is null ? prompt
                : throw new InputException(source, $"'{prompt}' has no {TriggerPlaceholder} placeholder for the trigger '{trigger}' " +
                                                   $"(write e.g. 'a photo of {TriggerPlaceholder} person', or leave out the trigger)");
        return trigger is null ? prompt.Replace(TriggerPlaceholder + " ", "").Replace(TriggerPlaceholder, "") : prompt.Replace(TriggerPlaceholder, trigger);
    }

    /// <summary>Names accepted by `metalora score --prompts`.</summary>
    public static readonly IReadOnlyList<string> SetNames = ["facesim", "recontext", "stylistic", "clip-t"];

    /// <summary>
    /// facesim: Table 3 (10); recontext: Table 1 (10); stylistic: Table 2 (10); clip-t: Tables 1 then 2 (20);
    /// all for the given subject class, with <paramref name="trigger"/> before the subject word when given.
    /// </summary>
    public static IReadOnlyList<string> Set(string name, SubjectClass subject, string? trigger = null) =>
        Templates(name, subject).Select(p => FillTrigger(WithPlaceholder(p), trigger, $"prompt set {name}")).ToList();

    static IReadOnlyList<string> Templates(string name, SubjectClass subject)
    {
        bool man = subject == SubjectClass.Man;
        return name switch
        {
            "facesim" => Table3Template.Select(t => Substitute(t, subject)).ToList(),
            "recontext" => man ? Table1Man : Table1Woman,
            "stylistic" => man ? Table2Man : Table2Woman,
            "clip-t" => [.. man ? Table1Man : Table1Woman, .. man ? Table2Man : Table2Woman],
            _ => throw new InputException("--prompts", $"unknown prompt set '{name}' (known: {string.Join(", ", SetNames)})"),
        };
    }

    /// <summary>
    /// A built-in set name, or a text file with one prompt per line (may use the [man/woman] and {trigger}
    /// placeholders; empty lines and lines starting with '#' are skipped).
    /// </summary>
    public static IReadOnlyList<string> Resolve(string setOrFile, SubjectClass subject, string? trigger = null)
    {
        if (SetNames.Contains(setOrFile)) return Set(setOrFile, subject, trigger);
        if (!File.Exists(setOrFile))
            throw new FileNotFoundException($"prompts: '{setOrFile}' is neither a built-in set ({string.Join(", ", SetNames)}) nor a file");
        var prompts = File.ReadAllLines(setOrFile).Select((l, i) => (Text: l.Trim(), Line: i + 1)).Where(l => l.Text.Length > 0 && !l.Text.StartsWith('#'))
            .Select(l => FillTrigger(Substitute(l.Text, subject), trigger, $"{setOrFile} line {l.Line}")).ToList();
        if (prompts.Count == 0) throw new InputException(setOrFile, "holds no prompt (one prompt per line; '#' starts a comment line)");
        return prompts;
    }
}
