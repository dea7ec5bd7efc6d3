namespace MetaLoraNative.Engine.IO;

/// <summary>
/// Element types this engine reads from safetensors files. The member names are spelled exactly as the format's
/// JSON header spells them ("F8_E4M3", "BF16", ...); <see cref="SafetensorsDTypes.Parse"/> is the only way a
/// header string becomes one of these, so numeric strings such as "3" never sneak through Enum.Parse.
/// </summary>
public enum SafetensorsDType { F64, F32, F16, BF16, F8_E4M3, I64, I32, U8, BOOL }

/// <summary>
/// One tensor's header record. <see cref="Begin"/> and <see cref="End"/> are byte offsets relative to the first byte
/// of the data section (the byte after the JSON header), End exclusive. A scalar has Shape = [] and one element.
/// </summary>
public sealed record SafetensorsEntry(string Name, SafetensorsDType DType, int[] Shape, long Begin, long End)
{
    /// <summary>End − Begin.</summary>
    public long ByteLength => End - Begin;

    /// <summary>Product of the shape (1 for a scalar). Validated not to overflow when read from a file.</summary>
    public long ElementCount
    {
        get
        {
            long n = 1;
            foreach (int d in Shape) n *= d;
            return n;
        }
    }
}

/// <summary>Sizes and names of <see cref="SafetensorsDType"/> as the file format defines them.</summary>
public static class SafetensorsDTypes
{
    public static int Size(SafetensorsDType dtype) => dtype switch
    {
        SafetensorsDType.F64 or SafetensorsDType.I64 => 8,
        SafetensorsDType.F32 or SafetensorsDType.I32 => 4,
        SafetensorsDType.F16 or SafetensorsDType.BF16 => 2,
        SafetensorsDType.F8_E4M3 or SafetensorsDType.U8 or SafetensorsDType.BOOL => 1,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "not a safetensors dtype"),
    };

    /// <summary>The header spelling; equal to the member name by construction.</summary>
    public static string Name(SafetensorsDType dtype) => dtype.ToString();

    /// <summary>Exact, case-sensitive match against the header spellings; false for anything else.</summary>
    public static bool TryParse(string? text, out SafetensorsDType dtype)
    {
        switch (text)
        {
            case "F64": dtype = SafetensorsDType.F64; return true;
            case "F32": dtype = SafetensorsDType.F32; return true;
            case "F16": dtype = SafetensorsDType.F16; return true;
            case "BF16": dtype = SafetensorsDType.BF16; return true;
            case "F8_E4M3": dtype = SafetensorsDType.F8_E4M3; return true;
            case "I64": dtype = SafetensorsDType.I64; return true;
            case "I32": dtype = SafetensorsDType.I32; return true;
            case "U8": dtype = SafetensorsDType.U8; return true;
            case "BOOL": dtype = SafetensorsDType.BOOL; return true;
            default: dtype = default; return false;
        }
    }

    public static SafetensorsDType Parse(string text) =>
        TryParse(text, out var d) ? d : throw new FormatException($"'{text}' is not a supported safetensors dtype");
}
