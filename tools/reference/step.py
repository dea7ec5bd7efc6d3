#!/usr/bin/env python3
"""One training step of the reference: forward, MSE loss, autograd gradients of every LoRA factor.

Same contract as the engine's `metalora debug step`:
  --model   W.safetensors (BFL layout) or random:<preset>:<seed> (presets: flux-dev, flux-schnell, tiny)
  --inputs  IN.safetensors: img (B, L_img, in), img_ids (B, L_img, 3), txt (B, L_txt, ctx),
            txt_ids (B, L_txt, 3), timesteps (B), y (B, vec), guidance (B), target (B, L_img, out)
  --lora    L.safetensors: three-factor (.lora_down/.lora_mid/.lora_up.weight) or standard
            (.lora_A/.lora_B.weight) factors under diffusers names (see flux_ref.lora_targets)
  --out     OUT.safetensors: output (B, L_img, out), loss [] = mean((output - target)^2),
            grad.<K> for every factor key K of the LoRA file. Everything written as F32.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flux_ref  # noqa: E402
import st  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}
INPUT_KEYS = ("img", "img_ids", "txt", "txt_ids", "timesteps", "y", "guidance", "target")


def load_inputs(path, device):
    arrays, _ = st.read(path, mmap=False)
    missing = [k for k in INPUT_KEYS if k not in arrays and k != "guidance"]
    if missing:
        raise ValueError(f"{path}: missing inputs {missing}")
    return {k: torch.from_numpy(arrays[k].copy()).to(device) for k in INPUT_KEYS if k in arrays}


def run_step(model, inputs, lora_params):
    """Forward + backward. lora_params: file key -> Parameter already attached to the model."""
    for p in lora_params.values():
        p.grad = None
    x = inputs
    out = model(x["img"], x["img_ids"], x["txt"], x["txt_ids"], x["timesteps"], x["y"], x.get("guidance"))
    ct = torch.float64 if out.dtype == torch.float64 else torch.float32
    loss = torch.mean((out.to(ct) - x["target"].to(ct)) ** 2)
    loss.backward()
    result = {"output": out.detach(), "loss": loss.detach()}
    for k, p in lora_params.items():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        result["grad." + k] = g.detach()
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--lora", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    ap.add_argument("--recompute", action="store_true", help="per-block activation recompute (less memory)")
    a = ap.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    if a.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # an fp32 reference means fp32 GEMMs
        torch.backends.cudnn.allow_tf32 = False
    t0 = time.time()
    model = flux_ref.load_model(a.model, a.device, DTYPES[a.dtype])
    model.requires_grad_(False)
    model.recompute = a.recompute
    inputs = load_inputs(a.inputs, a.device)
    if a.dtype == "fp64":
        # the fp64 oracle computes everything in fp64, the timestep embedding included (fp32 inputs widen exactly)
        inputs = {k: v.to(torch.float64) for k, v in inputs.items()}
    lora_arrays, _ = st.read(a.lora, mmap=False)
    params = flux_ref.attach_lora(model, lora_arrays, device=a.device)
    t1 = time.time()
    result = run_step(model, inputs, params)
    if a.device == "cuda":
        torch.cuda.synchronize()
    t2 = time.time()
    st.write(a.out, {k: v.float() for k, v in result.items()}, "F32",
             metadata={"model": a.model, "dtype": a.dtype, "device": a.device, "torch": torch.__version__})
    print(f"loss {result['loss'].item():.8g}  factors {len(params)}  load {t1 - t0:.2f}s  step {t2 - t1:.2f}s  -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
