using System.Globalization;

namespace MetaLoraNative.Engine.Distributed;

/// <summary>
/// Where this process sits in a multi-rank run, read from the environment as torchrun and Slurm set it:
/// RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (Slurm's SLURM_PROCID, SLURM_NTASKS and SLURM_LOCALID stand
/// in for the first three when those are absent). <see cref="WorkerLauncher"/> sets the same variables.
/// </summary>
/// <param name="Rank">Global rank, 0 ≤ Rank &lt; WorldSize; rank 0 hosts the rendezvous.</param>
/// <param name="LocalRank">Rank among the processes of this machine (the default GPU index).</param>
/// <param name="MasterAddr">Host of rank 0's rendezvous socket.</param>
/// <param name="MasterPort">TCP port of rank 0's rendezvous socket.</param>
/// <param name="Device">The GPU to open, from METALORA_DEVICE; null means <see cref="DeviceOrdinal"/>'s default rule.</param>
/// <param name="VisibleDevices">CUDA_VISIBLE_DEVICES as given, or null.</param>
public sealed record DistributedConfig(int Rank, int WorldSize, int LocalRank, string MasterAddr, int MasterPort,
    int? Device = null, string? VisibleDevices = null)
{
    public const string RankVar = "RANK", WorldSizeVar = "WORLD_SIZE", LocalRankVar = "LOCAL_RANK";
    public const string MasterAddrVar = "MASTER_ADDR", MasterPortVar = "MASTER_PORT";
    public const string DeviceVar = "METALORA_DEVICE", VisibleDevicesVar = "CUDA_VISIBLE_DEVICES";
    const string SlurmRank = "SLURM_PROCID", SlurmWorldSize = "SLURM_NTASKS", SlurmLocalRank = "SLURM_LOCALID";

    /// <summary>A single process: no peers, no rendezvous.</summary>
    public static DistributedConfig Single { get; } = new(0, 1, 0, "127.0.0.1", 0);

    /// <summary>
    /// The GPU this rank opens: METALORA_DEVICE when set; else 0 when CUDA_VISIBLE_DEVICES names exactly one GPU
    /// (the launcher's default, each worker sees only its own); else LOCAL_RANK, as torchrun's convention is.
    /// </summary>
    public int DeviceOrdinal =>
        Device ?? (VisibleDevices != null && VisibleDevices.Split(',', StringSplitOptions.RemoveEmptyEntries).Length == 1 ? 0 : LocalRank);

    /// <summary>The process's environment, or null when it is not part of a multi-rank launch.</summary>
    public static DistributedConfig? FromEnvironment() => Parse(Environment.GetEnvironmentVariable);

    /// <summary>
    /// Reads the variables through <paramref name="lookup"/>. Null when neither RANK/WORLD_SIZE nor their Slurm
    /// equivalents are set (a plain single-process run); an ArgumentException naming the variable when a value is
    /// missing, not a number or out of range.
    /// </summary>
    public static DistributedConfig? Parse(Func<string, string?> lookup)
    {
        string? Get(string name) => lookup(name) is { } v && v.Trim().Length > 0 ? v.Trim() : null;

        var (rankVar, worldVar, localVar) = Get(RankVar) != null || Get(WorldSizeVar) != null
            ? (RankVar, WorldSizeVar, LocalRankVar)
            : (SlurmRank, SlurmWorldSize, SlurmLocalRank);
        string? rankText = Get(rankVar), worldText = Get(worldVar);
        if (rankText == null && worldText == null) return null;
        if (rankText == null || worldText == null)
            throw new InputException(rankText == null ? rankVar : worldVar, $"{(rankText == null ? rankVar : worldVar)} is not set but {(rankText == null ? worldVar : rankVar)} is; " +
                                        "a multi-rank launch (torchrun, srun, metalora --gpus) sets both");

        int world = Integer(worldVar, worldText, 1, 65_536);
        string within = $" of {worldVar}={world}";
        int rank = Integer(rankVar, rankText, 0, world - 1, within);
        int local = Get(localVar) is { } localText ? Integer(localVar, localText, 0, world - 1, within) : rank;
        int? device = Get(DeviceVar) is { } deviceText ? Integer(DeviceVar, deviceText, 0, 1023) : null;
        string? visible = Get(VisibleDevicesVar);

        if (world == 1 && Get(MasterPortVar) == null)
            return Single with { Device = device, VisibleDevices = visible };
        string addr = Get(MasterAddrVar)
            ?? throw new InputException(MasterAddrVar, $"{MasterAddrVar} is not set; with {worldVar}={world} every rank needs rank 0's address (127.0.0.1 on one machine)");
        string portText = Get(MasterPortVar)
            ?? throw new InputException(MasterPortVar, $"{MasterPortVar} is not set; with {worldVar}={world} every rank needs rank 0's port (e.g. 29500)");
        int port = Integer(MasterPortVar, portText, 1, 65_535);
        return new DistributedConfig(rank, world, local, addr, port, device, visible);
    }

    /// <summary>The variables a worker of this config is started with (what <see cref="Parse"/> reads back).</summary>
    public IReadOnlyDictionary<string, string> ToEnvironment()
    {
        var env = new Dictionary<string, string>
        {
            [RankVar] = Rank.ToString(CultureInfo.InvariantCulture),
            [WorldSizeVar] = WorldSize.ToString(CultureInfo.InvariantCulture),
            [LocalRankVar] = LocalRank.ToString(CultureInfo.InvariantCulture),
            [MasterAddrVar] = MasterAddr,
            [MasterPortVar] = MasterPort.ToString(CultureInfo.InvariantCulture),
        };
        if (Device is int d) env[DeviceVar] = d.ToString(CultureInfo.InvariantCulture);
        if (VisibleDevices != null) env[VisibleDevicesVar] = VisibleDevices;
        return env;
    }

    static int Integer(string name, string text, int min, int max, string context = "")
    {
        if (!int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v))
            throw new InputException(name, $"{name}='{text}' is not an integer");
        if (v < min || v > max)
            throw new InputException(name, $"{name}={v} is out of range; it must lie in [{min}, {max}]{context}");
        return v;
    }
}
