namespace MetaLoraNative.Engine;

/// <summary>
/// A file the user gave is readable but its content is wrong for this use (a LoRA key that matches no target, a
/// factor of the wrong shape, a non-finite value, bad metadata). <see cref="InputException.Subject"/> is the file; the
/// message starts with it, then names the tensor or key and says what is wrong.
/// </summary>
public class InputFileException(string path, string fault) : InputException(path, $"{path}: {fault}")
{
    /// <summary>The fault alone, without the file name.</summary>
    public string Fault { get; } = fault;
}
