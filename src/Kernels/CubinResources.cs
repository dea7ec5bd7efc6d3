using System.Buffers.Binary;
using System.Text;

namespace MetaLoraNative.Kernels;

/// <summary>What ptxas gave one kernel of a cubin: registers per thread, static shared memory, stack and local (spill) bytes.</summary>
public sealed record KernelResources(string Kernel, int Registers, long SharedBytes, int StackBytes, long LocalBytes)
{
    public override string ToString() =>
        $"{Kernel}: {Registers} registers, {SharedBytes:N0} B shared, {StackBytes} B stack{(LocalBytes > 0 ? $", {LocalBytes:N0} B local (spills)" : "")}";
}

/// <summary>
/// Reads a kernel's resources out of a cubin (an ELF64 file) without any CUDA tool: the register count and stack size
/// are attributes of the global <c>.nv.info</c> section (EIATTR_REGCOUNT 0x2f and EIATTR_MAX_STACK_SIZE 0x23, each a
/// (symbol index, value) pair), static shared memory is the size of <c>.nv.shared.&lt;kernel&gt;</c>, and thread-local
/// memory, where spills go, the size of <c>.nv.local.&lt;kernel&gt;</c>. This is what <c>ptxas -v</c> prints, read back
/// from the image the backend loads, so `metalora kernels build --resources` reports it on any machine.
/// </summary>
public static class CubinResources
{
    const byte FormatSizedValue = 0x04;   // EIFMT_SVAL: u16 size, then the value
    const byte AttributeRegisterCount = 0x2f;
    const byte AttributeMaxStackSize = 0x23;

    /// <summary>The resources of every kernel (entry point) in <paramref name="image"/>; <paramref name="label"/> names the file in errors.</summary>
    public static IReadOnlyList<KernelResources> Read(byte[] image, string label)
    {
        ReadOnlySpan<byte> cubin = image;
        if (cubin.Length < 64 || cubin[0] != 0x7f || !cubin[1..4].SequenceEqual("ELF"u8) || cubin[4] != 2 /* 64-bit */ || cubin[5] != 1 /* little-endian */)
            throw new FormatException($"{label}: not a little-endian ELF64 cubin");
        long shoff = (long)BinaryPrimitives.ReadUInt64LittleEndian(cubin[0x28..]);
        int shentsize = BinaryPrimitives.ReadUInt16LittleEndian(cubin[0x3A..]);
        int shnum = BinaryPrimitives.ReadUInt16LittleEndian(cubin[0x3C..]);
        int shstrndx = BinaryPrimitives.ReadUInt16LittleEndian(cubin[0x3E..]);
        if (shentsize < 64 || shoff <= 0 || shoff + (long)shnum * shentsize > cubin.Length || shstrndx >= shnum)
            throw new FormatException($"{label}: section table outside the file");

        var sections = new (uint Name, uint Type, long Offset, long Size, uint Link)[shnum];
        for (int i = 0; i < shnum; i++)
        {
            var h = cubin[(int)(shoff + (long)i * shentsize)..];
            sections[i] = (BinaryPrimitives.ReadUInt32LittleEndian(h), BinaryPrimitives.ReadUInt32LittleEndian(h[4..]),
                           (long)BinaryPrimitives.ReadUInt64LittleEndian(h[24..]), (long)BinaryPrimitives.ReadUInt64LittleEndian(h[32..]),
                           BinaryPrimitives.ReadUInt32LittleEndian(h[40..]));
            if (sections[i].Type != 8 /* SHT_NOBITS */ && sections[i].Offset + sections[i].Size > cubin.Length)
                throw new FormatException($"{label}: section {i} runs past the end of the file");
        }

        string NameAt(int table, uint offset)
        {
            var s = image.AsSpan()[(int)(sections[table].Offset + offset)..(int)(sections[table].Offset + sections[table].Size)];
            int end = s.IndexOf((byte)0);
            return Encoding.ASCII.GetString(end < 0 ? s : s[..end]);
        }
        var names = sections.Select(s => NameAt(shstrndx, s.Name)).ToArray();

        int symtab = Array.IndexOf(names, ".symtab");
        var symbols = new List<string>();
        if (symtab >= 0)
            for (long at = sections[symtab].Offset; at + 24 <= sections[symtab].Offset + sections[symtab].Size; at += 24)
                symbols.Add(NameAt((int)sections[symtab].Link, BinaryPrimitives.ReadUInt32LittleEndian(cubin[(int)at..])));

        var kernels = new SortedDictionary<string, (int Regs, long Shared, int Stack, long Local)>(StringComparer.Ordinal);
        void Update(string kernel, Func<(int, long, int, long), (int, long, int, long)> f) =>
            kernels[kernel] = f(kernels.TryGetValue(kernel, out var v) ? v : default);

        for (int i = 0; i < shnum; i++)
        {
            string name = names[i];
            if (name.StartsWith(".text.", StringComparison.Ordinal)) Update(name[6..], v => v);
            else if (name.StartsWith(".nv.shared.", StringComparison.Ordinal)) Update(name[11..], v => v with { Item2 = sections[i].Size });
            else if (name.StartsWith(".nv.local.", StringComparison.Ordinal)) Update(name[10..], v => v with { Item4 = sections[i].Size });
            else if (name == ".nv.info")
            {
                var info = cubin[(int)sections[i].Offset..(int)(sections[i].Offset + sections[i].Size)];
                for (int p = 0; p + 4 <= info.Length;)
                {
                    byte format = info[p], attribute = info[p + 1];
                    if (format != FormatSizedValue) { p += 4; continue; }
                    int size = BinaryPrimitives.ReadUInt16LittleEndian(info[(p + 2)..]);
                    if (p + 4 + size > info.Length) throw new FormatException($"{label}: .nv.info attribute at {p} runs past its section");
                    if (size == 8 && attribute is AttributeRegisterCount or AttributeMaxStackSize)
                    {
                        int symbol = (int)BinaryPrimitives.ReadUInt32LittleEndian(info[(p + 4)..]);
                        int value = (int)BinaryPrimitives.ReadUInt32LittleEndian(info[(p + 8)..]);
                        if (symbol < symbols.Count)
                            Update(symbols[symbol], v => attribute == AttributeRegisterCount ? v with { Item1 = value } : v with { Item3 = value });
                    }
                    p += 4 + size;
                }
            }
        }
        // Entry points are the functions with their own .nv.info.<name> section; the rest are non-inlined device functions.
        var entries = names.Where(n => n.StartsWith(".nv.info.", StringComparison.Ordinal)).Select(n => n[9..]).ToHashSet(StringComparer.Ordinal);
        return [.. kernels.Where(k => entries.Contains(k.Key))
                          .Select(k => new KernelResources(k.Key, k.Value.Regs, k.Value.Shared, k.Value.Stack, k.Value.Local))];
    }
}
