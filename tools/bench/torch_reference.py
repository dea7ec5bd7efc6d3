#!/usr/bin/env python3
"""PyTorch baseline for a Stage-2 Meta-LoRA training step at the full FLUX.1-dev shape.

Model: tools/reference/flux_ref.py with random bf16 weights (random:flux-dev:<seed>, generated on
the GPU), batch 1, 512 text tokens, LoRA on all 494 diffusers-granularity targets, r1 16, r2 1;
D frozen, M and U (fp32) trained with AdamW (lr 4e-4); attention through SDPA; loss = MSE in fp32.

Reports the median ms of the timed steps after warm-up (10 by default), achieved TFLOP/s, peak GiB
(torch.cuda.max_memory_allocated, weights included) and a no-grad inference forward time.

Several resolutions and both modes run in one call (--resolution 512 1024 --mode eager compiled): the weights
are generated once, every eager configuration runs first, then the blocks are compiled and every compiled one
runs. With --json each configuration prints one JSON object on its own line as soon as it is done, so a run cut
short by a time limit still leaves the finished ones.

FLOP count (model FLOPs of the base network; LoRA, embedders, modulation and final layer ignored,
recomputation not counted):
  L = L_img + L_txt, N = depth + depth_single, C hidden, m mlp hidden
  F_lin = 2 * N * L * (4 C^2 + 2 C m)      forward matmuls of all block linears
  F_att = 4 * N * L^2 * C                  forward QK^T and PV
  train step  = 2 F_lin + 3.5 F_att        (input-gradient backward only: no base weight gradients;
                                           attention backward = 2.5x its forward, as in flash attention)
  inference   = F_lin + F_att
  512^2: L = 1024 + 512 -> 45.4 TFLOP per step; 1024^2: L = 4096 + 512 -> 171 TFLOP per step.

  python3 tools/bench/torch_reference.py --resolution 512 [--recompute on|off] [--steps 10] [--compile] [--json]
  python3 tools/bench/torch_reference.py --resolution 512 1024 --mode eager compiled --steps 3 --warmup 2 --json
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
import flux_ref  # noqa: E402
import randgen  # noqa: E402


def flops(cfg, l_img, l_txt):
    L, N, C, m = l_img + l_txt, cfg.depth + cfg.depth_single, cfg.hidden, cfg.mlp_hidden
    f_lin = 2.0 * N * L * (4 * C * C + 2 * C * m)
    f_att = 4.0 * N * L * L * C
    return 2 * f_lin + 3.5 * f_att, f_lin + f_att


def make_lora(model, r1, r2, seed, device):
    """Factors for every target from the named generator, made on the device (fp32)."""
    cfg = model.cfg
    shapes = flux_ref._linear_shapes(cfg)
    tensors = {}
    for prefix, (lin, row0, row1) in flux_ref.lora_targets(cfg).items():
        for s, shp in (("lora_down", (r1, shapes[lin][1])), ("lora_mid", (r2, r1)), ("lora_up", (row1 - row0, r2))):
            k = f"{prefix}.{s}.weight"
            tensors[k] = randgen.fill_(torch.empty(shp, device=device), k, seed)
    return flux_ref.attach_lora(model, tensors, device=device, trainable={"lora_mid", "lora_up"})


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, n, device):
    times = []
    for _ in range(n):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolution", type=int, nargs="+", default=[512], help="image side(s) in pixels (512, 1024)")
    ap.add_argument("--recompute", choices=["on", "off"], default="off", help="per-block activation recompute")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="torch.compile each block (the same as --mode compiled)")
    ap.add_argument("--mode", nargs="+", choices=["eager", "compiled"], default=None,
                    help="eager and/or compiled (torch.compile per block); default eager, or compiled with --compile")
    ap.add_argument("--json", action="store_true", help="print one JSON object per configuration instead of text")
    ap.add_argument("--txt", type=int, default=512, help="text tokens")
    ap.add_argument("--r1", type=int, default=16)
    ap.add_argument("--r2", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", default="flux-dev", help="model preset (tiny: a CPU smoke test of this script)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    a = ap.parse_args(argv)
    modes = a.mode or (["compiled"] if a.compile else ["eager"])
    if a.device == "cuda" and not torch.cuda.is_available():
        print("error: this benchmark needs a CUDA GPU and torch sees none "
              f"(torch {torch.__version__}); nothing was run", file=sys.stderr)
        return 2
    if any(r % 16 for r in a.resolution):
        print(f"error: --resolution {a.resolution}: every value must be a multiple of 16", file=sys.stderr)
        return 2
    if a.steps < 1 or a.warmup < 0:
        print("error: --steps must be at least 1 and --warmup at least 0", file=sys.stderr)
        return 2
    if "compiled" in modes and not hasattr(torch, "compile"):
        print("error: --mode compiled needs PyTorch 2.x", file=sys.stderr)
        return 2
    dev, dt = a.device, torch.bfloat16
    if dev == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    t0 = time.perf_counter()
    model = flux_ref.random_model(a.preset, a.seed, device=dev, dtype=dt)
    model.requires_grad_(False)
    sync(dev)
    t_gen = time.perf_counter() - t0
    params = make_lora(model, a.r1, a.r2, a.seed + 1, dev)
    trainable = [p for p in params.values() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=4e-4)
    weights_gib = sum(p.numel() * p.element_size() for _, p in model.base_parameters()) / 2 ** 30
    cfg = model.cfg

    def run(resolution, compiled):
        model.recompute = a.recompute == "on"
        side = resolution // 16
        l_img, l_txt = side * side, a.txt
        g = torch.Generator(device=dev).manual_seed(a.seed)
        img_ids = torch.zeros(1, l_img, 3, device=dev)
        img_ids[..., 1] = torch.arange(side, device=dev).repeat_interleave(side).float()
        img_ids[..., 2] = torch.arange(side, device=dev).repeat(side).float()
        x = {"img": torch.randn(1, l_img, cfg.in_channels, device=dev, generator=g), "img_ids": img_ids,
             "txt": torch.randn(1, l_txt, cfg.context_in, device=dev, generator=g),
             "txt_ids": torch.zeros(1, l_txt, 3, device=dev), "timesteps": torch.tensor([0.6], device=dev),
             "y": torch.randn(1, cfg.vec_in, device=dev, generator=g),
             "target": torch.randn(1, l_img, cfg.out_channels, device=dev, generator=g),
             "guidance": torch.tensor([1.0], device=dev) if cfg.guidance_embed else None}

        def forward():
            return model(x["img"], x["img_ids"], x["txt"], x["txt_ids"], x["timesteps"], x["y"], x["guidance"])

        losses = []

        def train_step():
            opt.zero_grad(set_to_none=True)
            loss = torch.mean((forward().float() - x["target"]) ** 2)
            loss.backward()
            opt.step()
            losses.append(loss.detach())

        def infer():
            with torch.no_grad():
                forward()

        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(max(a.warmup, 1 if compiled else 0)):   # a compiled model compiles in its first step
            train_step()
        sync(dev)
        t_warm = time.perf_counter() - t0
        train_ms, train_all = timed(train_step, a.steps, dev)
        peak = torch.cuda.max_memory_allocated() / 2 ** 30 if dev == "cuda" else None
        model.recompute = False
        for _ in range(2):
            infer()
        infer_ms, _ = timed(infer, a.steps, dev)

        f_train, f_inf = flops(cfg, l_img, l_txt)
        return {
            "engine": "torch", "mode": "compiled" if compiled else "eager",
            "preset": a.preset, "resolution": resolution, "img_tokens": l_img, "txt_tokens": l_txt,
            "recompute": a.recompute, "compile": compiled, "targets": len(flux_ref.lora_targets(cfg)),
            "r1": a.r1, "r2": a.r2, "trainable_params": sum(p.numel() for p in trainable),
            "train_ms_median": round(train_ms, 2), "train_ms_all": [round(t, 2) for t in train_all],
            "train_tflop_per_step": round(f_train / 1e12, 2), "train_tflops": round(f_train / train_ms / 1e9, 1),
            "infer_ms_median": round(infer_ms, 2), "infer_tflops": round(f_inf / infer_ms / 1e9, 1),
            "peak_gib": round(peak, 2) if peak is not None else None, "weights_gib": round(weights_gib, 2),
            "weight_gen_s": round(t_gen, 1), "warmup_s": round(t_warm, 1),
            "loss_first": float(losses[0]), "loss_last": float(losses[-1]),
            "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__,
        }

    compiled_yet = False
    for mode in (m for m in ("eager", "compiled") if m in modes):
        if mode == "compiled" and not compiled_yet:
            from torch._dynamo import config as dynamo_config  # 57 block instances of 2 classes
            dynamo_config.cache_size_limit = max(64, dynamo_config.cache_size_limit)
            for blk in list(model.double_blocks) + list(model.single_blocks):
                blk.compile()
            compiled_yet = True
        for resolution in a.resolution:
            res = run(resolution, mode == "compiled")
            if a.json:
                print(json.dumps(res), flush=True)
            else:
                print(f"{res['device']}, torch {res['torch']}, {a.preset} bf16, {resolution}^2 ({res['img_tokens']} img + "
                      f"{res['txt_tokens']} txt tokens), {res['targets']} targets r1 {a.r1} r2 {a.r2}, "
                      f"recompute {a.recompute}, {mode}")
                print(f"train step  {res['train_ms_median']:9.1f} ms median of {a.steps}   {res['train_tflops']:7.1f} TFLOP/s "
                      f"({res['train_tflop_per_step']} TFLOP/step)   peak {res['peak_gib']} GiB (weights {weights_gib:.2f})")
                print(f"inference   {res['infer_ms_median']:9.1f} ms median of {a.steps}   {res['infer_tflops']:7.1f} TFLOP/s")
                print(f"weights generated in {t_gen:.1f} s; warm-up {res['warmup_s']:.1f} s; loss {res['loss_first']:.5f} -> "
                      f"{res['loss_last']:.5f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
