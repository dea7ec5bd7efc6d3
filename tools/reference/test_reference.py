#!/usr/bin/env python3
"""Self-test of the PyTorch reference. Run: python3 tools/reference/test_reference.py

Checks: the named generator (spec in pure Python ints, numpy, torch), safetensors round trips and
header errors, config detection, the LoRA target table, RoPE relative-position property, autograd
gradients against central finite differences in float64, standard LoRA (A = M D, B = U) against
three-factor, and a step.py round trip on a tiny case. Last line: "N passed, M failed".
"""
import math
import os
import sys
import tempfile
import time
import traceback

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import compare  # noqa: E402
import flux_ref  # noqa: E402
import make_case  # noqa: E402
import randgen  # noqa: E402
import st  # noqa: E402
import step  # noqa: E402

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


def close(a, b, rtol, what):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    err = np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)
    assert err <= rtol, f"{what}: relative error {err:.3e} > {rtol:g}"
    return err


# ---------------------------------------------------------------------------- generator

def spec_value(name, seed, i):
    """The generator spec with Python ints, one element: w in [-1, 1)."""
    m = (1 << 64) - 1
    z = (randgen.tensor_key(name, seed) + i) & m
    z = (z + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    z ^= z >> 31
    return 2.0 * ((z >> 40) / 2.0 ** 24) - 1.0


@test
def generator_known_values():
    assert randgen.fnv1a64(b"") == 0xcbf29ce484222325
    assert randgen.fnv1a64(b"a") == 0xaf63dc4c8601ec8c
    assert randgen.fnv1a64(b"foobar") == 0x85944171f73967e8
    # splitmix64 from state 0: first output is the well-known 0xe220a8397b1dcdaf
    name = "x"
    key = randgen.tensor_key(name, 0)
    w = randgen.uniform_np(name, 0, 1, start=(-key) & ((1 << 64) - 1))  # key + i == 0
    assert w[0] == np.float32(2.0 * ((0xe220a8397b1dcdaf >> 40) / 2.0 ** 24) - 1.0)


@test
def generator_numpy_matches_spec():
    for name, seed, idx in [("img_in.weight", 0, [0, 1, 2, 4095]), ("double_blocks.3.txt_mlp.0.bias", 7, [0, 11]),
                            ("single_blocks.37.linear1.weight", 12345678901, [0, 10 ** 9, 2 ** 40 + 3])]:
        for i in idx:
            assert randgen.uniform_np(name, seed, 1, start=i)[0] == np.float32(spec_value(name, seed, i)), (name, i)


@test
def generator_torch_matches_numpy():
    cases = [("double_blocks.0.img_attn.qkv.weight", (192, 64), 3), ("img_in.bias", (64,), 3),
             ("single_blocks.1.norm.key_norm.scale", (16,), 9), ("final_layer.linear.weight", (64, 3072), 2 ** 33)]
    for name, shape, seed in cases:
        ref = randgen.tensor_np(name, shape, seed)
        for dtype, chunk in [(torch.float32, 1000), (torch.float32, 1 << 24), (torch.bfloat16, 777)]:
            t = torch.empty(shape, dtype=dtype)
            randgen.fill_(t, name, seed, chunk=chunk)
            want = torch.from_numpy(ref).to(dtype)
            assert torch.equal(t, want), (name, dtype, chunk)
    # value rules
    w = randgen.uniform_np("a.weight", 1, 6)
    assert np.array_equal(randgen.tensor_np("a.weight", (2, 3), 1).ravel(), w * np.float32(1 / math.sqrt(3)))
    assert np.array_equal(randgen.tensor_np("a.bias", (6,), 1), np.float32(0.02) * randgen.uniform_np("a.bias", 1, 6))
    assert np.array_equal(randgen.tensor_np("a.scale", (6,), 1),
                          np.float32(1) + np.float32(0.1) * randgen.uniform_np("a.scale", 1, 6))
    assert w.min() >= -1 and w.max() < 1 and abs(float(w.mean())) < 1


# ---------------------------------------------------------------------------- files and config

@test
def safetensors_round_trip_and_errors():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5)).astype(np.float32)
    with tempfile.TemporaryDirectory() as d:
        for dt, tol in [("F32", 0), ("F16", 1e-3), ("BF16", 4e-3)]:
            p = os.path.join(d, f"t{dt}.safetensors")
            st.write(p, {"x": x, "s": np.float32(2.5)}, dt, metadata={"k": "v"})
            back, meta = st.read(p)
            assert meta == {"k": "v"} and back["s"].shape == () and float(back["s"]) == 2.5
            assert np.max(np.abs(back["x"] - x) / (np.abs(x) + 1e-3)) <= tol + 1e-7, dt
        # bf16 rounding: to nearest even on the upper half
        bits = st.f32_to_bf16_bits(np.array([1.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -2.0], np.float32))
        assert list(st.bf16_bits_to_f32(bits)) == [1.0, 1.0, 1.0 + 2 ** -6, -2.0]
        p = os.path.join(d, "bad.safetensors")
        good = open(os.path.join(d, "tF32.safetensors"), "rb").read()
        for blob, msg in [(good[:4], "8-byte"), (good[:-4], "outside"), (b"\xff" * 8 + good[8:], "header size")]:
            open(p, "wb").write(blob)
            try:
                st.read(p)
                raise AssertionError("no error for " + msg)
            except st.SafetensorsError as e:
                assert msg in str(e), str(e)


@test
def config_detection_and_targets():
    for preset in ("tiny", "flux-dev", "flux-schnell"):
        cfg = flux_ref.PRESETS[preset]
        shapes = flux_ref.parameter_shapes(cfg)
        got = flux_ref.detect_config(shapes, flux_ref.config_metadata(cfg))
        assert got == cfg, (preset, got)
    dev = flux_ref.PRESETS["flux-dev"]
    n = sum(int(np.prod(s)) for s in flux_ref.parameter_shapes(dev).values())
    assert 11.8e9 < n < 12.0e9, n
    targets = flux_ref.lora_targets(dev)
    assert len(targets) == 494
    # the q/k/v/proj_mlp slices tile single_blocks.i.linear1 exactly; q/k/v tile each fused qkv
    rows = sorted((r0, r1) for k, (lin, r0, r1) in targets.items() if lin == "single_blocks.5.linear1")
    assert rows == [(0, 3072), (3072, 6144), (6144, 9216), (9216, 21504)]
    rows = sorted((r0, r1) for k, (lin, r0, r1) in targets.items() if lin == "double_blocks.2.txt_attn.qkv")
    assert rows == [(0, 3072), (3072, 6144), (6144, 9216)]
    assert targets["transformer.transformer_blocks.0.attn.add_v_proj"] == ("double_blocks.0.txt_attn.qkv", 6144, 9216)


@test
def rope_depends_on_relative_position():
    cfg = flux_ref.PRESETS["tiny"]
    D = cfg.head_dim
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 1, 1, D, generator=g, dtype=torch.float64), torch.randn(1, 1, 1, D, generator=g,
                                                                                   dtype=torch.float64)

    def score(pq, pk):
        ids = torch.tensor([[pq, pk]], dtype=torch.float64)
        cos, sin = flux_ref.rope_tables(ids, cfg.axes_dim, cfg.theta, torch.float64)
        rq = flux_ref.apply_rope(q, cos[:, :, :1], sin[:, :, :1])
        rk = flux_ref.apply_rope(k, cos[:, :, 1:], sin[:, :, 1:])
        assert abs(float(rq.norm() - q.norm())) < 1e-12  # a rotation
        return float((rq * rk).sum())

    a = score([0, 2, 3], [0, 5, 1])
    b = score([0, 7, 10], [0, 10, 8])
    c = score([0, 2, 3], [0, 5, 2])
    assert abs(a - b) < 1e-10 and abs(a - c) > 1e-6, (a, b, c)


# ---------------------------------------------------------------------------- model and gradients

def tiny_case(seed=3, batch=2, grid=(3, 3), txt=4, dtype=torch.float64):
    cfg = flux_ref.PRESETS["tiny"]
    model = flux_ref.random_model("tiny", seed, dtype=dtype)
    model.requires_grad_(False)
    x = make_case.make_inputs(cfg, seed, batch, grid[0], grid[1], txt)
    return cfg, model, {k: torch.from_numpy(v) for k, v in x.items()}


def loss_of(model, x):
    out = model(x["img"], x["img_ids"], x["txt"], x["txt_ids"], x["timesteps"], x["y"], x["guidance"])
    return torch.mean((out.double() - x["target"].double()) ** 2), out


@test
def gradients_match_finite_differences():
    cfg, model, x = tiny_case()
    lora = flux_ref.random_lora(cfg, 4, 2, seed=11)
    params = flux_ref.attach_lora(model, lora, dtype=torch.float64)
    loss, _ = loss_of(model, x)
    loss.backward()
    picks = [("transformer.transformer_blocks.0.attn.to_q.lora_down.weight", (1, 5)),
             ("transformer.transformer_blocks.1.attn.add_k_proj.lora_mid.weight", (0, 3)),
             ("transformer.transformer_blocks.0.norm1_context.linear.lora_up.weight", (200, 1)),
             ("transformer.transformer_blocks.1.ff_context.net.2.lora_down.weight", (2, 100)),
             ("transformer.transformer_blocks.0.attn.to_out.0.lora_up.weight", (7, 0)),
             ("transformer.single_transformer_blocks.0.proj_mlp.lora_up.weight", (30, 1)),
             ("transformer.single_transformer_blocks.1.attn.to_v.lora_mid.weight", (1, 2)),
             ("transformer.single_transformer_blocks.1.proj_out.lora_down.weight", (3, 250)),
             ("transformer.single_transformer_blocks.0.norm.linear.lora_down.weight", (0, 9))]
    eps, worst = 1e-5, 0.0
    with torch.no_grad():
        for key, idx in picks:
            p = params[key]
            old = p[idx].item()
            p[idx] = old + eps
            lp, _ = loss_of(model, x)
            p[idx] = old - eps
            lm, _ = loss_of(model, x)
            p[idx] = old
            fd = (lp.item() - lm.item()) / (2 * eps)
            ad = p.grad[idx].item()
            # loss ~1, eps 1e-5: rounding in the quotient ~1e-11, truncation O(eps^2); gradients here are 1e-7..1e-3
            assert abs(fd - ad) <= 1e-5 * abs(ad) + 2e-11, f"{key}{idx}: autograd {ad:.9e} vs fd {fd:.9e}"
            assert abs(ad) > 1e-8, f"{key}{idx}: gradient {ad:.3e} too small to test"
            worst = max(worst, abs(fd - ad) / abs(ad))
    print(f"  finite differences: {len(picks)} entries, worst relative error {worst:.2e}")
    assert all(float(p.grad.abs().min()) > 0 for p in params.values()), "some gradient entry is exactly zero"


@test
def standard_lora_equals_merged_three_factor():
    cfg, model, x = tiny_case(seed=4)
    three = flux_ref.random_lora(cfg, 4, 2, seed=12)
    p3 = flux_ref.attach_lora(model, three, dtype=torch.float64)
    l3, out3 = loss_of(model, x)
    l3.backward()
    flux_ref.detach_lora(model)
    std = {}
    for prefix in flux_ref.lora_targets(cfg):
        d, m, u = (three[f"{prefix}.{s}.weight"].astype(np.float64) for s in ("lora_down", "lora_mid", "lora_up"))
        std[f"{prefix}.lora_A.weight"], std[f"{prefix}.lora_B.weight"] = m @ d, u
    ps = flux_ref.attach_lora(model, std, dtype=torch.float64)
    ls, outs = loss_of(model, x)
    ls.backward()
    close(outs.detach(), out3.detach(), 1e-10, "output")
    # dL/dB = dL/dU and dL/dA D^T = dL/dM
    for prefix in list(flux_ref.lora_targets(cfg))[::7]:
        gU, gM = p3[f"{prefix}.lora_up.weight"].grad, p3[f"{prefix}.lora_mid.weight"].grad
        gB, gA = ps[f"{prefix}.lora_B.weight"].grad, ps[f"{prefix}.lora_A.weight"].grad
        D = p3[f"{prefix}.lora_down.weight"].detach()
        close(gB, gU, 1e-9, prefix + " dB")
        close(gA @ D.T, gM, 1e-9, prefix + " dA")
    # a zero up factor leaves the base model unchanged
    flux_ref.detach_lora(model)
    _, outb = loss_of(model, x)
    zero = {k: (np.zeros_like(v) if k.endswith("lora_up.weight") else v) for k, v in three.items()}
    flux_ref.attach_lora(model, zero, dtype=torch.float64)
    _, outz = loss_of(model, x)
    close(outz.detach(), outb.detach(), 1e-12, "zero-up output")


@test
def sdpa_and_manual_attention_agree():
    if not hasattr(torch.nn.functional, "scaled_dot_product_attention"):
        return  # PyTorch 1.x: only the manual path exists
    cfg, model, x = tiny_case(seed=5)
    _, a = loss_of(model, x)
    flux_ref.USE_SDPA = False
    try:
        _, b = loss_of(model, x)
    finally:
        flux_ref.USE_SDPA = True
    close(a.detach(), b.detach(), 1e-10, "attention paths")


@test
def lora_file_errors_are_reported():
    cfg, model, _ = tiny_case(seed=6, dtype=torch.float32)
    lora = flux_ref.random_lora(cfg, 4, 2, seed=1, targets={"transformer.transformer_blocks.0.attn.to_q"})
    for bad, msg in [({"transformer.transformer_blocks.0.attn.to_qq.lora_A.weight": np.zeros((1, 64))}, "no FLUX target"),
                     ({"transformer.transformer_blocks.0.attn.to_q.alpha": np.zeros(())}, "not understood"),
                     ({k: v for k, v in lora.items() if "mid" not in k}, "incomplete"),
                     ({**lora, "transformer.transformer_blocks.0.attn.to_q.lora_up.weight": np.zeros((63, 2))}, "do not fit")]:
        try:
            flux_ref.attach_lora(model, bad)
            raise AssertionError("accepted: " + msg)
        except ValueError as e:
            assert msg in str(e), str(e)
        flux_ref.detach_lora(model)


@test
def step_round_trip():
    with tempfile.TemporaryDirectory() as d:
        make_case.main(["--preset", "tiny", "--seed", "8", "--out", d, "--img", "2x3", "--txt", "5"])
        out32, out64, outr = (os.path.join(d, n) for n in ("o32.safetensors", "o64.safetensors", "or.safetensors"))
        common = ["--inputs", os.path.join(d, "inputs.safetensors"), "--lora", os.path.join(d, "lora.safetensors")]
        assert step.main(["--model", os.path.join(d, "model.safetensors"), *common, "--out", out32]) == 0
        assert step.main(["--model", "random:tiny:8", *common, "--out", outr]) == 0
        assert step.main(["--model", "random:tiny:8", *common, "--out", out64, "--dtype", "fp64"]) == 0
        res, meta = st.read(out32)
        inp, _ = st.read(os.path.join(d, "inputs.safetensors"))
        lora, _ = st.read(os.path.join(d, "lora.safetensors"))
        assert res["output"].shape == (2, 6, 64) and res["loss"].shape == ()
        assert abs(float(res["loss"]) - float(np.mean((res["output"].astype(np.float64) - inp["target"]) ** 2))) < 1e-6
        assert set(res) == {"output", "loss"} | {"grad." + k for k in lora}
        for k in lora:
            assert res["grad." + k].shape == lora[k].shape and np.all(res["grad." + k] != 0), k
        # file model == generated model bit for bit; fp32 vs fp64 within the documented tolerance
        assert compare.compare(outr, out32, 0.0, strict=True, quiet=True)
        assert compare.compare(out32, out64, 1e-4, strict=True, quiet=True)
        # the standard-LoRA case runs too
        d2 = os.path.join(d, "std")
        make_case.main(["--preset", "tiny", "--seed", "9", "--out", d2, "--standard", "--batch", "1"])
        assert step.main(["--model", os.path.join(d2, "model.safetensors"), "--inputs", os.path.join(d2, "inputs.safetensors"),
                          "--lora", os.path.join(d2, "lora.safetensors"), "--out", os.path.join(d2, "o.safetensors")]) == 0


def main():
    torch.manual_seed(0)
    passed, failed = 0, 0
    for fn in TESTS:
        t0 = time.time()
        try:
            fn()
            passed += 1
            print(f"PASS {fn.__name__} ({time.time() - t0:.1f}s)")
        except Exception:
            failed += 1
            print(f"FAIL {fn.__name__} ({time.time() - t0:.1f}s)")
            traceback.print_exc()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
