"""Deterministic named-tensor generator shared with the C# engine (`random:<preset>:<seed>`).

Spec (all integer arithmetic mod 2^64, logical shifts):
  fnv1a64(bytes):  h = 0xcbf29ce484222325; per byte b: h ^= b; h *= 0x100000001b3
  splitmix64(z):   z += 0x9E3779B97F4A7C15
                   z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
                   z = (z ^ (z >> 27)) * 0x94D049BB133111EB
                   return z ^ (z >> 31)
  tensor NAME, seed S:  key = fnv1a64(utf8(NAME)) ^ (S * 0x9E3779B97F4A7C15)
  flat row-major index i:  u = (splitmix64(key + i) >> 40) / 2^24   (24 bits, exact in fp32)
                           w = fp32(2u - 1)                          (exact, in [-1, 1))
  value by name:  rank-2 "*.weight": w * fp32(1/sqrt(d_in))  (bound in fp64, rounded to fp32; product in fp32)
                  "*.bias":          fp32(0.02) * w
                  "*.scale":         1 + fp32(0.1) * w
                  anything else:     w

Two implementations: numpy uint64 (plain, the spec) and torch int64 (wrapping multiply, logical
shift emulated by masking) which runs chunk-wise on any device, fast enough for 12 B parameters on a GPU.
"""
import math

import numpy as np

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB


def fnv1a64(data: bytes) -> int:
    h = 0xcbf29ce484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001b3) & M64
    return h


def tensor_key(name: str, seed: int) -> int:
    return fnv1a64(name.encode("utf-8")) ^ ((seed * GOLDEN) & M64)


def value_kind(name, shape):
    """(multiplier, offset) in fp32 applied as offset + multiplier * w."""
    if name.endswith(".weight") and len(shape) == 2:
        return np.float32(1.0 / math.sqrt(shape[1])), np.float32(0.0)
    if name.endswith(".bias"):
        return np.float32(0.02), np.float32(0.0)
    if name.endswith(".scale"):
        return np.float32(0.1), np.float32(1.0)
    return np.float32(1.0), np.float32(0.0)


# ----------------------------------------------------------------------------- numpy (the spec)

def uniform_np(name, seed, count, start=0):
    """w values (float32) for flat indices [start, start+count)."""
    with np.errstate(over="ignore"):
        z = np.uint64(tensor_key(name, seed)) + np.arange(start, start + count, dtype=np.uint64)
        z = z + np.uint64(GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(40)).astype(np.float32) * np.float32(2.0 ** -24)
    return np.float32(2.0) * u - np.float32(1.0)


def tensor_np(name, shape, seed):
    count = int(np.prod(shape, dtype=np.int64))
    w = uniform_np(name, seed, count)
    mul, off = value_kind(name, shape)
    v = mul * w
    if off != 0:
        v = off + v
    return v.astype(np.float32).reshape(shape)


# ----------------------------------------------------------------------------- torch (fast, any device)

def _s64(x):
    """uint64 constant -> the int64 with the same bits."""
    x &= M64
    return x - (1 << 64) if x >= (1 << 63) else x


def _lsr(z, s):
    import torch
    return torch.bitwise_and(z >> s, _s64((1 << (64 - s)) - 1))


def uniform_torch(name, seed, count, start=0, device="cpu"):
    import torch
    z = torch.arange(start, start + count, dtype=torch.int64, device=device)
    z += _s64(tensor_key(name, seed) + GOLDEN)          # key + i + golden (wraps)
    z = torch.bitwise_xor(z, _lsr(z, 30)) * _s64(MIX1)
    z = torch.bitwise_xor(z, _lsr(z, 27)) * _s64(MIX2)
    z = torch.bitwise_xor(z, _lsr(z, 31))
    u = _lsr(z, 40).to(torch.float32) * (2.0 ** -24)
    return 2.0 * u - 1.0


def fill_(param, name, seed, chunk=1 << 24):
    """Fill a tensor (any dtype/device) with the generator's values for NAME, chunk by chunk."""
    import torch
    shape = tuple(param.shape)
    mul, off = value_kind(name, shape)
    flat = param.data.view(-1)
    n = flat.numel()
    with torch.no_grad():
        for a in range(0, n, chunk):
            b = min(n, a + chunk)
            w = uniform_torch(name, seed, b - a, a, device=param.device)
            v = w * torch.tensor(float(mul), dtype=torch.float32, device=param.device)
            if off != 0:
                v = v + float(off)
            flat[a:b].copy_(v.to(param.dtype))
    return param
