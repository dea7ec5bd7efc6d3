using System.CommandLine;
using MetaLoraNative.Cli;
using MetaLoraNative.Cli.Config;
using MetaLoraNative.Engine;
using MetaLoraNative.Tests.Testing;
using static MetaLoraNative.Tests.Cli.CliRunner;

namespace MetaLoraNative.Tests.Config;

/// <summary>YAML config files: templates, precedence, errors naming key/line/file, lists, and --config on every command.</summary>
[Collection("console")]
public sealed class ConfigFileTests() : TempFolderTest("config")
{
    string Write(string name, string text)
    {
        string path = Path.Combine(dir, name);
        File.WriteAllText(path, text);
        return path;
    }

    static ResolvedOption Get(ResolvedConfig r, string key) => r.Options.Single(o => o.Key == key);

    // Placeholder values for a command's required options and positional arguments, so a parse can complete.
    static string[] Required(Command c) =>
        [.. CommandConfig.Settable(c).Where(o => o.Required).SelectMany(o => new[] { o.Name, "x" }), .. c.Arguments.Select(_ => "x")];

    [Fact]
    public void EveryTemplateLoadsBackToTheDefaults()
    {
        var root = Program.CreateRoot();
        var commands = ConfigTemplate.Configurable(root).ToList();
        Assert.Contains(commands, c => CommandConfig.PathOf(c) == "train stage2");
        Assert.Contains(commands, c => CommandConfig.PathOf(c) == "train stage1");
        foreach (var command in commands)
        {
            string path = CommandConfig.PathOf(command);
            string file = Write(path.Replace(' ', '_') + ".yaml", ConfigTemplate.Write(command));
            var r = CommandConfig.Resolve(Program.CreateRoot(), [.. path.Split(' '), "--config", file, .. Required(command)]);
            Assert.True(r.Parse.Errors.Count == 0, $"{path}: {string.Join("; ", r.Parse.Errors.Select(e => e.Message))}");
            foreach (var option in CommandConfig.Settable(command).Where(o => o.HasDefaultValue))
            {
                var resolved = Get(r, CommandConfig.Key(option));
                Assert.True(resolved.Source == ValueSource.File, $"{path} {option.Name}: source {resolved.Source}");
                Assert.Equal(ConfigYaml.Value(option.GetDefaultValue()!), ConfigYaml.Value(resolved.Value!));
            }
        }
    }

    [Fact]
    public void TemplateCommentsEveryOptionWithItsDescription()
    {
        var root = Program.CreateRoot();
        var stage2 = ConfigTemplate.Find(root, ["stage2"]);
        string text = ConfigTemplate.Write(stage2);
        foreach (var option in CommandConfig.Settable(stage2))
            Assert.Contains(CommandConfig.Key(option) + ":", text);
        Assert.Contains("lr: 0.0004", text);
        Assert.Contains("# model:   # required", text);
        Assert.Contains("AdamW learning rate", text);
        Assert.Same(stage2, ConfigTemplate.Find(root, ["train", "stage2"]));
        var e = Assert.Throws<InputException>(() => ConfigTemplate.Find(root, ["stage9"]));
        Assert.Contains("train stage2", e.Message);
    }

    [Fact]
    public void FlagsOverrideTheFileKeyByKey()
    {
        string file = Write("s2.yaml", "lr: 0.001\nrank2: 2\niterations: 100\n");
        var r = CommandConfig.Resolve(Program.CreateRoot(),
            ["train", "stage2", "--config", file, "--lr", "0.002", "--model", "m", "--down", "d", "--data", "x", "--out", "o.safetensors"]);
        Assert.Empty(r.Parse.Errors);
        Assert.Equal((0.002f, ValueSource.Flag), ((float)Get(r, "lr").Value!, Get(r, "lr").Source));
        Assert.Equal((2, ValueSource.File), ((int)Get(r, "rank2").Value!, Get(r, "rank2").Source));
        Assert.Equal((100, ValueSource.File), ((int)Get(r, "iterations").Value!, Get(r, "iterations").Source));
        Assert.Equal((1e-4f, ValueSource.Default), ((float)Get(r, "weight-decay").Value!, Get(r, "weight-decay").Source));
        Assert.Equal(0.002f, r.Parse.GetValue<float>("--lr"));
        Assert.Equal(2, r.Parse.GetValue<int>("--rank2"));
    }

    [Fact]
    public void TheFileCanGiveRequiredOptions()
    {
        string file = Write("s1.yaml", "model: random:tiny:1\ndata: ids\nout: down.safetensors\n");
        var r = CommandConfig.Resolve(Program.CreateRoot(), ["train", "stage1", "--config", file]);
        Assert.Empty(r.Parse.Errors);
        Assert.Equal("random:tiny:1", r.Parse.GetValue<string>("--model"));
        Assert.Contains("model: random:tiny:1   # file", r.ToYaml());
    }

    [Fact]
    public void UnknownKeyNamesKeyLineAndFile()
    {
        string file = Write("bad.yaml", "lr: 0.001\n\nlearning-rate: 0.1\n");
        var e = Assert.Throws<InputException>(() => CommandConfig.Resolve(Program.CreateRoot(), ["train", "stage2", "--config", file]));
        Assert.Equal(file, e.Subject);
        Assert.Contains("line 3", e.Message);
        Assert.Contains("'learning-rate'", e.Message);
        var (code, _, err) = Run("train", "stage2", "--config", file);
        Assert.Equal(2, code);
        Assert.Contains(file, err);
        Assert.Contains("learning-rate", err);
    }

    [Theory]
    [InlineData("iterations: 10\nlr: fast\n", 2, "lr")]
    [InlineData("iterations: [1, 2]\n", 1, "iterations")]
    [InlineData("format: onnx\n", 1, "format")]
    [InlineData("lr:\n  value: 1\n", 1, "lr")]
    public void WrongTypeNamesKeyLineAndFile(string yaml, int line, string key)
    {
        string file = Write("bad.yaml", yaml);
        var e = Assert.Throws<InputException>(() => CommandConfig.Resolve(Program.CreateRoot(),
            ["train", "stage2", "--config", file, "--model", "m", "--down", "d", "--data", "x", "--out", "o.safetensors"]));
        Assert.Equal(file, e.Subject);
        Assert.Contains($"line {line}", e.Message);
        Assert.Contains($"'{key}'", e.Message);
    }

    [Fact]
    public void BrokenYamlAndMissingFilesAreInputErrors()
    {
        string file = Write("broken.yaml", "lr: [0.1\n");
        Assert.Contains("not valid YAML", Assert.Throws<InputException>(() => CommandConfig.Resolve(Program.CreateRoot(), ["train", "stage2", "--config", file])).Message);
        string missing = Path.Combine(dir, "none.yaml");
        Assert.Equal(missing, Assert.Throws<InputException>(() => CommandConfig.Resolve(Program.CreateRoot(), ["train", "stage2", "--config", missing])).Subject);
        string twice = Write("twice.yaml", "lr: 1\nlr: 2\n");
        Assert.Contains("line 2", Assert.Throws<InputException>(() => CommandConfig.Resolve(Program.CreateRoot(), ["train", "stage2", "--config", twice])).Message);
    }

    [Theory]
    [InlineData("include: [to_q, ff.net.2]\nexclude:\n  - norm1.linear\n  - proj_out\n")]
    [InlineData("include:\n  - to_q\n  - ff.net.2\nexclude: [norm1.linear, proj_out]\n")]
    public void ListsGiveEveryItem(string yaml)
    {
        string file = Write("lists.yaml", yaml);
        var r = CommandConfig.Resolve(Program.CreateRoot(), ["train", "stage1", "--config", file, "--model", "m", "--data", "x", "--out", "o.safetensors"]);
        Assert.Empty(r.Parse.Errors);
        Assert.Equal(["to_q", "ff.net.2"], r.Parse.GetValue<string[]>("--include")!);
        Assert.Equal(["norm1.linear", "proj_out"], r.Parse.GetValue<string[]>("--exclude")!);
        Assert.Contains("include: [to_q, ff.net.2]   # file", r.ToYaml());
        // A list on the command line replaces the file's list.
        var flag = CommandConfig.Resolve(Program.CreateRoot(), ["train", "stage1", "--config", file, "--include", "to_k", "--model", "m", "--data", "x", "--out", "o"]);
        Assert.Equal(["to_k"], flag.Parse.GetValue<string[]>("--include")!);
    }

    [Fact]
    public void EveryCommandAcceptsConfig()
    {
        string empty = Write("empty.yaml", "# nothing set\n");
        var root = Program.CreateRoot();
        var all = new List<Command>();
        void Walk(Command c) { foreach (var s in c.Subcommands) { if (s.Action is not null) all.Add(s); Walk(s); } }
        Walk(root);
        Assert.True(all.Count > 15, $"{all.Count} commands");
        foreach (var command in all)
        {
            string path = CommandConfig.PathOf(command);
            var r = CommandConfig.Resolve(Program.CreateRoot(), [.. path.Split(' '), "--config", empty, .. Required(command)]);
            Assert.True(r.Parse.Errors.Count == 0, $"{path}: {string.Join("; ", r.Parse.Errors.Select(e => e.Message))}");
            Assert.Equal(empty, r.File!.Path);
        }
    }

    [Fact]
    public void ARunPrintsAndSavesItsResolvedConfigBesideItsOutput()
    {
        string template = Path.Combine(dir, "synth.yaml");
        Assert.Equal(0, Run("config", "init", "data", "synth", "--out", template).Code);
        string text = File.ReadAllText(template).Replace("identities: 6", "identities: 2");
        File.WriteAllText(template, text);
        string data = Path.Combine(dir, "ids");
        var (code, stdout, err) = Run("data", "synth", "--config", template, "--out", data, "--seed", "3");
        Assert.True(code == 0, err);
        Assert.Equal(2, Directory.GetDirectories(data).Length);
        Assert.Contains("identities: 2   # file", stdout);
        Assert.Contains("seed: 3   # flag", stdout);
        Assert.Contains("preset: tiny   # file", stdout);
        string saved = File.ReadAllText(Path.Combine(data, "config.yaml"));
        Assert.Contains("identities: 2   # file", saved);
        Assert.Contains("out: " + ConfigYaml.Scalar(data) + "   # flag", saved);
        // The saved record is itself a config file for the same command.
        var again = CommandConfig.Resolve(Program.CreateRoot(), ["data", "synth", "--config", Path.Combine(data, "config.yaml")]);
        Assert.Empty(again.Parse.Errors);
        Assert.Equal(2, again.Parse.GetValue<int>("--identities"));
        Assert.Equal(3UL, again.Parse.GetValue<ulong>("--seed"));
    }
}
