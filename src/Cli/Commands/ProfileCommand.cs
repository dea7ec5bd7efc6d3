using System.CommandLine;
using MetaLoraNative.Engine.Benchmarks;
using MetaLoraNative.Kernels;

namespace MetaLoraNative.Cli.Commands;

/// <summary>
/// `metalora profile`: a warm-up step, then the profiled steps inside one NVTX range "profile" and one
/// cuProfilerStart/cuProfilerStop capture range, so either way of selecting them works in Nsight.
/// </summary>
internal static class ProfileCommand
{
    const string Guide = """
        A short training run for Nsight: one warm-up step, then the profiled steps inside both an NVTX range named
        "profile" and a cuProfilerStart/cuProfilerStop capture range. Blocks and ops carry NVTX ranges
        (double_blocks.N, single_blocks.N, their .backward, and one range per op), so timelines and kernel reports
        read against the model.

          Nsight Systems (timeline), capture by the profiler API (works with or without NVTX):
            nsys profile --trace=cuda,nvtx,cublas --capture-range=cudaProfilerApi --capture-range-end=stop \
                -o metalora-step ./metalora profile --resolution 1024
          the same, capture by the NVTX range:
            nsys profile --trace=cuda,nvtx,cublas --capture-range=nvtx --nvtx-capture=profile \
                -o metalora-step ./metalora profile --resolution 1024
          Nsight Compute (every kernel of one step, with the NVTX ranges as context):
            ncu --profile-from-start off --nvtx --set full -o metalora-kernels \
                ./metalora profile --resolution 512 --steps 1
          or filter by the range:  ncu --nvtx --nvtx-include "profile/" --set full ...

        NVTX: the profiler sets NVTX_INJECTION64_PATH and the ranges reach it through libnvToolsExt.so.1 where
        one is found (CUDA 11/12 toolkits, the nvidia-nvtx-cu12 wheel), else through NVTX3's injection handshake done
        by the engine itself (CUDA 13 ships no libnvToolsExt). `metalora doctor` says which; without a profiler the
        ranges are no-ops.
        """;

    public static Command Create()
    {
        var shared = new BenchCommand.Shared();
        var steps = new Option<int>("--steps") { Description = "Profiled steps after the warm-up.", DefaultValueFactory = _ => 2 }.AtLeast(1);
        var cmd = new Command("profile", Guide) { steps };
        foreach (var o in shared.All) cmd.Options.Add(o);
        cmd.SetAction(r =>
        {
            using var be = Common.CreateBackend(r.GetValue(shared.Device)!);
            var gpu = be as CudaBackend;
            var options = shared.Options(r, 0, 1);
            // warm-up outside the capture range, then the profiled steps inside one "profile" range
            StepBenchmark.Run(be, options with { Steps = 0, Warmup = 1 }, Common.Log);
            gpu?.ProfilerStart();
            try
            {
                using (be.Range("profile"))
                {
                    var res = StepBenchmark.Run(be, options with { Steps = r.GetValue(steps), Warmup = 0 }, Common.Log);
                    Console.WriteLine($"profiled {r.GetValue(steps)} steps: {res.TrainMs:F1} ms median; peak {res.PeakBytes / (double)(1L << 30):F1} GiB");
                }
            }
            finally { gpu?.ProfilerStop(); }
            if (gpu != null) Console.WriteLine($"NVTX: {Kernels.Native.Nvtx.Status}");
            return 0;
        });
        return cmd;
    }
}
