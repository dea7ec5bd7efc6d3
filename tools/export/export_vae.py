#!/usr/bin/env python3
"""FLUX VAE -> vae_encoder.onnx and vae_decoder.onnx (fp32, ~330 MB together), height and width dynamic.

Contracts (latents unscaled; the C# side applies z = 0.3611 * (z_raw - 0.1159) and its inverse):
  encoder: "image" float32 (1, 3, H, W) in [-1, 1] -> "latent" float32 (1, 16, H/8, W/8), the distribution's mean
  decoder: "latent" float32 (1, 16, h, w) -> "image" float32 (1, 3, 8h, 8w) in [-1, 1]

  python export_vae.py --repo black-forest-labs/FLUX.1-dev --out models/            # diffusers layout
  python export_vae.py --ae /path/to/ae.safetensors --out models/                   # BFL's single file
"""
import argparse
import os

import torch
from diffusers import AutoencoderKL

import common


class Encode(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, image):
        return self.vae.encode(image).latent_dist.mean


class Decode(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latent):
        return self.vae.decode(latent).sample


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", default="black-forest-labs/FLUX.1-dev", help="diffusers repo or folder (subfolder vae)")
    p.add_argument("--ae", help="BFL ae.safetensors; its config is taken from --repo")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)

    if a.ae:
        # diffusers converts BFL's key names (encoder.down.0.block.0 ...) to its own layout.
        vae = AutoencoderKL.from_single_file(a.ae, config=a.repo, subfolder="vae", torch_dtype=torch.float32)
    else:
        vae = AutoencoderKL.from_pretrained(a.repo, subfolder="vae", torch_dtype=torch.float32)
    if vae.config.latent_channels != 16:
        raise SystemExit(f"expected the FLUX VAE (16 latent channels), got {vae.config.latent_channels}")
    print(f"scaling_factor {vae.config.scaling_factor}, shift_factor {vae.config.shift_factor} (C# uses 0.3611, 0.1159)")
    with torch.no_grad():
        common.export(Encode(vae), (torch.zeros(1, 3, 256, 256),), os.path.join(a.out, "vae_encoder.onnx"), ["image"], ["latent"],
                      dynamic_axes={"image": {2: "height", 3: "width"}, "latent": {2: "latent_height", 3: "latent_width"}})
        common.export(Decode(vae), (torch.zeros(1, 16, 32, 32),), os.path.join(a.out, "vae_decoder.onnx"), ["latent"], ["image"],
                      dynamic_axes={"latent": {2: "latent_height", 3: "latent_width"}, "image": {2: "height", 3: "width"}})
    common.update_manifest(a.out, "vae_encoder", "vae_encoder.onnx")
    common.update_manifest(a.out, "vae_decoder", "vae_decoder.onnx")


if __name__ == "__main__":
    main()
