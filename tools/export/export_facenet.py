#!/usr/bin/env python3
"""facenet-pytorch InceptionResnetV1 trained on VGGFace2 (the paper's FaceSim embedder) -> facenet_vggface2.onnx.

Contract: input "input" float32 (1, 3, 160, 160), RGB, (x - 127.5) / 128 (facenet-pytorch's
fixed_image_standardization) -> output "embedding" float32 (1, 512), L2-normalised by the model itself.

  pip install --no-deps facenet-pytorch==2.6.0
  python export_facenet.py --out models/
"""
import argparse
import os

import torch

import common


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    from facenet_pytorch import InceptionResnetV1  # downloads the vggface2 weights on first use

    model = InceptionResnetV1(pretrained="vggface2", classify=False).eval()
    with torch.no_grad():
        common.export(model, (torch.zeros(1, 3, 160, 160),), os.path.join(a.out, "facenet_vggface2.onnx"), ["input"], ["embedding"])
    common.update_manifest(a.out, "face_embedder", "facenet_vggface2.onnx", kind="facenet")


if __name__ == "__main__":
    main()
