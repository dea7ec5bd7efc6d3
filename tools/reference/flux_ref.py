"""FLUX.1 transformer with three-factor (Meta-LoRA) and standard LoRA, written plainly in PyTorch.

An independent reference for the C# engine: parameters carry BFL checkpoint names
(double_blocks.{i}.img_attn.qkv.weight, ...), the config is detected from the weights, and
gradients come from torch autograd (nothing here mirrors the engine's manual backward).

Shapes: B batch, L tokens (txt first, then img), C hidden, H heads, D head dim (C = H*D).
Precision rule: weights and activations in the model dtype (fp32, bf16 or fp64); the QK RMSNorm,
RoPE and the timestep embedding are computed in at least fp32 and cast back, as in BFL's model.
Works on PyTorch 1.13 (manual softmax attention) and 2.x (F.scaled_dot_product_attention).
"""
import math
import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

USE_SDPA = hasattr(F, "scaled_dot_product_attention")  # PyTorch 2.x; tests may turn it off

try:  # package or script use
    from . import randgen, st
except ImportError:  # pragma: no cover
    import randgen
    import st


# ============================================================================ config

@dataclass
class FluxConfig:
    in_channels: int = 64
    out_channels: int = 64
    vec_in: int = 768
    context_in: int = 4096
    hidden: int = 3072
    heads: int = 24
    mlp_hidden: int = 12288
    depth: int = 19
    depth_single: int = 38
    axes_dim: tuple = (16, 56, 56)
    theta: float = 10000.0
    guidance_embed: bool = True
    qkv_bias: bool = True

    @property
    def head_dim(self):
        return self.hidden // self.heads


PRESETS = {
    "flux-dev": FluxConfig(),
    "flux-schnell": FluxConfig(guidance_embed=False),
    "tiny": FluxConfig(vec_in=32, context_in=48, hidden=64, heads=4, mlp_hidden=256,
                       depth=2, depth_single=2, axes_dim=(4, 6, 6)),
}


def config_metadata(cfg):
    return {"flux.axes_dim": ",".join(str(a) for a in cfg.axes_dim), "flux.theta": repr(float(cfg.theta))}


def detect_config(shapes, metadata=None):
    """Config from weight names -> shapes (and file metadata for the RoPE axes / theta)."""
    metadata = metadata or {}

    def shape(name):
        if name not in shapes:
            raise ValueError(f"not a FLUX checkpoint: missing {name}")
        return tuple(shapes[name])

    def count(prefix):
        idx = {int(m.group(1)) for k in shapes for m in [re.match(prefix + r"\.(\d+)\.", k)] if m}
        if idx and idx != set(range(len(idx))):
            raise ValueError(f"{prefix}: block indices are not contiguous from 0: {sorted(idx)}")
        return len(idx)

    hidden, in_ch = shape("img_in.weight")
    head_dim = shape("double_blocks.0.img_attn.norm.query_norm.scale")[0]
    if hidden % head_dim:
        raise ValueError(f"hidden {hidden} is not a multiple of the head dim {head_dim}")
    axes = tuple(int(a) for a in metadata.get("flux.axes_dim", "16,56,56").split(","))
    if sum(axes) != head_dim:
        raise ValueError(f"RoPE axes {axes} (flux.axes_dim) do not sum to the head dim {head_dim}")
    return FluxConfig(
        in_channels=in_ch,
        out_channels=shape("final_layer.linear.weight")[0],
        vec_in=shape("vector_in.in_layer.weight")[1],
        context_in=shape("txt_in.weight")[1],
        hidden=hidden,
        heads=hidden // head_dim,
        mlp_hidden=shape("double_blocks.0.img_mlp.0.weight")[0],
        depth=count("double_blocks"),
        depth_single=count("single_blocks"),
        axes_dim=axes,
        theta=float(metadata.get("flux.theta", "10000")),
        guidance_embed=any(k.startswith("guidance_in.") for k in shapes),
        qkv_bias="double_blocks.0.img_attn.qkv.bias" in shapes,
    )


# ============================================================================ LoRA

class LoraSlice(nn.Module):
    """Delta for output rows [row0, row1) of one base linear.
    three-factor: U (rows, r2) . M (r2, r1) . D (r1, d_in) . x;  standard: B (rows, r) . A (r, d_in) . x.
    Factors are kept in fp32 (they are the trained parameters) and cast to the activation dtype."""

    def __init__(self, key, row0, row1, factors):
        super().__init__()
        self.key, self.row0, self.row1 = key, row0, row1
        self.kind = "three" if "lora_down" in factors else "standard"
        order = ("lora_down", "lora_mid", "lora_up") if self.kind == "three" else ("lora_A", "lora_B")
        self.factors = nn.ParameterList([factors[n] for n in order])

    def forward(self, x):
        h = x
        for w in self.factors:
            h = F.linear(h, w.to(x.dtype))
        return h


class Linear(nn.Linear):
    """nn.Linear plus any number of LoRA row slices (q/k/v of a fused qkv are three slices)."""

    def __init__(self, d_in, d_out, bias=True):
        super().__init__(d_in, d_out, bias=bias, device="meta")
        self.lora = nn.ModuleList()

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        if len(self.lora) == 0:
            return y
        parts, r = [], 0
        for s in sorted(self.lora, key=lambda s: s.row0):
            if s.row0 > r:
                parts.append(y[..., r:s.row0])
            parts.append(y[..., s.row0:s.row1] + s(x))
            r = s.row1
        if r < y.shape[-1]:
            parts.append(y[..., r:])
        return torch.cat(parts, dim=-1)


def lora_targets(cfg):
    """The one table from diffusers LoRA names to BFL linears: prefix -> (bfl linear, row0, row1)."""
    C, mlp = cfg.hidden, cfg.mlp_hidden
    qkv = {"q": (0, C), "k": (C, 2 * C), "v": (2 * C, 3 * C)}
    t = {}
    for i in range(cfg.depth):
        p, b = f"transformer.transformer_blocks.{i}.", f"double_blocks.{i}."
        for n, rows in qkv.items():
            t[p + f"attn.to_{n}"] = (b + "img_attn.qkv", *rows)
            t[p + f"attn.add_{n}_proj"] = (b + "txt_attn.qkv", *rows)
        t[p + "attn.to_out.0"] = (b + "img_attn.proj", 0, C)
        t[p + "attn.to_add_out"] = (b + "txt_attn.proj", 0, C)
        t[p + "ff.net.0.proj"] = (b + "img_mlp.0", 0, mlp)
        t[p + "ff.net.2"] = (b + "img_mlp.2", 0, C)
        t[p + "ff_context.net.0.proj"] = (b + "txt_mlp.0", 0, mlp)
        t[p + "ff_context.net.2"] = (b + "txt_mlp.2", 0, C)
        t[p + "norm1.linear"] = (b + "img_mod.lin", 0, 6 * C)
        t[p + "norm1_context.linear"] = (b + "txt_mod.lin", 0, 6 * C)
    for i in range(cfg.depth_single):
        p, b = f"transformer.single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for n, rows in qkv.items():
            t[p + f"attn.to_{n}"] = (b + "linear1", *rows)
        t[p + "proj_mlp"] = (b + "linear1", 3 * C, 3 * C + mlp)
        t[p + "proj_out"] = (b + "linear2", 0, C)
        t[p + "norm.linear"] = (b + "modulation.lin", 0, 3 * C)
    return t


LORA_SUFFIXES = ("lora_down", "lora_mid", "lora_up", "lora_A", "lora_B")


def attach_lora(model, tensors, device=None, trainable=None, dtype=torch.float32):
    """Attach LoRA factors (dict file key -> array/tensor) to the model.
    trainable: None = all factors require grad, else a set of suffixes (e.g. {"lora_mid", "lora_up"}).
    Factors are stored in `dtype` (fp32; fp64 for finite-difference tests).
    Returns dict file key -> Parameter. Unknown or incomplete keys raise (never ignored)."""
    device = device or next(model.parameters()).device
    table = lora_targets(model.cfg)
    groups = {}
    for key, val in tensors.items():
        m = re.match(r"^(.*)\.(lora_down|lora_mid|lora_up|lora_A|lora_B)\.weight$", key)
        if not m:
            raise ValueError(f"LoRA key not understood: {key} (scale is 1; .alpha keys are not supported)")
        prefix = m.group(1) if m.group(1).startswith("transformer.") else "transformer." + m.group(1)
        if prefix not in table:
            raise ValueError(f"LoRA key {key} names no FLUX target")
        groups.setdefault(prefix, {})[m.group(2)] = (key, val)
    params = {}
    modules = dict(model.named_modules())
    for prefix, g in groups.items():
        lin_name, row0, row1 = table[prefix]
        lin = modules[lin_name]
        three = {"lora_down", "lora_mid", "lora_up"}
        if set(g) != three and set(g) != {"lora_A", "lora_B"}:
            raise ValueError(f"{prefix}: incomplete or mixed LoRA factors {sorted(g)}")
        factors = {}
        for suffix, (key, val) in g.items():
            t = torch.as_tensor(val).detach().to(device=device, dtype=dtype).clone()
            req = trainable is None or suffix in trainable
            factors[suffix] = p = nn.Parameter(t, requires_grad=req)
            params[key] = p
        if set(g) == three:
            d, m_, u = factors["lora_down"], factors["lora_mid"], factors["lora_up"]
            want = [(d.shape[1], lin.in_features), (m_.shape[1], d.shape[0]), (u.shape[1], m_.shape[0]),
                    (u.shape[0], row1 - row0)]
        else:
            a, b = factors["lora_A"], factors["lora_B"]
            want = [(a.shape[1], lin.in_features), (b.shape[1], a.shape[0]), (b.shape[0], row1 - row0)]
        if any(x != y for x, y in want) or any(f.dim() != 2 for f in factors.values()):
            raise ValueError(f"{prefix}: factor shapes {[tuple(f.shape) for f in factors.values()]} do not fit "
                             f"{lin_name} rows [{row0},{row1}) with d_in {lin.in_features}")
        lin.lora.append(LoraSlice(prefix, row0, row1, factors))
    return params


def detach_lora(model):
    for m in model.modules():
        if isinstance(m, Linear):
            m.lora = nn.ModuleList()


def random_lora(cfg, r1, r2, seed, standard=False, targets=None):
    """Factors for every target from the named generator (numpy). Names are the file keys."""
    out = {}
    for prefix, (lin, row0, row1) in lora_targets(cfg).items():
        if targets is not None and prefix not in targets:
            continue
        d_in = _linear_shapes(cfg)[lin][1]
        shapes = ({"lora_A": (r2, d_in), "lora_B": (row1 - row0, r2)} if standard else
                  {"lora_down": (r1, d_in), "lora_mid": (r2, r1), "lora_up": (row1 - row0, r2)})
        for s, shp in shapes.items():
            k = f"{prefix}.{s}.weight"
            out[k] = randgen.tensor_np(k, shp, seed)
    return out


# ============================================================================ layers

def timestep_embedding(t, dim=256, max_period=10000, time_factor=1000.0):
    """t (B) -> (B, dim) = [cos(1000 t f), sin(1000 t f)], f_k = max_period^(-k/half)."""
    ct = t.dtype if t.dtype == torch.float64 else torch.float32
    t = time_factor * t.to(ct)
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=ct, device=t.device) / half)
    args = t[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rope_tables(ids, axes_dim, theta, dtype):
    """ids (B, L, n_axes) -> cos, sin (B, 1, L, D/2). Angles in fp64; tables in max(fp32, dtype)."""
    ang = []
    for i, d in enumerate(axes_dim):
        omega = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=ids.device) / d)
        ang.append(ids[..., i].to(torch.float64)[..., None] * omega)
    ang = torch.cat(ang, dim=-1)[:, None]
    td = torch.float64 if dtype == torch.float64 else torch.float32
    return torch.cos(ang).to(td), torch.sin(ang).to(td)


def apply_rope(x, cos, sin):
    """Rotate adjacent channel pairs (2k, 2k+1) of x (B, H, L, D) by the angle table."""
    x_ = x.to(cos.dtype).reshape(*x.shape[:-1], -1, 2)
    x0, x1 = x_[..., 0], x_[..., 1]
    out = torch.stack([cos * x0 - sin * x1, sin * x0 + cos * x1], dim=-1)
    return out.reshape(x.shape).to(x.dtype)


def attention(q, k, v, cos, sin):
    """q, k, v (B, H, L, D) -> (B, L, H*D); RoPE on q and k, then softmax attention."""
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if USE_SDPA:
        x = F.scaled_dot_product_attention(q, k, v)
    else:  # PyTorch 1.x
        s = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
        p = torch.softmax(s.float() if s.dtype in (torch.float16, torch.bfloat16) else s, dim=-1)
        x = p.to(v.dtype) @ v
    B, H, L, D = x.shape
    return x.transpose(1, 2).reshape(B, L, H * D)


def layer_norm(x):
    """LayerNorm over the last dim, no affine, eps 1e-6."""
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def gelu(x):
    return F.gelu(x, approximate="tanh")


class RMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.scale = nn.Parameter(torch.empty(dim, device="meta"))

    def forward(self, x):
        ct = torch.float64 if x.dtype == torch.float64 else torch.float32
        xf = x.to(ct)
        rrms = torch.rsqrt(torch.mean(xf * xf, dim=-1, keepdim=True) + 1e-6)
        return (xf * rrms).to(x.dtype) * self.scale


class QKNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.query_norm, self.key_norm = RMSNorm(dim), RMSNorm(dim)

    def forward(self, q, k, v):
        return self.query_norm(q).to(v.dtype), self.key_norm(k).to(v.dtype)


class MLPEmbedder(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.in_layer, self.out_layer = Linear(d_in, hidden), Linear(hidden, hidden)

    def forward(self, x):
        return self.out_layer(F.silu(self.in_layer(x)))


class Modulation(nn.Module):
    """silu(vec) -> Linear -> chunks (shift, scale, gate) [x2 for double blocks], each (B, 1, C)."""

    def __init__(self, dim, double):
        super().__init__()
        self.mult = 6 if double else 3
        self.lin = Linear(dim, self.mult * dim)

    def forward(self, vec):
        return self.lin(F.silu(vec))[:, None, :].chunk(self.mult, dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, dim, heads, qkv_bias):
        super().__init__()
        self.heads = heads
        self.qkv = Linear(dim, 3 * dim, bias=qkv_bias)
        self.norm = QKNorm(dim // heads)
        self.proj = Linear(dim, dim)


def split_heads(qkv, heads):
    """(B, L, 3*H*D) -> q, k, v each (B, H, L, D); qkv rows are [q | k | v], heads contiguous."""
    B, L, _ = qkv.shape
    x = qkv.reshape(B, L, 3, heads, -1).permute(2, 0, 3, 1, 4)
    return x[0], x[1], x[2]


def mlp(dim, hidden):
    return nn.Sequential(Linear(dim, hidden), nn.GELU(approximate="tanh"), Linear(hidden, dim))


class DoubleStreamBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C = cfg.hidden
        self.heads = cfg.heads
        self.img_mod, self.txt_mod = Modulation(C, True), Modulation(C, True)
        self.img_attn = SelfAttention(C, cfg.heads, cfg.qkv_bias)
        self.txt_attn = SelfAttention(C, cfg.heads, cfg.qkv_bias)
        self.img_mlp, self.txt_mlp = mlp(C, cfg.mlp_hidden), mlp(C, cfg.mlp_hidden)

    def forward(self, img, txt, vec, cos, sin):
        i_shift1, i_scale1, i_gate1, i_shift2, i_scale2, i_gate2 = self.img_mod(vec)
        t_shift1, t_scale1, t_gate1, t_shift2, t_scale2, t_gate2 = self.txt_mod(vec)

        # prepare image for attention
        img_q, img_k, img_v = split_heads(self.img_attn.qkv((1 + i_scale1) * layer_norm(img) + i_shift1), self.heads)
        img_q, img_k = self.img_attn.norm(img_q, img_k, img_v)
        # prepare text for attention
        txt_q, txt_k, txt_v = split_heads(self.txt_attn.qkv((1 + t_scale1) * layer_norm(txt) + t_shift1), self.heads)
        txt_q, txt_k = self.txt_attn.norm(txt_q, txt_k, txt_v)

        # joint attention, text tokens first
        attn = attention(torch.cat([txt_q, img_q], 2), torch.cat([txt_k, img_k], 2), torch.cat([txt_v, img_v], 2),
                         cos, sin)
        txt_a, img_a = attn[:, :txt.shape[1]], attn[:, txt.shape[1]:]

        # image stream: gated attention output, then gated MLP
        img = img + i_gate1 * self.img_attn.proj(img_a)
        img = img + i_gate2 * self.img_mlp((1 + i_scale2) * layer_norm(img) + i_shift2)
        # text stream
        txt = txt + t_gate1 * self.txt_attn.proj(txt_a)
        txt = txt + t_gate2 * self.txt_mlp((1 + t_scale2) * layer_norm(txt) + t_shift2)
        return img, txt


class SingleStreamBlock(nn.Module):
    """linear1: C -> 3C (qkv) + mlp (mlp in); linear2: C + mlp -> C on cat(attn, gelu(mlp))."""

    def __init__(self, cfg):
        super().__init__()
        C = cfg.hidden
        self.heads, self.hidden, self.mlp_hidden = cfg.heads, C, cfg.mlp_hidden
        self.linear1 = Linear(C, 3 * C + cfg.mlp_hidden)
        self.linear2 = Linear(C + cfg.mlp_hidden, C)
        self.norm = QKNorm(cfg.head_dim)
        self.modulation = Modulation(C, False)

    def forward(self, x, vec, cos, sin):
        shift, scale, gate = self.modulation(vec)
        qkv, mlp_in = torch.split(self.linear1((1 + scale) * layer_norm(x) + shift),
                                  [3 * self.hidden, self.mlp_hidden], dim=-1)
        q, k, v = split_heads(qkv, self.heads)
        q, k = self.norm(q, k, v)
        attn = attention(q, k, v, cos, sin)
        return x + gate * self.linear2(torch.cat([attn, gelu(mlp_in)], dim=-1))


class LastLayer(nn.Module):
    def __init__(self, C, out_channels):
        super().__init__()
        self.linear = Linear(C, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(C, 2 * C))

    def forward(self, x, vec):
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=-1)
        return self.linear((1 + scale[:, None]) * layer_norm(x) + shift[:, None])


class Flux(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C = cfg.hidden
        if C % cfg.heads or sum(cfg.axes_dim) != cfg.head_dim:
            raise ValueError(f"inconsistent config: hidden {C}, heads {cfg.heads}, axes {cfg.axes_dim}")
        self.cfg = cfg
        self.recompute = False  # per-block activation recomputation during training
        self.img_in = Linear(cfg.in_channels, C)
        self.time_in = MLPEmbedder(256, C)
        self.vector_in = MLPEmbedder(cfg.vec_in, C)
        if cfg.guidance_embed:
            self.guidance_in = MLPEmbedder(256, C)
        self.txt_in = Linear(cfg.context_in, C)
        self.double_blocks = nn.ModuleList([DoubleStreamBlock(cfg) for _ in range(cfg.depth)])
        self.single_blocks = nn.ModuleList([SingleStreamBlock(cfg) for _ in range(cfg.depth_single)])
        self.final_layer = LastLayer(C, cfg.out_channels)

    def _run(self, block, *args):
        if self.recompute and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def forward(self, img, img_ids, txt, txt_ids, timesteps, y, guidance=None):
        dt = self.img_in.weight.dtype
        img = self.img_in(img.to(dt))
        vec = self.time_in(timestep_embedding(timesteps).to(dt))
        if self.cfg.guidance_embed:
            if guidance is None:
                raise ValueError("this model has a guidance embedding: pass guidance")
            vec = vec + self.guidance_in(timestep_embedding(guidance).to(dt))
        vec = vec + self.vector_in(y.to(dt))
        txt = self.txt_in(txt.to(dt))
        cos, sin = rope_tables(torch.cat([txt_ids, img_ids], dim=1), self.cfg.axes_dim, self.cfg.theta, dt)

        for block in self.double_blocks:
            img, txt = self._run(block, img, txt, vec, cos, sin)
        x = torch.cat([txt, img], dim=1)
        for block in self.single_blocks:
            x = self._run(block, x, vec, cos, sin)
        return self.final_layer(x[:, txt.shape[1]:], vec)

    def base_parameters(self):
        """(BFL name, parameter) for the checkpoint weights (LoRA factors excluded)."""
        return [(n, p) for n, p in self.named_parameters() if ".lora." not in n]


# ============================================================================ loading

def _linear_shapes(cfg):
    """BFL linear name -> (d_out, d_in), from a meta-device model (cached per config)."""
    key = repr(cfg)
    if key not in _SHAPE_CACHE:
        m = Flux(cfg)
        _SHAPE_CACHE[key] = {n: tuple(mod.weight.shape) for n, mod in m.named_modules() if isinstance(mod, Linear)}
    return _SHAPE_CACHE[key]


_SHAPE_CACHE = {}


def parameter_shapes(cfg):
    return {n: tuple(p.shape) for n, p in Flux(cfg).base_parameters()}


def _materialize(cfg, device, dtype):
    model = Flux(cfg).to(dtype)  # still on the meta device: no memory yet
    return model.to_empty(device=device)


def random_model(preset, seed, device="cpu", dtype=torch.float32):
    """Preset weights from the named generator, generated on the device chunk by chunk."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset}; known: {', '.join(PRESETS)}")
    model = _materialize(PRESETS[preset], device, dtype)
    for name, p in model.base_parameters():
        randgen.fill_(p, name, seed)
    return model


def _to_torch(arr):
    import numpy as np
    if arr.dtype == np.uint16:  # BF16 bits kept by st.read(keep_bf16_bits=True)
        return torch.from_numpy(np.array(arr).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.array(arr))


def load_model(spec, device="cpu", dtype=torch.float32):
    """spec: a .safetensors path (BFL layout) or random:<preset>:<seed>."""
    if spec.startswith("random:"):
        _, preset, seed = spec.split(":")
        return random_model(preset, int(seed), device, dtype)
    shapes, meta = st.header(spec)
    shapes = {k: v[1] for k, v in shapes.items()}
    cfg = detect_config(shapes, meta)
    model = _materialize(cfg, device, dtype)
    expected = dict(model.base_parameters())
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(set(shapes) - set(expected))
    if missing or extra:
        raise ValueError(f"{spec}: checkpoint does not match the detected config {cfg}: "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}")
    tensors, _ = st.read(spec, keep_bf16_bits=True)
    with torch.no_grad():
        for name, p in expected.items():
            if tuple(tensors[name].shape) != tuple(p.shape):
                raise ValueError(f"{name}: shape {tuple(tensors[name].shape)}, expected {tuple(p.shape)}")
            p.copy_(_to_torch(tensors[name]).to(device=device, dtype=dtype))
    return model
