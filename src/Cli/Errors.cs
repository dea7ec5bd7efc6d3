using System.CommandLine;
using System.Globalization;
using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Distributed;
using MetaLoraNative.Kernels.Native;
using MetaLoraNative.Onnx.Faces;
using MetaLoraNative.Onnx.Imaging;
using MetaLoraNative.Onnx.Runtime;

namespace MetaLoraNative.Cli;

/// <summary>
/// The root's one error path. Every command's failure reaches <see cref="Invoke"/> and leaves as one stderr line:
/// - bad input (a file, flag or data value; <see cref="InputException"/> and the readers' own exceptions): exit 2,
///   `error: &lt;file or flag&gt;: &lt;what is wrong&gt;`; a flag that fails its check is the same, before any work;
/// - a runtime fault (<see cref="RuntimeFailure"/>, a device or peer failure, a full disk): exit 1, the same format;
/// - anything else is a bug: exit 70, `error: internal error: &lt;type&gt;: &lt;message&gt; — please report, log: &lt;path&gt;`
///   with the full trace written to that log.
/// `--verbose` (a root option, valid on every command) adds the stack trace to stderr.
/// </summary>
public static class Errors
{
    public const int BadInput = 2, Failure = 1, Internal = 70;

    public static readonly Option<bool> Verbose = new("--verbose")
    {
        Description = "On an error, also print the stack trace (the one-line message and exit code stay the same).",
        Recursive = true,
    };

    /// <summary>The folder internal-error logs go to: $METALORA_LOG_DIR, else ~/.cache/metalora/logs (else the temp folder).</summary>
    public static string LogFolder =>
        Environment.GetEnvironmentVariable("METALORA_LOG_DIR") is { Length: > 0 } d ? d
        : Environment.GetFolderPath(Environment.SpecialFolder.UserProfile) is { Length: > 0 } home ? Path.Combine(home, ".cache", "metalora", "logs")
        : Path.Combine(Path.GetTempPath(), "metalora-logs");

    public static int Invoke(RootCommand root, string[] args)
    {
        // the parse with the --config file's keys filled in where no flag gave them (Config/CommandConfig.cs)
        Config.ResolvedConfig resolved;
        try { resolved = Config.CommandConfig.Resolve(root, args); }
        catch (Exception e) { return Report(e, args.Contains(Verbose.Name)); }
        var parse = resolved.Parse;
        bool verbose = parse.GetValue(Verbose);
        if (parse.Errors.Count > 0)
        {
            // A flag that fails its validator, an unknown command or a value of the wrong type: bad input, no work done.
            string command = string.Join(' ', parse.CommandResult.Command is RootCommand ? [] : Ancestry(parse));
            // A given flag's own fault comes first (a missing required option is reported once the values are right).
            var first = parse.Errors.OrderBy(e => Typed(e.SymbolResult) ? 0 : 1).First();
            Console.Error.WriteLine($"error: {first.Message} (see 'metalora {command}{(command.Length > 0 ? " " : "")}--help')");
            return BadInput;
        }
        try
        {
            string? record = Config.CommandConfig.Print(resolved);
            int code = parse.Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
            if (code == 0 && record is not null) Config.CommandConfig.Save(resolved, record);
            return code;
        }
        catch (Exception e) { return Report(e, verbose); }
    }

    /// <summary>Whether a parse result is an option the user typed (or its argument), not one missing or defaulted.</summary>
    static bool Typed(System.CommandLine.Parsing.SymbolResult? r) => r switch
    {
        System.CommandLine.Parsing.OptionResult o => o.IdentifierToken != null && !o.Implicit,
        System.CommandLine.Parsing.ArgumentResult a => a.Tokens.Count > 0,
        _ => false,
    };

    static IEnumerable<string> Ancestry(ParseResult parse)
    {
        var names = new List<string>();
        for (var r = parse.CommandResult; r != null && r.Command is not RootCommand; r = r.Parent as System.CommandLine.Parsing.CommandResult)
            names.Insert(0, r.Command.Name);
        return names;
    }

    /// <summary>Prints the one line for <paramref name="e"/> and returns the exit code.</summary>
    public static int Report(Exception e, bool verbose)
    {
        if (e is AggregateException { InnerExceptions.Count: 1 } agg) e = agg.InnerExceptions[0];
        var (code, subject) = Classify(e);
        if (code == Internal)
        {
            string log = WriteLog(e);
            Console.Error.WriteLine($"error: internal error: {e.GetType().Name}: {OneLine(e.Message)} — please report, log: {log}");
        }
        else
        {
            string message = OneLine(e.Message);
            Console.Error.WriteLine(subject is null || message.StartsWith(subject, StringComparison.Ordinal)
                ? $"error: {message}" : $"error: {subject}: {message}");
        }
        if (verbose) Console.Error.WriteLine(e.ToString());
        return code;
    }

    /// <summary>Exit code and subject (file or flag, when the exception names one) of an exception.</summary>
    public static (int Code, string? Subject) Classify(Exception e) => e switch
    {
        InputException i => (BadInput, i.Subject),
        RuntimeFailure f => (Failure, f.Subject),
        // The readers' own exceptions: each message already starts with the file or folder it is about.
        FileNotFoundException or DirectoryNotFoundException or InvalidDataException or UnauthorizedAccessException
            or ModelLoadException or ImageLoadException or NoFaceException => (BadInput, null),
        DistributedException or CudaException or IOException or OutOfMemoryException => (Failure, null),
        _ => (Internal, null),
    };

    static string OneLine(string s) => s.ReplaceLineEndings(" ").Trim();

    /// <summary>Writes the full trace of an internal error to a new log file; returns its path.</summary>
    static string WriteLog(Exception e)
    {
        string text = $"metalora {typeof(Errors).Assembly.GetName().Version} internal error at {DateTime.UtcNow.ToString("u", CultureInfo.InvariantCulture)}\n" +
                      $"command line: {Environment.CommandLine}\n\n{e}\n";
        foreach (var folder in new[] { LogFolder, Path.GetTempPath() })
        {
            try
            {
                Directory.CreateDirectory(folder);
                string path = Path.Combine(folder, $"error-{DateTime.UtcNow.ToString("yyyyMMdd-HHmmss", CultureInfo.InvariantCulture)}-{Guid.NewGuid().ToString("N")[..8]}.log");
                File.WriteAllText(path, text);
                return path;
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException) { }
        }
        return "(no log: neither the log folder nor the temp folder is writable)";
    }
}
