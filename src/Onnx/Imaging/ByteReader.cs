// Forward reader over a seekable stream through a 64 KiB window, for walking PNG chunks and JPEG segments. Skipping
// is a seek, so a chunk that is passed over is never read: a 300 MiB comment costs one seek, not 300 MiB.
namespace MetaLoraNative.Onnx.Imaging;

sealed class ByteReader
{
    readonly Stream _stream;
    readonly byte[] _window = new byte[1 << 16];
    long _windowStart;      // stream offset of _window[0]
    int _windowLength;      // valid bytes in _window
    int _index;             // next byte to return, within _window

    public ByteReader(Stream stream)
    {
        _stream = stream;
        Length = stream.Length;
    }

    public long Length { get; }
    public long Position => _windowStart + _index;
    public long Remaining => Length - Position;

    /// <summary>The next byte, or -1 at the end of the stream.</summary>
    public int ReadByte()
    {
        if (_index == _windowLength && !Refill()) return -1;
        return _window[_index++];
    }

    /// <summary>Fills <paramref name="destination"/>; false (and nothing consumed that matters) when the stream ends first.</summary>
    public bool TryRead(Span<byte> destination)
    {
        while (destination.Length > 0)
        {
            if (_index == _windowLength && !Refill()) return false;
            int n = Math.Min(destination.Length, _windowLength - _index);
            _window.AsSpan(_index, n).CopyTo(destination);
            _index += n;
            destination = destination[n..];
        }
        return true;
    }

    public void Seek(long position)
    {
        if (position >= _windowStart && position <= _windowStart + _windowLength) _index = (int)(position - _windowStart);
        else { _windowStart = position; _windowLength = 0; _index = 0; }
    }

    public void Skip(long count) => Seek(Position + count);

    bool Refill()
    {
        _windowStart += _windowLength;
        _index = 0;
        _windowLength = 0;
        if (_windowStart >= Length) return false;
        _stream.Position = _windowStart;
        _windowLength = _stream.ReadAtLeast(_window, _window.Length, throwOnEndOfStream: false);
        return _windowLength > 0;
    }
}
