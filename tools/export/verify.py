#!/usr/bin/env python3
"""Runs every model of a models folder once in ONNX Runtime and prints input/output names and shapes.

  python verify.py models/
"""
import json
import os
import sys

import numpy as np
import onnxruntime as ort

FEEDS = {
    "t5": {"input_ids": np.zeros((1, 512), np.int64)},
    "clip_l": {"input_ids": np.full((1, 77), 49407, np.int64)},
    "vae_encoder": {"image": np.zeros((1, 3, 64, 64), np.float32)},
    "vae_decoder": {"latent": np.zeros((1, 16, 8, 8), np.float32)},
    "clip_b32_image": {"pixel_values": np.zeros((1, 3, 224, 224), np.float32)},
    "clip_b32_text": {"input_ids": np.full((1, 77), 49407, np.int64)},
    "face_detector": None,
    "face_embedder": None,
}


def main():
    folder = sys.argv[1]
    with open(os.path.join(folder, "models.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    for name, entry in manifest["components"].items():
        sess = ort.InferenceSession(os.path.join(folder, entry["model"]), providers=["CPUExecutionProvider"])
        ins = [(i.name, i.type, i.shape) for i in sess.get_inputs()]
        feeds = FEEDS.get(name)
        if feeds is None:
            feeds = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32) for i in sess.get_inputs()}
        outs = sess.run(None, feeds)
        print(f"{name}: {ins} -> {[(o.name, r.shape, str(r.dtype)) for o, r in zip(sess.get_outputs(), outs)]}")


if __name__ == "__main__":
    main()
