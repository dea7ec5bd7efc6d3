namespace MetaLoraNative.Engine;

// The two kinds of failure the CLI reports in one line (`error: <subject>: <message>`):
// - InputException: the user's file, flag or data is wrong (exit code 2). Nothing was written.
// - RuntimeFailure: valid input, but the run could not go on (a device fault, a full disk, non-finite training
//   values; exit code 1). The last good state on disk is left in place.
// Anything else reaching the CLI is a bug in this program and is reported as such.

/// <summary>Bad input: a file, flag or data value that is wrong. <see cref="Subject"/> names it (a path or a flag).</summary>
public class InputException(string subject, string message, Exception? inner = null) : Exception(message, inner)
{
    /// <summary>The file path or flag the problem is about, as the user wrote it.</summary>
    public string Subject { get; } = subject;
}

/// <summary>A run that had valid input but could not continue. <see cref="Subject"/> names what failed.</summary>
public class RuntimeFailure(string subject, string message, Exception? inner = null) : Exception(message, inner)
{
    /// <summary>What failed: a path, a device, a step ("step 120").</summary>
    public string Subject { get; } = subject;
}
