using System.CommandLine;
using MetaLoraNative.Engine.Benchmarks;

namespace MetaLoraNative.Cli.Commands;

internal static class ProfileCommand
{
    const string Guide = """
        A short training run for Nsight. Blocks and ops carry NVTX ranges (double_blocks.N, single_blocks.N, their
        .backward, and one range per op), so timelines and kernel reports read against the model.

          Nsight Systems (timeline):
            nsys profile --trace=cuda,nvtx,cublas --capture-range=nvtx --nvtx-capture=profile \
                -o metalora-step ./metalora profile --resolution 1024
          Nsight Compute (kernels of one step):
            ncu --nvtx --nvtx-include "profile/" --set full -o metalora-kernels \
                ./metalora profile --resolution 512 --steps 1
        NVTX needs libnvToolsExt.so.1 on the loader path (shipped with the CUDA toolkit and Nsight); without it the
        ranges are no-ops and the run still works.
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
            var options = shared.Options(r, 0, 1);
            // warm-up outside the capture range, then the profiled steps inside one "profile" range
            StepBenchmark.Run(be, options with { Steps = 0, Warmup = 1 }, Common.Log);
            using (be.Range("profile"))
            {
                var res = StepBenchmark.Run(be, options with { Steps = r.GetValue(steps), Warmup = 0 }, Common.Log);
                Console.WriteLine($"profiled {r.GetValue(steps)} steps: {res.TrainMs:F1} ms median; peak {res.PeakBytes / (double)(1L << 30):F1} GiB");
            }
            return 0;
        });
        return cmd;
    }
}
