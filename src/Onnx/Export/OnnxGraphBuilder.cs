// A minimal ONNX model writer (ModelProto / GraphProto / NodeProto / TensorProto / ValueInfoProto), enough to build
// the tiny random-weight stand-ins the tests and the demo use. Field numbers follow onnx/onnx.proto (proto2):
//   ModelProto: ir_version 1, producer_name 2, graph 7, opset_import 8 (OperatorSetIdProto: domain 1, version 2)
//   GraphProto: node 1, name 2, initializer 5, input 11, output 12
//   NodeProto: input 1, output 2, name 3, op_type 4, attribute 5
//   AttributeProto: name 1, f 2, i 3, ints 8, type 20 (FLOAT 1, INT 2, INTS 7)
//   TensorProto: dims 1, data_type 2, name 8, raw_data 9 (little-endian)
//   ValueInfoProto: name 1, type 2 -> TypeProto.tensor_type 1 -> elem_type 1, shape 2 -> dim 1 -> dim_value 1 | dim_param 2
// Repeated scalars are written unpacked (proto2's default); every parser also accepts that form.
using System.Runtime.InteropServices;

namespace MetaLoraNative.Onnx.Export;

public enum OnnxDataType { Float = 1, Int64 = 7, Float16 = 10 }

public sealed class OnnxGraphBuilder
{
    public const int Opset = 17;       // ReduceMean still takes "axes" as an attribute at 17
    public const int IrVersion = 8;    // the IR version that goes with opset 17

    readonly List<ProtoWriter> _nodes = [], _initializers = [], _inputs = [], _outputs = [];
    readonly string _name;
    int _counter;

    public OnnxGraphBuilder(string name) => _name = name;

    /// <summary>A graph input; a dimension given as a string is symbolic (dim_param), a number is fixed.</summary>
    public string Input(string name, OnnxDataType type, params object[] dims)
    {
        _inputs.Add(ValueInfo(name, type, dims));
        return name;
    }

    public void Output(string name, OnnxDataType type, params object[] dims) => _outputs.Add(ValueInfo(name, type, dims));

    public string Initializer(string name, float[] data, params long[] dims)
    {
        _initializers.Add(Tensor(name, OnnxDataType.Float, dims, MemoryMarshal.AsBytes(data.AsSpan()).ToArray()));
        return name;
    }

    public string Initializer(string name, long[] data, params long[] dims)
    {
        _initializers.Add(Tensor(name, OnnxDataType.Int64, dims, MemoryMarshal.AsBytes(data.AsSpan()).ToArray()));
        return name;
    }

    /// <summary>Random-normal float initializer with the given standard deviation (deterministic per seed).</summary>
    public string RandomInitializer(string name, Random rng, float std, params long[] dims)
    {
        long n = dims.Aggregate(1L, (a, b) => a * b);
        var data = new float[n];
        for (long i = 0; i < n; i++)
        {
            // Box-Muller
            double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
            data[i] = (float)(std * Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
        }
        return Initializer(name, data, dims);
    }

    /// <summary>Adds a node; returns its (first) output name. Attribute values: int, long, float, long[] or int[].</summary>
    public string Node(string opType, string[] inputs, string? output = null, params (string Name, object Value)[] attributes)
    {
        output ??= $"{opType.ToLowerInvariant()}_{_counter++}";
        var node = new ProtoWriter();
        foreach (var i in inputs) node.String(1, i);
        node.String(2, output);
        node.String(3, $"{opType}_{_counter++}");
        node.String(4, opType);
        foreach (var (name, value) in attributes)
        {
            var a = new ProtoWriter().String(1, name);
            switch (value)
            {
                case int i: a.Varint(3, i).Varint(20, 2); break;
                case long l: a.Varint(3, l).Varint(20, 2); break;
                case float f: a.Float(2, f).Varint(20, 1); break;
                case int[] ints: foreach (var v in ints) a.Varint(8, v); a.Varint(20, 7); break;
                case long[] longs: foreach (var v in longs) a.Varint(8, v); a.Varint(20, 7); break;
                default: throw new ArgumentException($"unsupported attribute type {value.GetType()}");
            }
            node.Message(5, a);
        }
        _nodes.Add(node);
        return output;
    }

    public byte[] ToBytes()
    {
        var graph = new ProtoWriter();
        foreach (var n in _nodes) graph.Message(1, n);
        graph.String(2, _name);
        foreach (var t in _initializers) graph.Message(5, t);
        foreach (var i in _inputs) graph.Message(11, i);
        foreach (var o in _outputs) graph.Message(12, o);
        var model = new ProtoWriter()
            .Varint(1, IrVersion)
            .String(2, "metalora-tiny")
            .Message(7, graph)
            .Message(8, new ProtoWriter().String(1, "").Varint(2, Opset));
        return model.ToArray();
    }

    public void Save(string path) => File.WriteAllBytes(path, ToBytes());

    static ProtoWriter Tensor(string name, OnnxDataType type, long[] dims, byte[] raw)
    {
        var t = new ProtoWriter();
        foreach (var d in dims) t.Varint(1, d);
        t.Varint(2, (int)type);
        t.String(8, name);
        t.Bytes(9, raw);
        return t;
    }

    static ProtoWriter ValueInfo(string name, OnnxDataType type, object[] dims)
    {
        var shape = new ProtoWriter();
        foreach (var d in dims)
        {
            var dim = d switch
            {
                string s => new ProtoWriter().String(2, s),
                int i => new ProtoWriter().Varint(1, i),
                long l => new ProtoWriter().Varint(1, l),
                _ => throw new ArgumentException($"bad dimension {d}"),
            };
            shape.Message(1, dim);
        }
        var tensorType = new ProtoWriter().Varint(1, (int)type).Message(2, shape);
        return new ProtoWriter().String(1, name).Message(2, new ProtoWriter().Message(1, tensorType));
    }
}
