#!/usr/bin/env python3
"""The closing table and JSON of tools/gpu/first-contact.sh (standard library only).

Reads the stage outcomes (a TSV of name, status, seconds, limit), OUT/check-cuda.json (metalora check cuda --json),
OUT/bench-512.json and OUT/bench-1024-mma.json (metalora bench --json), OUT/torch.jsonl (torch_reference.py
--json, one configuration per line) and WORK/compare-{scalar,mma}.txt (compare.py's output), prints

  stages:  every stage with its status, time and limit
  checks:  every parity check with its worst error, the tolerance and the result; the reference comparisons
  speed:   ms/step, TFLOP/s and peak GiB for ours and for PyTorch eager and compiled at 512² and 1024², and the
           ratios (PyTorch's ms / ours: above 1 means we are faster)

and writes OUT/first-contact.json with the same content. Exit 0 when every stage passed (in a dry run, `check cuda`
finding no GPU counts as expected), else 1.
"""
import argparse
import json
import os
import re
import sys


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def load_lines(path):
    rows = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        rows.append(json.loads(line))
                    except ValueError:
                        pass
    except OSError:
        pass
    return rows


def read_stages(path):
    stages = []
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 4:
                stages.append({"stage": parts[0], "status": parts[1], "seconds": int(parts[2]), "limit": int(parts[3])})
    return stages


COMPARE_LINE = re.compile(r"^(PASS|FAIL): (\d+) compared, (\d+) over (?:tolerance|rtol \S+), (\d+)\+(\d+) unmatched, "
                          r"worst rel_l2 (\S+) \((.*)\)")


def read_compare(path):
    """compare.py's summary line: PASS/FAIL, counts and the worst relative L2 error."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        m = COMPARE_LINE.match(line)
        if m:
            return {"pass": m.group(1) == "PASS", "compared": int(m.group(2)), "over": int(m.group(3)),
                    "unmatched": int(m.group(4)) + int(m.group(5)), "worst_rel_l2": float(m.group(6)), "worst": m.group(7),
                    "failing": [l.split()[1] for l in lines if l.startswith("FAIL ")][:10]}
    return None


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def speed_rows(out):
    """(label, figures) for ours and PyTorch at each resolution."""
    rows = []
    for name, res, attn in (("bench-512.json", 512, "default attention"), ("bench-1024-mma.json", 1024, "tensor-core attention")):
        b = load_json(os.path.join(out, name))
        rows.append({"engine": "metalora", "mode": attn, "resolution": res,
                     "train_ms": b and b.get("train_ms_median"), "train_tflops": b and b.get("train_tflops"),
                     "peak_gib": b and b.get("peak_gib")})
    for t in load_lines(os.path.join(out, "torch.jsonl")):
        rows.append({"engine": "torch", "mode": t.get("mode"), "resolution": t.get("resolution"),
                     "train_ms": t.get("train_ms_median"), "train_tflops": t.get("train_tflops"), "peak_gib": t.get("peak_gib")})
    for r in rows:
        if r["engine"] != "metalora":
            continue
        for mode in ("eager", "compiled"):
            t = next((x for x in rows if x["engine"] == "torch" and x["mode"] == mode and x["resolution"] == r["resolution"]), None)
            r[f"speedup_vs_torch_{mode}"] = (round(t["train_ms"] / r["train_ms"], 3)
                                             if t and t["train_ms"] and r["train_ms"] else None)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", required=True, help="TSV of stage, status, seconds, limit")
    ap.add_argument("--out", required=True, help="the folder with check-cuda.json, bench-*.json, torch.jsonl")
    ap.add_argument("--work", required=True, help="the folder with compare-*.txt")
    ap.add_argument("--dry-run", default="0")
    a = ap.parse_args(argv)
    dry = a.dry_run == "1"

    stages = read_stages(a.stages)
    check = load_json(os.path.join(a.out, "check-cuda.json"))
    compares = {attn: read_compare(os.path.join(a.work, f"compare-{attn}.txt")) for attn in ("scalar", "mma")}
    speed = speed_rows(a.out)

    def expected(s):
        if s["status"] in ("ok", "ABSENT"):
            return True
        # no GPU here: check cuda exits 2 by design (its JSON says why)
        return dry and s["stage"] == "check-cuda" and s["status"] == "FAIL(2)"

    failed = [s["stage"] for s in stages if not expected(s)]

    print(f"{'stage':<16} {'status':<10} {'time':>6} {'limit':>6}")
    for s in stages:
        print(f"{s['stage']:<16} {s['status']:<10} {s['seconds']:>5}s {s['limit']:>5}s")
    print(f"total {sum(s['seconds'] for s in stages)}s")

    print()
    checks = (check or {}).get("checks", [])
    if check is None:
        print("checks: no check-cuda.json (the stage did not get to write it)")
    else:
        print(f"checks on {check.get('device')}: {sum(c['pass'] for c in checks)} of {len(checks)} passed")
        print(f"{'check':<52} {'error':>10} {'allowed':>10} {'baseline':>10}  result")
        for c in checks:
            print(f"{c['name']:<52} {fmt(c.get('error'), '.2e'):>10} {fmt(c.get('allowed'), '.2e'):>10} "
                  f"{fmt(c.get('baseline'), '.2e'):>10}  {'PASS' if c['pass'] else 'FAIL ' + (c.get('failure') or '')}")
    for attn, c in compares.items():
        name = f"reference 512² ({attn} attention)"
        if c is None:
            print(f"{name:<52} {'-':>10} {'-':>10} {'-':>10}  no result")
        else:
            print(f"{name:<52} {c['worst_rel_l2']:>10.2e} {'per tensor':>10} {'torch bf16':>10}  "
                  f"{'PASS' if c['pass'] else 'FAIL'} ({c['compared']} tensors, {c['over']} over, worst {c['worst']})")

    print()
    print(f"{'speed':<40} {'ms/step':>10} {'TFLOP/s':>8} {'peak GiB':>9} {'x eager':>8} {'x compiled':>10}")
    for r in speed:
        label = f"{r['engine']} {r['resolution']}² {r['mode']}"
        extra = (f" {fmt(r.get('speedup_vs_torch_eager'), '.2f'):>8} {fmt(r.get('speedup_vs_torch_compiled'), '.2f'):>10}"
                 if r["engine"] == "metalora" else "")
        print(f"{label:<40} {fmt(r['train_ms'], '.1f'):>10} {fmt(r['train_tflops'], '.1f'):>8} {fmt(r['peak_gib'], '.1f'):>9}{extra}")
    print("(x eager, x compiled: PyTorch's ms/step divided by ours at the same resolution; above 1 we are faster)")

    summary = {"dry_run": dry, "pass": not failed, "failed_stages": failed, "stages": stages,
               "device": (check or {}).get("device"),
               "checks": [{k: c.get(k) for k in ("group", "name", "error", "allowed", "baseline", "pass", "failure", "seconds")}
                          for c in checks],
               "reference": compares, "speed": speed}
    path = os.path.join(a.out, "first-contact.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=1)
    print(f"\n{'PASS' if not failed else 'FAIL: ' + ', '.join(failed)}; wrote {path}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
