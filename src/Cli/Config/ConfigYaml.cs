using System.Globalization;
using System.Text.RegularExpressions;

namespace MetaLoraNative.Cli.Config;

/// <summary>Option values written as YAML (templates and resolved configs), read back by <see cref="ConfigFile"/>.</summary>
public static partial class ConfigYaml
{
    public static string Value(object value) => value switch
    {
        string s => Scalar(s),
        bool b => b ? "true" : "false",
        float f => f.ToString("R", CultureInfo.InvariantCulture),
        double d => d.ToString("R", CultureInfo.InvariantCulture),
        IFormattable n => n.ToString(null, CultureInfo.InvariantCulture),
        System.Collections.IEnumerable items => "[" + string.Join(", ", items.Cast<object>().Select(Value)) + "]",
        _ => Scalar(value.ToString() ?? ""),
    };

    /// <summary>A string as a plain scalar when YAML reads it back as the same string, else double-quoted.</summary>
    public static string Scalar(string s) =>
        Plain().IsMatch(s) && s is not ("true" or "false" or "null" or "yes" or "no" or "on" or "off" or "~")
            ? s
            : "\"" + s.Replace("\\", "\\\\").Replace("\"", "\\\"") + "\"";

    [GeneratedRegex(@"^[A-Za-z0-9_./+][A-Za-z0-9_./+:-]*$")]
    private static partial Regex Plain();
}
