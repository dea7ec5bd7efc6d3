// One place that opens ONNX Runtime sessions. Contract:
// - CUDA execution provider when the native provider loads and a device answers, CPU otherwise; the choice is logged once.
// - Graph optimisation level and thread counts are set here, nowhere else.
// - Every session is validated against the ModelSignature the wrapper expects, so a wrong file fails at load with a
//   message naming the file and the first mismatch instead of failing later inside Run().
using Microsoft.ML.OnnxRuntime;

namespace MetaLoraNative.Onnx.Runtime;

public enum ExecutionDevice { Auto, Cpu, Cuda }

public sealed record OnnxSessionOptions
{
    public ExecutionDevice Device { get; init; } = ExecutionDevice.Auto;
    public int CudaDeviceId { get; init; }
    /// <summary>Threads inside one op; 0 lets ONNX Runtime pick (all physical cores).</summary>
    public int IntraOpThreads { get; init; }
    public GraphOptimizationLevel Optimization { get; init; } = GraphOptimizationLevel.ORT_ENABLE_ALL;
    /// <summary>Where the provider choice is reported; null means standard error.</summary>
    public Action<string>? Log { get; init; }
}

public sealed class OnnxSessionFactory
{
    public static OnnxSessionFactory Default { get; } = new(new OnnxSessionOptions());

    readonly OnnxSessionOptions _options;
    readonly object _gate = new();
    bool? _cudaWorks;   // probed once: the CUDA provider either loads on this machine or it does not
    bool _reported;

    public OnnxSessionFactory(OnnxSessionOptions options) => _options = options;

    /// <summary>The provider the last session got ("CUDA" or "CPU"); null before the first session.</summary>
    public string? ChosenProvider { get; private set; }

    /// <summary>Opens <paramref name="modelPath"/> and checks it against <paramref name="signature"/>.</summary>
    public InferenceSession Create(string modelPath, ModelSignature signature)
    {
        if (!File.Exists(modelPath))
            throw new ModelLoadException($"{signature.ModelKind} model not found: {modelPath}");
        InferenceSession session;
        try
        {
            session = Open(modelPath);
        }
        catch (OnnxRuntimeException e)
        {
            throw new ModelLoadException($"{signature.ModelKind} model {modelPath} is not a loadable ONNX file: {e.Message}", e);
        }
        try
        {
            signature.Validate(session, modelPath);
        }
        catch
        {
            session.Dispose();
            throw;
        }
        return session;
    }

    InferenceSession Open(string modelPath)
    {
        lock (_gate)
        {
            bool wantCuda = _options.Device != ExecutionDevice.Cpu && _cudaWorks != false;
            if (wantCuda && _cudaWorks is null && CudaLibrariesMissing() is { } missing)
            {
                // Probe the CUDA runtime ourselves first: ORT would otherwise print a native error for every session.
                if (_options.Device == ExecutionDevice.Cuda)
                    throw new ModelLoadException($"CUDA execution provider requested but {missing} cannot be loaded");
                _cudaWorks = false;
                wantCuda = false;
                Report("CPU", $"{missing} not found");
            }
            if (wantCuda)
            {
                var cudaOptions = BaseOptions();
                try
                {
                    cudaOptions.AppendExecutionProvider_CUDA(_options.CudaDeviceId);
                    var s = new InferenceSession(modelPath, cudaOptions);
                    _cudaWorks = true;
                    Report("CUDA", null);
                    return s;
                }
                catch (Exception e) when (e is OnnxRuntimeException or DllNotFoundException or EntryPointNotFoundException)
                {
                    if (_options.Device == ExecutionDevice.Cuda)
                        throw new ModelLoadException($"CUDA execution provider requested but unavailable: {e.Message}", e);
                    _cudaWorks = false;
                    Report("CPU", FirstLine(e.Message));
                }
                finally
                {
                    cudaOptions.Dispose();
                }
            }
            else
            {
                Report("CPU", _options.Device == ExecutionDevice.Cpu ? "CPU requested" : null);
            }
            using var cpu = BaseOptions();
            return new InferenceSession(modelPath, cpu);
        }
    }

    // ORT 1.31's CUDA provider links against CUDA 13 (cuBLASLt) and cuDNN 9.
    static string? CudaLibrariesMissing()
    {
        string[] needed = OperatingSystem.IsWindows()
            ? ["cublasLt64_13.dll"]
            : ["libcublasLt.so.13", "libcudart.so.13"];
        foreach (var lib in needed)
        {
            if (!System.Runtime.InteropServices.NativeLibrary.TryLoad(lib, out var handle)) return lib;
            System.Runtime.InteropServices.NativeLibrary.Free(handle);
        }
        return null;
    }

    SessionOptions BaseOptions()
    {
        var o = new SessionOptions
        {
            GraphOptimizationLevel = _options.Optimization,
            ExecutionMode = ExecutionMode.ORT_SEQUENTIAL,
            // Warnings only: ORT's info level prints every node placement.
            LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR,
        };
        if (_options.IntraOpThreads > 0) o.IntraOpNumThreads = _options.IntraOpThreads;
        o.InterOpNumThreads = 1;   // sequential graphs: inter-op threads would only idle
        return o;
    }

    void Report(string provider, string? why)
    {
        ChosenProvider = provider;
        if (_reported) return;
        _reported = true;
        string line = why is null ? $"onnx: execution provider {provider}" : $"onnx: execution provider {provider} ({why})";
        (_options.Log ?? (m => Console.Error.WriteLine(m)))(line);
    }

    static string FirstLine(string s)
    {
        int i = s.IndexOf('\n');
        return i < 0 ? s : s[..i];
    }
}

/// <summary>A model file that cannot be used: missing, unreadable, or with the wrong inputs/outputs.</summary>
public sealed class ModelLoadException : Exception
{
    public ModelLoadException(string message) : base(message) { }
    public ModelLoadException(string message, Exception inner) : base(message, inner) { }
}
