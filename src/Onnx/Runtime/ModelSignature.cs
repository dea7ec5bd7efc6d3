// The inputs and outputs a wrapper relies on: names, element types, ranks and the dimensions that must be fixed.
// A dimension of -1 means "any" (symbolic or fixed); a fixed value must match exactly when the model fixes it too,
// and a model that leaves it symbolic is accepted (the wrapper always feeds the fixed value).
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace MetaLoraNative.Onnx.Runtime;

public sealed record TensorSpec(string Name, TensorElementType ElementType, int[] Dims)
{
    public override string ToString() =>
        $"{Name}: {ElementType} [{string.Join(", ", Dims.Select(d => d < 0 ? "?" : d.ToString()))}]";
}

public sealed record ModelSignature(string ModelKind, IReadOnlyList<TensorSpec> Inputs, IReadOnlyList<TensorSpec> Outputs)
{
    public void Validate(InferenceSession session, string modelPath)
    {
        static TensorSpec Spec(KeyValuePair<string, NodeMetadata> kv) =>
            new(kv.Key, kv.Value.IsTensor ? kv.Value.ElementDataType : TensorElementType.DataTypeMax, kv.Value.Dimensions);
        Validate(session.InputMetadata.Select(Spec).ToList(), session.OutputMetadata.Select(Spec).ToList(), modelPath);
    }

    /// <summary>Checks inputs/outputs read from the file itself (see OnnxHeaderReader); symbolic dims are -1.</summary>
    public void Validate(IReadOnlyList<TensorSpec> inputs, IReadOnlyList<TensorSpec> outputs, string modelPath)
    {
        Check("input", Inputs, inputs.ToDictionary(s => s.Name), modelPath);
        Check("output", Outputs, outputs.ToDictionary(s => s.Name), modelPath);
    }

    void Check(string role, IReadOnlyList<TensorSpec> expected, IReadOnlyDictionary<string, TensorSpec> actual, string path)
    {
        foreach (var spec in expected)
        {
            if (!actual.TryGetValue(spec.Name, out var meta))
                throw Fail(path, $"has no {role} named '{spec.Name}' (its {role}s: {Describe(actual)}); expected {spec}");
            if (meta.ElementType != spec.ElementType)
                throw Fail(path, $"{role} '{spec.Name}' has element type {meta.ElementType}, expected {spec.ElementType}");
            var dims = meta.Dims;
            if (dims.Length != spec.Dims.Length)
                throw Fail(path, $"{role} '{spec.Name}' has rank {dims.Length} [{Dims(dims)}], expected rank {spec.Dims.Length} {spec}");
            for (int i = 0; i < dims.Length; i++)
            {
                // ORT reports symbolic dimensions as -1; those are accepted.
                if (spec.Dims[i] >= 0 && dims[i] >= 0 && dims[i] != spec.Dims[i])
                    throw Fail(path, $"{role} '{spec.Name}' has dimension {i} = {dims[i]} [{Dims(dims)}], expected {spec}");
            }
        }
    }

    ModelLoadException Fail(string path, string what) =>
        new($"{ModelKind} model {path}: {what}");

    static string Dims(int[] d) => string.Join(", ", d.Select(x => x < 0 ? "?" : x.ToString()));

    static string Describe(IReadOnlyDictionary<string, TensorSpec> m) =>
        string.Join(", ", m.Values.Select(s => $"{s.Name} [{Dims(s.Dims)}]"));
}
