// The protobuf wire format, just enough of it: a writer for ONNX ModelProto (OnnxWriter) and a field walker used to
// patch a SentencePiece ModelProto. Wire types: 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32.
using System.Text;

namespace MetaLoraNative.Onnx.Export;

public sealed class ProtoWriter
{
    readonly MemoryStream _buffer = new();

    public byte[] ToArray() => _buffer.ToArray();

    public ProtoWriter Varint(int field, long value)
    {
        Tag(field, 0);
        RawVarint((ulong)value);
        return this;
    }

    public ProtoWriter Float(int field, float value)
    {
        Tag(field, 5);
        Span<byte> b = stackalloc byte[4];
        BitConverter.TryWriteBytes(b, value);
        _buffer.Write(b);
        return this;
    }

    public ProtoWriter Bytes(int field, ReadOnlySpan<byte> value)
    {
        Tag(field, 2);
        RawVarint((ulong)value.Length);
        _buffer.Write(value);
        return this;
    }

    public ProtoWriter String(int field, string value) => Bytes(field, Encoding.UTF8.GetBytes(value));

    public ProtoWriter Message(int field, ProtoWriter message) => Bytes(field, message.ToArray());

    void Tag(int field, int wireType) => RawVarint((ulong)((field << 3) | wireType));

    void RawVarint(ulong v)
    {
        while (v >= 0x80)
        {
            _buffer.WriteByte((byte)(v | 0x80));
            v >>= 7;
        }
        _buffer.WriteByte((byte)v);
    }
}

public readonly record struct ProtoField(int Number, int WireType, ulong Value, ReadOnlyMemory<byte> Bytes);

public static class ProtoReader
{
    /// <summary>Top-level fields of one message; throws InvalidDataException on a malformed buffer.</summary>
    public static IEnumerable<ProtoField> Fields(ReadOnlyMemory<byte> message)
    {
        int i = 0;
        while (i < message.Length)
        {
            ulong key = ReadVarint(message.Span, ref i);
            int field = (int)(key >> 3), wire = (int)(key & 7);
            switch (wire)
            {
                case 0:
                    yield return new ProtoField(field, 0, ReadVarint(message.Span, ref i), default);
                    break;
                case 1:
                    Need(message.Length, i, 8);
                    yield return new ProtoField(field, 1, BitConverter.ToUInt64(message.Span.Slice(i, 8)), message.Slice(i, 8));
                    i += 8;
                    break;
                case 2:
                    ulong len = ReadVarint(message.Span, ref i);
                    if (len > (ulong)(message.Length - i)) throw new InvalidDataException("protobuf: length runs past the end");
                    yield return new ProtoField(field, 2, len, message.Slice(i, (int)len));
                    i += (int)len;
                    break;
                case 5:
                    Need(message.Length, i, 4);
                    yield return new ProtoField(field, 5, BitConverter.ToUInt32(message.Span.Slice(i, 4)), message.Slice(i, 4));
                    i += 4;
                    break;
                default:
                    throw new InvalidDataException($"protobuf: unsupported wire type {wire} at byte {i}");
            }
        }
    }

    static void Need(int length, int at, int n)
    {
        if (at + n > length) throw new InvalidDataException("protobuf: field runs past the end");
    }

    static ulong ReadVarint(ReadOnlySpan<byte> b, ref int i)
    {
        ulong r = 0;
        for (int shift = 0; shift < 64; shift += 7)
        {
            if (i >= b.Length) throw new InvalidDataException("protobuf: truncated varint");
            byte c = b[i++];
            r |= (ulong)(c & 0x7F) << shift;
            if (c < 0x80) return r;
        }
        throw new InvalidDataException("protobuf: varint too long");
    }
}
