using System.Text;

namespace MetaLoraNative.Tests.Cli;

/// <summary>
/// Runs metalora's Program.Main with its stdout and stderr captured. The capture follows the calling flow (an
/// AsyncLocal, which threads and tasks started by the command inherit), not the whole process: a test in another
/// class that writes to the console at the same time (ONNX Runtime's provider line, a warning) lands on the real
/// console, not in this run's captured stderr, so "exactly one error line" assertions see only the command's lines.
/// </summary>
internal static class CliRunner
{
    public static (int Code, string Out, string Err) Run(params string[] args)
    {
        var (o, e) = (new StringWriter(), new StringWriter());
        using (ConsoleCapture.Begin(o, e))
            return (MetaLoraNative.Cli.Program.Main(args), o.ToString(), e.ToString());
    }
}

/// <summary>Console.Out and Console.Error replaced, once, by writers that route to the current flow's capture, if any.</summary>
internal static class ConsoleCapture
{
    static readonly AsyncLocal<(TextWriter Out, TextWriter Err)?> current = new();
    static readonly object gate = new();
    static bool installed;

    public static IDisposable Begin(TextWriter stdout, TextWriter stderr)
    {
        lock (gate)
        {
            if (!installed)
            {
                Console.SetOut(new RoutingWriter(Console.Out, c => c.Out));
                Console.SetError(new RoutingWriter(Console.Error, c => c.Err));
                installed = true;
            }
        }
        var previous = current.Value;
        current.Value = (TextWriter.Synchronized(stdout), TextWriter.Synchronized(stderr));
        return new Restore(previous);
    }

    sealed class Restore((TextWriter Out, TextWriter Err)? previous) : IDisposable
    {
        public void Dispose() => current.Value = previous;
    }

    /// <summary>Writes to the flow's capture when one is set, else to the process's original writer.</summary>
    sealed class RoutingWriter(TextWriter original, Func<(TextWriter Out, TextWriter Err), TextWriter> pick) : TextWriter
    {
        TextWriter Target => current.Value is { } c ? pick(c) : original;
        public override Encoding Encoding => original.Encoding;
        public override void Write(char value) => Target.Write(value);
        public override void Write(string? value) => Target.Write(value);
        public override void Write(char[] buffer, int index, int count) => Target.Write(buffer, index, count);
        public override void WriteLine(string? value) => Target.WriteLine(value);
        public override void WriteLine() => Target.WriteLine();
        public override void Flush() => Target.Flush();
    }
}
