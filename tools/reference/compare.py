#!/usr/bin/env python3
"""Compare two safetensors files tensor by tensor.

For every tensor in both files: max |a - b| and the relative L2 error ||a - b|| / ||b|| (B is the
reference; when ||b|| = 0 the error is ||a - b|| itself). Computed in float64.
Fails (exit 1) when any relative L2 error exceeds --rtol, a shape differs, or (with --strict)
a tensor is present in only one file. Missing tensors are always listed.

Tolerance rule: fp32 vs fp32 runs use rtol 1e-4 (the default). A bf16 run is compared against an
fp32 reference, never against another bf16 run: with --baseline P (PyTorch's own bf16 step on the
same inputs) each tensor's tolerance is max(rtol, --factor (2) x rel_l2(P, B)) for that tensor,
i.e. our bf16 error may be at most twice PyTorch's bf16 error.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402


def rel_l2(x, y):
    d = np.asarray(x, np.float64) - np.asarray(y, np.float64)
    ny = float(np.linalg.norm(np.asarray(y, np.float64)))
    return float(np.linalg.norm(d)) / ny if ny > 0 else float(np.linalg.norm(d))


def compare(a_path, b_path, rtol, strict=False, quiet=False, baseline=None, factor=2.0):
    a, _ = st.read(a_path, mmap=False)
    b, _ = st.read(b_path, mmap=False)
    base = st.read(baseline, mmap=False)[0] if baseline else {}
    common = sorted(set(a) & set(b))
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    worst, worst_name, failed = 0.0, None, []
    for name in common:
        x, y = np.asarray(a[name], np.float64), np.asarray(b[name], np.float64)
        if x.shape != y.shape:
            failed.append(name)
            print(f"FAIL {name}: shape {x.shape} vs {y.shape}")
            continue
        max_abs = float(np.max(np.abs(x - y))) if x.size else 0.0
        rel = rel_l2(x, y)
        tol = rtol
        if name in base:
            tol = max(rtol, factor * rel_l2(base[name], y))
        bad = not (rel <= tol)  # NaN fails too
        if bad:
            failed.append(name)
        if rel > worst or worst_name is None:
            worst, worst_name = rel, name
        if bad or not quiet:
            print(f"{'FAIL' if bad else 'ok  '} {name:<72} {str(x.shape):>16}  max_abs {max_abs:.3e}  rel_l2 {rel:.3e}"
                  + (f"  tol {tol:.2e}" if base else ""))
    for n in only_a:
        print(f"only in {a_path}: {n}")
    for n in only_b:
        print(f"only in {b_path}: {n}")
    ok = not failed and not (strict and (only_a or only_b))
    print(f"{'PASS' if ok else 'FAIL'}: {len(common)} compared, {len(failed)} over {'tolerance' if base else f'rtol {rtol:g}'}, "
          f"{len(only_a)}+{len(only_b)} unmatched, worst rel_l2 {worst:.3e} ({worst_name})")
    return ok


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="file under test")
    ap.add_argument("b", help="reference file")
    ap.add_argument("--rtol", type=float, default=1e-4, help="max relative L2 error per tensor (default 1e-4)")
    ap.add_argument("--strict", action="store_true", help="also fail when a tensor is in only one file")
    ap.add_argument("--quiet", action="store_true", help="print only failing tensors and the summary")
    ap.add_argument("--baseline", help="PyTorch's bf16 result on the same inputs: per-tensor tolerance "
                                       "max(rtol, factor x its error against B)")
    ap.add_argument("--factor", type=float, default=2.0)
    a = ap.parse_args(argv)
    return 0 if compare(a.a, a.b, a.rtol, a.strict, a.quiet, a.baseline, a.factor) else 1


if __name__ == "__main__":
    sys.exit(main())
