// Reads a model's graph inputs and outputs straight from the .onnx protobuf, skipping weights without reading them,
// so `doctor` can check a 9 GB T5 file in milliseconds. Walks ModelProto.graph (7) -> GraphProto.input (11) /
// output (12) -> ValueInfoProto; every other field is skipped by its length.
using MetaLoraNative.Onnx.Runtime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace MetaLoraNative.Onnx.Export;

public static class OnnxHeaderReader
{
    public static (List<TensorSpec> Inputs, List<TensorSpec> Outputs) Read(string path)
    {
        using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        var inputs = new List<TensorSpec>();
        var outputs = new List<TensorSpec>();
        bool sawGraph = false;
        while (f.Position < f.Length)
        {
            var (field, wire) = Key(f, path);
            if (field == 7 && wire == 2)
            {
                long end = checked(f.Position + (long)Varint(f, path));
                if (end > f.Length) throw Bad(path, "graph runs past the end of the file");
                sawGraph = true;
                while (f.Position < end)
                {
                    var (gf, gw) = Key(f, path);
                    if ((gf == 11 || gf == 12) && gw == 2)
                    {
                        int len = checked((int)Varint(f, path));
                        var buf = new byte[len];
                        f.ReadExactly(buf);
                        (gf == 11 ? inputs : outputs).Add(ValueInfo(buf));
                    }
                    else Skip(f, gw, path);
                }
            }
            else Skip(f, wire, path);
        }
        if (!sawGraph) throw Bad(path, "no graph");
        return (inputs, outputs);
    }

    static TensorSpec ValueInfo(byte[] buf)
    {
        string name = "";
        var type = TensorElementType.DataTypeMax;
        var dims = new List<int>();
        foreach (var v in ProtoReader.Fields(buf))
        {
            if (v.Number == 1) name = System.Text.Encoding.UTF8.GetString(v.Bytes.Span);
            if (v.Number != 2) continue;
            foreach (var t in ProtoReader.Fields(v.Bytes))
            {
                if (t.Number != 1) continue;   // tensor_type
                foreach (var tt in ProtoReader.Fields(t.Bytes))
                {
                    if (tt.Number == 1) type = (TensorElementType)(int)tt.Value;
                    if (tt.Number != 2) continue;
                    foreach (var d in ProtoReader.Fields(tt.Bytes))
                    {
                        if (d.Number != 1) continue;
                        int value = -1;
                        foreach (var dv in ProtoReader.Fields(d.Bytes))
                            if (dv.Number == 1) value = (int)(long)dv.Value;
                        dims.Add(value);
                    }
                }
            }
        }
        return new TensorSpec(name, type, dims.ToArray());
    }

    static (int Field, int Wire) Key(Stream s, string path)
    {
        ulong k = Varint(s, path);
        return ((int)(k >> 3), (int)(k & 7));
    }

    static void Skip(Stream s, int wire, string path)
    {
        if (wire == 0)
        {
            Varint(s, path);
            return;
        }
        long n = wire switch
        {
            1 => 8,
            2 => (long)Varint(s, path),
            5 => 4,
            _ => throw Bad(path, $"unsupported protobuf wire type {wire}"),
        };
        if (s.Position + n > s.Length) throw Bad(path, "a field runs past the end of the file (truncated?)");
        s.Seek(n, SeekOrigin.Current);
    }

    static ulong Varint(Stream s, string path)
    {
        ulong r = 0;
        for (int shift = 0; shift < 64; shift += 7)
        {
            int b = s.ReadByte();
            if (b < 0) throw Bad(path, "truncated");
            r |= (ulong)(b & 0x7F) << shift;
            if (b < 0x80) return r;
        }
        throw Bad(path, "malformed varint");
    }

    static ModelLoadException Bad(string path, string what) => new($"{path} is not a valid ONNX model: {what}");
}
