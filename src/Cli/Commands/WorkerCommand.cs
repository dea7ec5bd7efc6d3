using System.CommandLine;
using MetaLoraNative.Engine;
using MetaLoraNative.Engine.Distributed;

namespace MetaLoraNative.Cli.Commands;

/// <summary>
/// Multi-rank runs from the command line, by either route:
/// - launcher: `--gpus 0,1,2,3` (or `--ranks N`) with no RANK in the environment starts one worker per rank, this
///   same command line again, through <see cref="WorkerLauncher"/>; their output comes back prefixed "[rank N]".
/// - worker: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set (by the launcher above, torchrun or Slurm): this process
///   joins the run over the socket communicator (CPU) or NCCL (CUDA); --gpus and --ranks are then ignored.
/// A rank that fails makes every other rank's communicator fail within seconds; each exits 1 with the message, and
/// the launcher exits 1 naming the rank that failed first.
/// </summary>
internal static class Workers
{
    public static Option<string?> Gpus() => new("--gpus")
    {
        Description = "Data-parallel ranks, one worker process per GPU id (0,1,2,3); with --device cpu, one CPU rank per id.",
    };

    public static Option<int?> Ranks() => new("--ranks")
    {
        Description = "Data-parallel ranks without naming GPUs: N worker processes (CPU ranks over loopback with --device cpu, GPUs 0..N-1 with cuda).",
    };

    /// <summary>
    /// The GPU ids to launch workers on, or null when this process runs the work itself (no --gpus/--ranks, or it is a
    /// worker already). An ArgumentException names the flag for a bad value.
    /// </summary>
    public static IReadOnlyList<int>? LaunchIds(ParseResult r, Option<string?> gpus, Option<int?> ranks)
    {
        if (DistributedConfig.FromEnvironment() != null) return null;
        string? g = r.GetValue(gpus);
        int? n = r.GetValue(ranks);
        if (g != null && n != null) throw new InputException("--ranks", "give either --gpus or --ranks, not both");
        if (n is < 1 or > 1024) throw new InputException("--ranks", $"{n}: give 1 to 1024 ranks");
        if (g != null) return WorkerLauncher.ParseGpuIds(g);
        return n is > 1 ? Enumerable.Range(0, n.Value).ToArray() : null;
    }

    /// <summary>Starts this command line once per id as workers and waits; a failed rank becomes a RuntimeFailure.</summary>
    public static int Launch(IReadOnlyList<int> ids)
    {
        var (file, arguments) = WorkerLauncher.CurrentExecutable(Environment.GetCommandLineArgs().Skip(1));
        Console.WriteLine($"starting {ids.Count} worker(s): {string.Join(", ", ids.Select((id, rank) => $"rank {rank} on {id}"))}");
        var result = WorkerLauncher.Run(new WorkerLaunch(file, arguments, ids), Console.WriteLine);
        if (result.ExitCode != 0) throw new RuntimeFailure(result.FailedRank is int f ? $"rank {f}" : "workers", result.Message);
        Console.WriteLine(result.Message);
        return 0;
    }

    /// <summary>
    /// This process's backend and, in a multi-rank run, its communicator (null when it runs alone): the socket
    /// communicator on the CPU, NCCL on the GPU <see cref="DistributedConfig.DeviceOrdinal"/> names (also for a
    /// launched single GPU rank).
    /// </summary>
    public static (IBackend Backend, ICommunicator? Communicator) Open(string device)
    {
        // --device auto picks per worker: CUDA where a GPU is present, else CPU ranks over loopback
        if (device == Backends.Auto) device = Kernels.CudaProbe.GpuPresent() ? "cuda" : "cpu";
        var config = DistributedConfig.FromEnvironment();
        // one rank: no communicator on the CPU; on a GPU a launched rank (MASTER_PORT set) still joins NCCL, so
        // `--gpus 0` on a one-GPU machine exercises the binding and the data-parallel step
        if (config == null || (config.WorldSize == 1 && (device == "cpu" || config.MasterPort == 0)))
            return (device == "cuda" && config != null ? Cuda(config.DeviceOrdinal) : Common.CreateBackend(device), null);
        if (device == "cpu")
        {
            var cpu = Common.CreateBackend(device);
            return (cpu, Join(config, () => SocketCommunicator.Connect(config), "loopback sockets"));
        }
        var gpu = Cuda(config.DeviceOrdinal);
        try { return (gpu, Join(config, () => Kernels.Distributed.NcclCommunicator.Create(gpu, config), $"{Kernels.NcclProbe.Report()} on GPU {config.DeviceOrdinal}")); }
        catch
        {
            gpu.Dispose();
            throw;
        }
    }

    static Kernels.CudaBackend Cuda(int ordinal) =>
        Kernels.CudaBackend.TryCreate(out var backend, out var reason, ordinal)
            ? backend!
            : throw new RuntimeFailure($"GPU {ordinal}", $"the CUDA engine is unavailable: {reason} (run 'metalora doctor')");

    /// <summary>Joins the run; one line says over what ("NCCL: 2.21.5 (/usr/lib/…/libnccl.so.2) on GPU 0"), the proof a first GPU check reads.</summary>
    static ICommunicator Join(DistributedConfig config, Func<ICommunicator> connect, string over)
    {
        ICommunicator c;
        try { c = connect(); }
        catch (DistributedException e) { throw Failure(config.Rank, e); }
        Console.WriteLine($"rank {c.Rank} of {c.WorldSize} joined over {over}, rendezvous {config.MasterAddr}:{config.MasterPort}");
        return c;
    }

    /// <summary>What a data-parallel Stage 1 moved on this rank: steps, each step's all-reduce payload and buckets, bytes sent in all.</summary>
    public static void Report(Engine.Training.Stage1Parallel parallel)
    {
        var last = parallel.LastReduce;
        Console.WriteLine($"rank {parallel.Rank}: {parallel.Totals.Steps} gradient all-reduce(s), the last {last.PayloadBytes:N0} B in {last.Buckets} bucket(s); " +
                          $"{parallel.Communicator.TotalBytesSent:N0} B sent by this rank in all ({parallel.Totals.ReduceMilliseconds:F1} ms of {parallel.Totals.Milliseconds:F1} ms in all-reduces)");
    }

    /// <summary>A communicator's failure as the CLI reports it: the subject is this rank, the message names the rank at fault.</summary>
    public static RuntimeFailure Failure(int rank, DistributedException e) => new($"rank {rank}", e.Message, e);
}
