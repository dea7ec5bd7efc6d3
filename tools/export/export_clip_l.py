#!/usr/bin/env python3
"""CLIP-L text encoder (FLUX's text_encoder) -> clip_l_text.onnx and the BPE merges file.

Contract: input "input_ids" int64 (1, 77) -> output "pooled" float32 (1, 768): the final-layer-norm state of the
first end-of-text token (Hugging Face CLIPTextModel.pooler_output), which FLUX feeds to vector_in.
The merges file is Hugging Face's merges.txt: the same merges as OpenAI's bpe_simple_vocab_16e6.txt; the C# tokenizer
derives the 49,408-entry vocabulary from it exactly as CLIP does.

  python export_clip_l.py --repo black-forest-labs/FLUX.1-dev --subfolder text_encoder --out models/
  python export_clip_l.py --repo openai/clip-vit-large-patch14 --subfolder "" --tokenizer-subfolder "" --out models/
"""
import argparse
import os

import torch
from transformers import CLIPTextModel

import common


class Pooled(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids=input_ids).pooler_output.float()  # (1, 768)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", default="black-forest-labs/FLUX.1-dev")
    p.add_argument("--subfolder", default="text_encoder")
    p.add_argument("--tokenizer-subfolder", default="tokenizer")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)

    model = CLIPTextModel.from_pretrained(a.repo, subfolder=a.subfolder or None, torch_dtype=torch.float32)
    if model.config.hidden_size != 768:
        raise SystemExit(f"expected CLIP-L text (hidden 768), got {model.config.hidden_size}")
    ids = torch.full((1, 77), 49407, dtype=torch.long)
    ids[0, 0] = 49406
    with torch.no_grad():
        common.export(Pooled(model), (ids,), os.path.join(a.out, "clip_l_text.onnx"), ["input_ids"], ["pooled"])
    tok = common.copy_tokenizer_file(a.repo, "merges.txt", a.out, "clip_merges.txt", a.tokenizer_subfolder or None)
    common.update_manifest(a.out, "clip_l", "clip_l_text.onnx", tokenizer=tok)


if __name__ == "__main__":
    main()
