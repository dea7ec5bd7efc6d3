#!/usr/bin/env python3
"""CLIP ViT-B/32 (the paper's CLIP-T model) -> clip_b32_image.onnx, clip_b32_text.onnx and the BPE merges file.

Contracts (projected embeddings; the C# side L2-normalises and takes the cosine):
  image: "pixel_values" float32 (1, 3, 224, 224), CLIP-normalised RGB -> "image_embeds" float32 (1, 512)
  text:  "input_ids" int64 (1, 77) -> "text_embeds" float32 (1, 512)

  python export_clip_b32.py --repo openai/clip-vit-base-patch32 --out models/
"""
import argparse
import os

import torch
from transformers import CLIPModel

import common


class Image(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model.get_image_features(pixel_values=pixel_values)


class Text(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model.get_text_features(input_ids=input_ids)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", default="openai/clip-vit-base-patch32")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)

    model = CLIPModel.from_pretrained(a.repo, torch_dtype=torch.float32)
    if model.config.projection_dim != 512 or model.config.vision_config.patch_size != 32:
        raise SystemExit("expected CLIP ViT-B/32 (projection 512, patch 32)")
    ids = torch.full((1, 77), 49407, dtype=torch.long)
    ids[0, 0] = 49406
    with torch.no_grad():
        common.export(Image(model), (torch.zeros(1, 3, 224, 224),), os.path.join(a.out, "clip_b32_image.onnx"),
                      ["pixel_values"], ["image_embeds"])
        common.export(Text(model), (ids,), os.path.join(a.out, "clip_b32_text.onnx"), ["input_ids"], ["text_embeds"])
    tok = common.copy_tokenizer_file(a.repo, "merges.txt", a.out, "clip_merges.txt")
    common.update_manifest(a.out, "clip_b32_image", "clip_b32_image.onnx")
    common.update_manifest(a.out, "clip_b32_text", "clip_b32_text.onnx", tokenizer=tok)


if __name__ == "__main__":
    main()
