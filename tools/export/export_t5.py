#!/usr/bin/env python3
"""T5-XXL encoder (FLUX's text_encoder_2) -> t5_encoder.onnx (+ t5_encoder.onnx.data) and spiece.model.

Contract: input "input_ids" int64 (1, 512) -> output "last_hidden_state" float32 (1, 512, 4096).
Weights default to fp16 (about 9.5 GB); inputs/outputs stay fp32/int64. T5 v1.1 is known to overflow in pure fp16;
Hugging Face's T5 clamps activations in fp16, and `--dtype fp32` (19 GB) avoids the question entirely.

  python export_t5.py --repo black-forest-labs/FLUX.1-dev --subfolder text_encoder_2 --out models/
  python export_t5.py --repo google/t5-v1_1-xxl --out models/
"""
import argparse
import os

import torch
from transformers import T5EncoderModel

import common


class Encoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        # (1, 512) -> (1, 512, 4096); no attention mask, as FLUX feeds T5 (padding positions are attended).
        return self.model(input_ids=input_ids).last_hidden_state.float()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", default="black-forest-labs/FLUX.1-dev", help="Hub repo or local folder")
    p.add_argument("--subfolder", default="text_encoder_2", help="model subfolder ('' for a plain T5 repo)")
    p.add_argument("--tokenizer-subfolder", default="tokenizer_2", help="subfolder holding spiece.model ('' for a plain T5 repo)")
    p.add_argument("--dtype", choices=["fp16", "fp32"], default="fp16")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)

    model = T5EncoderModel.from_pretrained(a.repo, subfolder=a.subfolder or None, torch_dtype=torch.float32)
    if model.config.d_model != 4096:
        raise SystemExit(f"expected T5-XXL (d_model 4096), got d_model {model.config.d_model}")
    path = os.path.join(a.out, "t5_encoder.onnx")
    ids = torch.zeros((1, 512), dtype=torch.long)
    with torch.no_grad():
        common.export(Encoder(model), (ids,), path, ["input_ids"], ["last_hidden_state"])
    if a.dtype == "fp16":
        common.to_fp16_weights(path)
    tok = common.copy_tokenizer_file(a.repo, "spiece.model", a.out, "spiece.model", a.tokenizer_subfolder or None)
    common.update_manifest(a.out, "t5", "t5_encoder.onnx", tokenizer=tok)


if __name__ == "__main__":
    main()
