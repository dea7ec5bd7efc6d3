#!/usr/bin/env python3
"""Write a cross-check case: DIR/model.safetensors, DIR/inputs.safetensors, DIR/lora.safetensors.

model:  the preset's weights from the named generator (seed N), F32, metadata flux.axes_dim / flux.theta.
inputs: numpy default_rng(N): img, txt, y, target ~ N(0, 1); timesteps ~ U(0.05, 0.95);
        guidance = 1.0, 3.5, 1.0, ... per batch item; txt_ids zero; img_ids [0, row, col] on the grid.
lora:   every target's factors from the named generator with seed N + 1 (nonzero everywhere, so
        every gradient is nonzero); three-factor (r1, r2) or --standard (rank r2).
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flux_ref  # noqa: E402
import randgen  # noqa: E402
import st  # noqa: E402


def make_inputs(cfg, seed, batch, grid_h, grid_w, txt_len):
    rng = np.random.default_rng(seed)
    L = grid_h * grid_w
    img_ids = np.zeros((batch, L, 3), np.float32)
    img_ids[..., 1] = np.repeat(np.arange(grid_h), grid_w)[None]
    img_ids[..., 2] = np.tile(np.arange(grid_w), grid_h)[None]
    f = np.float32
    return {
        "img": rng.standard_normal((batch, L, cfg.in_channels)).astype(f),
        "img_ids": img_ids,
        "txt": rng.standard_normal((batch, txt_len, cfg.context_in)).astype(f),
        "txt_ids": np.zeros((batch, txt_len, 3), f),
        "timesteps": rng.uniform(0.05, 0.95, batch).astype(f),
        "y": rng.standard_normal((batch, cfg.vec_in)).astype(f),
        "guidance": np.array([1.0 if i % 2 == 0 else 3.5 for i in range(batch)], f),
        "target": rng.standard_normal((batch, L, cfg.out_channels)).astype(f),
    }


def model_tensors(cfg, seed):
    return {n: randgen.tensor_np(n, s, seed) for n, s in flux_ref.parameter_shapes(cfg).items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", choices=list(flux_ref.PRESETS))
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--img", default="4x4", help="latent token grid HxW")
    ap.add_argument("--txt", type=int, default=8)
    ap.add_argument("--r1", type=int, default=4)
    ap.add_argument("--r2", type=int, default=2)
    ap.add_argument("--standard", action="store_true", help="write lora_A/lora_B (rank r2) instead")
    ap.add_argument("--no-model", action="store_true",
                    help="skip model.safetensors (use --model random:<preset>:<seed>; flux-dev would be 48 GB)")
    a = ap.parse_args(argv)
    cfg = flux_ref.PRESETS[a.preset]
    h, w = (int(v) for v in a.img.lower().split("x"))
    os.makedirs(a.out, exist_ok=True)
    if not a.no_model:
        st.write(os.path.join(a.out, "model.safetensors"), model_tensors(cfg, a.seed), "F32",
                 metadata={**flux_ref.config_metadata(cfg), "generator": f"random:{a.preset}:{a.seed}"})
    st.write(os.path.join(a.out, "inputs.safetensors"), make_inputs(cfg, a.seed, a.batch, h, w, a.txt), "F32")
    lora = flux_ref.random_lora(cfg, a.r1, a.r2, a.seed + 1, standard=a.standard)
    st.write(os.path.join(a.out, "lora.safetensors"), lora, "F32",
             metadata={"r1": str(a.r1), "r2": str(a.r2), "format": "standard" if a.standard else "three-factor"})
    print(f"{a.out}: preset {a.preset} seed {a.seed}, batch {a.batch}, img {h}x{w}, txt {a.txt}, "
          f"{len(lora)} LoRA factors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
