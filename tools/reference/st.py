"""Minimal safetensors reader/writer (numpy only, no third-party package).

File layout: u64 little-endian header size N, N bytes of UTF-8 JSON, then the raw data.
JSON maps tensor name -> {"dtype", "shape", "data_offsets": [begin, end)} (offsets relative to
the data start) plus an optional "__metadata__" dict of str -> str.

Supported dtypes: F32, F16, BF16 (plus F64, I64, I32, U8 for completeness).
BF16 has no numpy type: it is stored as uint16 and widened to float32 by a 16-bit left shift;
float32 -> BF16 rounds to nearest even on the upper 16 bits (NaN kept as NaN).

read()    -> (dict name -> np.ndarray, metadata dict); BF16 comes back as float32.
header()  -> (dict name -> (dtype, shape), metadata) without reading any data.
write()   -> writes tensors (np arrays, or torch tensors via .numpy()) in the given dtype.
"""
import json
import struct

import numpy as np

_NP = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
       "I32": np.int32, "U8": np.uint8, "BF16": np.uint16}
_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "U8": 1}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    pass


def bf16_bits_to_f32(bits):
    """(uint16 array) -> float32 array with the same values."""
    return (np.asarray(bits).astype(np.uint32).reshape(-1) << 16).view(np.float32).reshape(np.shape(bits))


def f32_to_bf16_bits(x):
    """float32 array -> uint16 bf16 bit patterns, round to nearest even."""
    u = np.ascontiguousarray(x, dtype=np.float32).reshape(-1).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    nan = np.isnan(np.asarray(x, dtype=np.float32)).reshape(-1)
    out = rounded.astype(np.uint16)
    out[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)  # keep a quiet NaN
    return out.reshape(np.shape(x))


def _read_header(f, file_size):
    raw = f.read(8)
    if len(raw) != 8:
        raise SafetensorsError("file shorter than the 8-byte header size")
    (n,) = struct.unpack("<Q", raw)
    if n > _MAX_HEADER or 8 + n > file_size:
        raise SafetensorsError(f"header size {n} is larger than the file ({file_size} bytes) or the limit")
    try:
        hdr = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"header is not valid JSON: {e}") from None
    if not isinstance(hdr, dict):
        raise SafetensorsError("header JSON is not an object")
    meta = hdr.pop("__metadata__", None) or {}
    data_size = file_size - 8 - n
    for name, e in hdr.items():
        dt, shape, offs = e.get("dtype"), e.get("shape"), e.get("data_offsets")
        if dt not in _SIZE:
            raise SafetensorsError(f"{name}: unsupported dtype {dt}")
        if not (isinstance(offs, list) and len(offs) == 2 and 0 <= offs[0] <= offs[1] <= data_size):
            raise SafetensorsError(f"{name}: data_offsets {offs} outside the data section ({data_size} bytes)")
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if offs[1] - offs[0] != count * _SIZE[dt]:
            raise SafetensorsError(f"{name}: {offs[1] - offs[0]} bytes do not match shape {shape} of {dt}")
    return hdr, meta, 8 + n


def header(path):
    import os
    with open(path, "rb") as f:
        hdr, meta, _ = _read_header(f, os.path.getsize(path))
    return {k: (v["dtype"], tuple(v["shape"])) for k, v in hdr.items()}, meta


def read(path, names=None, mmap=True, keep_bf16_bits=False):
    """Read tensors (all, or those in `names`). With mmap the arrays map the file (F32/F16)."""
    import os
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        hdr, meta, start = _read_header(f, size)
    out = {}
    mm = np.memmap(path, dtype=np.uint8, mode="r") if mmap else np.fromfile(path, dtype=np.uint8)
    for name, e in hdr.items():
        if names is not None and name not in names:
            continue
        b, en = e["data_offsets"]
        arr = mm[start + b:start + en].view(_NP[e["dtype"]]).reshape(e["shape"])
        if e["dtype"] == "BF16" and not keep_bf16_bits:
            arr = bf16_bits_to_f32(arr)
        out[name] = arr
    return out, meta


def _to_numpy(t):
    if hasattr(t, "detach"):  # torch tensor
        import torch
        t = t.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()
        t = t.numpy()
    return np.asarray(t)


def write(path, tensors, dtype="F32", metadata=None):
    """Write a dict name -> array. dtype: one of F32/F16/BF16/F64 for float arrays (ints keep theirs)."""
    hdr, blobs, off = {}, [], 0
    for name in sorted(tensors):
        a = _to_numpy(tensors[name])
        if a.dtype.kind == "f":
            dt = dtype
            if dt == "BF16":
                data = f32_to_bf16_bits(a.astype(np.float32))
            else:
                data = a.astype(_NP[dt])
        else:
            dt = {np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.uint8): "U8"}[a.dtype]
            data = a
        raw = np.ascontiguousarray(data).tobytes()
        hdr[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if metadata:
        hdr["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    js = json.dumps(hdr, separators=(",", ":")).encode("utf-8")
    js += b" " * ((8 - len(js) % 8) % 8)  # align the data section to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(js)))
        f.write(js)
        for raw in blobs:
            f.write(raw)
