using MetaLoraNative.Engine.Flux;
using MetaLoraNative.Engine.Lora;

namespace MetaLoraNative.Engine.Training;

/// <summary>
/// The paper's baseline: a standard rank-r LoRA (h = W0·x + B·A·x, A kaiming, B zero) on the same targets as
/// Meta-LoRA, trained on one person's cached (augmented or not) images. The paper compares "rank-1 LoRA + aug"
/// at 625 iterations; lr 1e-4 is ai-toolkit's FLUX LoRA default (its train_lora_flux_24gb example).
/// </summary>
public sealed record StandardLoraOptions
{
    public TrainOptions Train { get; init; } = new() { BatchSize = 1, LearningRate = 1e-4f };
    public int Iterations { get; init; } = 625;
    public int Rank { get; init; } = 1;
    /// <summary>The resumable training state is written here every <see cref="StateEvery"/> iterations (and at the end).</summary>
    public string? StatePath { get; init; }
    public int StateEvery { get; init; } = 125;
    public IReadOnlyCollection<string>? Include { get; init; }
    public IReadOnlyCollection<string>? Exclude { get; init; }
    public TrainingMonitor? Monitor { get; init; }
}

public static partial class Stages
{
    /// <summary>
    /// Trains a fresh standard LoRA (A and B both trained) for one person; resumes from
    /// <see cref="StandardLoraOptions.StatePath"/>. Returns the adapter with that person at identity 0.
    /// </summary>
    public static LoraAdapter StandardLora(FluxModel model, Identity person, StandardLoraOptions o, Action<string> log)
    {
        person.CheckFits(model.Config);
        var targets = FluxNames.LoraTargets(model.Config, o.Include, o.Exclude);
        var adapter = LoraAdapter.Create(model.Backend, model.Config, targets, LoraMode.Standard, o.Rank, o.Rank, o.Train.Seed);
        adapter.AddIdentity(person.Name, o.Train.Seed);
        log($"standard LoRA: '{person.Name}', {person.Examples.Count} images, {targets.Count} targets, rank {o.Rank}, {o.Iterations} iterations");

        Run(model, adapter, [person], "standard LoRA", "lora", o.Iterations, o.Train, RunIdentity.StandardLora(model, person, targets, o), o.StatePath, o.StateEvery, o.Monitor, log, null, AllFactors(adapter), i =>
        {
            var (batch, ids) = Batches.Sample([person], [0], o.Train.BatchSize, o.Train.Seed, $"lora.batch.{i}");
            return (batch, ids, new LoraBinding(adapter, ids, trainDown: true, trainIdentity: true), "lora");
        });
        return adapter;
    }
}
