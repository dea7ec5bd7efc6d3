// A read-only, seekable view of chosen byte ranges of another stream, back to back. The decoder is handed this view
// instead of the file, so what the structure walk dropped (text, ICC, EXIF, comments) never reaches it, and the
// IDAT payloads of a PNG can be inflated as one zlib stream without copying them out.
namespace MetaLoraNative.Onnx.Imaging;

sealed class RangeStream : Stream
{
    readonly Stream _source;
    readonly (long Start, long Length)[] _ranges;
    readonly long[] _offsets;   // (ranges + 1): where each range begins in this view; the last is the total length
    long _position;

    public RangeStream(Stream source, IReadOnlyList<(long Start, long Length)> ranges)
    {
        _source = source;
        _ranges = [.. ranges];
        _offsets = new long[_ranges.Length + 1];
        for (int i = 0; i < _ranges.Length; i++) _offsets[i + 1] = _offsets[i] + _ranges[i].Length;
    }

    public override bool CanRead => true;
    public override bool CanSeek => true;
    public override bool CanWrite => false;
    public override long Length => _offsets[^1];

    public override long Position
    {
        get => _position;
        set => _position = value >= 0 ? value : throw new ArgumentOutOfRangeException(nameof(value));
    }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer)
    {
        int total = 0;
        while (buffer.Length > 0 && _position < Length)
        {
            // The range holding _position: the last offset <= _position.
            int i = Array.BinarySearch(_offsets, _position);
            if (i < 0) i = ~i - 1;
            while (i < _ranges.Length - 1 && _offsets[i + 1] == _position) i++;   // skip empty ranges
            long within = _position - _offsets[i];
            int n = (int)Math.Min(buffer.Length, _ranges[i].Length - within);
            _source.Position = _ranges[i].Start + within;
            int got = _source.ReadAtLeast(buffer[..n], n, throwOnEndOfStream: false);
            if (got == 0) break;
            total += got;
            _position += got;
            buffer = buffer[got..];
        }
        return total;
    }

    public override long Seek(long offset, SeekOrigin origin) => Position = origin switch
    {
        SeekOrigin.Begin => offset,
        SeekOrigin.Current => _position + offset,
        _ => Length + offset,
    };

    public override void Flush() { }
    public override void SetLength(long value) => throw new NotSupportedException();
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
}
