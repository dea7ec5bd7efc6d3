namespace MetaLoraNative.Tests.Testing;

/// <summary>A test class with its own temporary folder: xUnit makes one instance per test, so each test gets a fresh one.</summary>
public abstract class TempFolderTest(string name) : IDisposable
{
    protected readonly string dir = Directory.CreateTempSubdirectory($"metalora-{name}-").FullName;

    public virtual void Dispose()
    {
        Directory.Delete(dir, recursive: true);
        GC.SuppressFinalize(this);
    }
}
