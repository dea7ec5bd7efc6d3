// A cheap content fingerprint of a model or tokenizer file: SHA-256 over its length, first MiB and last MiB.
// Hashing a whole 9 GB T5 file on every run would cost more than the encoding the cache saves; a changed checkpoint
// differs in its header (names, shapes) or its tail (the last weights), and a touched-but-equal file keeps its key.
using System.Security.Cryptography;

namespace MetaLoraNative.Onnx.Cache;

public static class ModelFingerprint
{
    const int Window = 1 << 20;

    public static string Of(params string[] paths)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[Window];
        foreach (var path in paths)
        {
            using var f = File.OpenRead(path);
            sha.AppendData(BitConverter.GetBytes(f.Length));
            int n = f.ReadAtLeast(buffer, Math.Min(Window, (int)Math.Min(f.Length, int.MaxValue)), throwOnEndOfStream: false);
            sha.AppendData(buffer, 0, n);
            if (f.Length > Window)
            {
                f.Seek(Math.Max(Window, f.Length - Window), SeekOrigin.Begin);
                n = f.ReadAtLeast(buffer, (int)(f.Length - f.Position), throwOnEndOfStream: false);
                sha.AppendData(buffer, 0, n);
            }
        }
        return Convert.ToHexStringLower(sha.GetHashAndReset())[..16];
    }
}
