#!/usr/bin/env bash
# The GPU verification suite, stage by stage in groups (tools/gpu/first-contact.sh is the one-command version that
# fits a single short loan). Run from the repository root on the GPU machine, with publish/linux-x64 (from
# tools/gpu/publish.sh) carried there. Needs no .NET SDK; python3 with PyTorch 2.x (CUDA) for the reference and
# the PyTorch benchmark. Every stage prints a header, runs under a time limit, and a failing stage does not stop
# the next ones; a summary closes the log. Everything goes to "$OUT/gpu-suite.log" (OUT defaults to ./gpu-out).
#
# Environment: OUT, METALORA (default publish/linux-x64/metalora), PYTHON (default python3), SEED (default 1),
# SKIP (space-separated stage names to skip, e.g. "bench-1024 torch-1024"), ONLY (run just these stages).
# A lent GPU machine allows 10 minutes per command, so run the suite in groups, e.g.
#   ONLY="doctor kernels check-cuda"                       (parity, the playground's too: the most important)
#   ONLY="bench-1024 torch-1024 bench-1024-mma"            (speed at 1024², side by side in one call)
#   ONLY="bench-512 torch-512 bench-512-mma kernels-bench"
#   ONLY="ref-case ref-torch-fp32 ref-torch-bf16 ref-engine ref-compare"
# The log is appended to, so the groups of one session end up in one file.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-./gpu-out}
METALORA=${METALORA:-publish/linux-x64/metalora}
PYTHON=${PYTHON:-python3}
SEED=${SEED:-1}
SKIP=${SKIP:-}
ONLY=${ONLY:-}
mkdir -p "$OUT"
LOG="$OUT/gpu-suite.log"
exec > >(tee -a "$LOG") 2>&1

CASE="$OUT/dev512"
R=tools/reference
declare -a SUMMARY=()
FAILED=0

# stage NAME SECONDS COMMAND...
stage() {
    local name=$1 limit=$2; shift 2
    echo
    echo "==================================================================== $name"
    echo "\$ $*   (time limit ${limit}s, $(date -u +%H:%M:%SZ))"
    if [[ " $SKIP " == *" $name "* ]] || [[ -n "$ONLY" && " $ONLY " != *" $name "* ]]; then
        echo "skipped (SKIP)"
        SUMMARY+=("$(printf '%-16s %-8s %6s' "$name" SKIPPED -)")
        return 0
    fi
    local start=$SECONDS rc
    timeout --kill-after=30 "$limit" "$@"
    rc=$?
    local took=$((SECONDS - start)) status=ok
    if [[ $rc -eq 124 || $rc -eq 137 ]]; then status=TIMEOUT; elif [[ $rc -ne 0 ]]; then status="FAIL($rc)"; fi
    [[ $status == ok ]] || FAILED=$((FAILED + 1))
    echo "---- $name: $status in ${took}s"
    SUMMARY+=("$(printf '%-16s %-8s %5ss' "$name" "$status" "$took")")
}

# `metalora bench` may not be in this build: its stages are then skipped with a clear log line.
if "$METALORA" bench --help > /dev/null 2>&1; then HAVE_BENCH=1; else HAVE_BENCH=0; fi
bench_stage() {
    local name=$1 limit=$2; shift 2
    if [[ $HAVE_BENCH == 1 ]]; then stage "$name" "$limit" env ${ATTN:+METALORA_ATTENTION=$ATTN} "$METALORA" bench "$@"; return; fi
    echo
    echo "==================================================================== $name"
    echo "metalora bench: not available in this build of $METALORA ('metalora bench --help' fails); stage skipped"
    SUMMARY+=("$(printf '%-16s %-8s %6s' "$name" ABSENT -)")
}

echo "GPU suite: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname); metalora=$METALORA python=$PYTHON seed=$SEED out=$OUT"
git log -1 --format='commit %H %s' 2>/dev/null || true
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi not available"
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1 || true
if [[ ! -x "$METALORA" ]]; then echo "error: $METALORA is missing; publish with tools/gpu/publish.sh and carry publish/linux-x64"; fi

# 1. the machine, the kernels, the parity checks (--dev: the kernel playground's versions too, kernels/dev/README.md)
stage doctor 120 "$METALORA" doctor
stage kernels 120 "$METALORA" kernels build --arch device --dev
stage check-cuda 420 env METALORA_SYNC_CHECK=1 METALORA_POISON_EMPTY=1 "$METALORA" check cuda --dev --json "$OUT/check-cuda.json"

# 2. the engine against the independent PyTorch reference at the FLUX.1-dev shape, 512² (1,024 image + 512 text
#    tokens), docs/REFERENCE_CHECK.md: the engine's bf16 result vs the fp32 reference, tolerance per tensor
#    max(1e-4, 2 × PyTorch's own bf16 error).
stage ref-case 120 "$PYTHON" $R/make_case.py --preset flux-dev --seed "$SEED" --out "$CASE" --batch 1 --img 32x32 --txt 512 --r1 16 --r2 1 --no-model
stage ref-torch-fp32 300 "$PYTHON" $R/step.py --model "random:flux-dev:$SEED" --inputs "$CASE/inputs.safetensors" --lora "$CASE/lora.safetensors" \
    --out "$CASE/ref_fp32.safetensors" --device cuda --dtype fp32 --recompute
stage ref-torch-bf16 200 "$PYTHON" $R/step.py --model "random:flux-dev:$SEED" --inputs "$CASE/inputs.safetensors" --lora "$CASE/lora.safetensors" \
    --out "$CASE/ref_bf16.safetensors" --device cuda --dtype bf16
stage ref-engine 300 "$METALORA" debug step --model "random:flux-dev:$SEED" --inputs "$CASE/inputs.safetensors" --lora "$CASE/lora.safetensors" \
    --out "$CASE/engine_cuda.safetensors" --device cuda
stage ref-compare 60 "$PYTHON" $R/compare.py "$CASE/engine_cuda.safetensors" "$CASE/ref_fp32.safetensors" \
    --baseline "$CASE/ref_bf16.safetensors" --factor 2 --strict --quiet

# 3. speed: the engine and PyTorch at 512² and 1024²
#    (bench-*-mma: the same with the playground's tensor-core attention kernels, forward and backward;
#    kernels-bench: single kernels at FLUX.1-dev's sizes, every version side by side, outputs checked)
ATTN= bench_stage bench-512 280 --resolution 512 --recompute off
stage torch-512 200 "$PYTHON" tools/bench/torch_reference.py --resolution 512 --json
ATTN=mma bench_stage bench-512-mma 200 --resolution 512 --recompute off
ATTN= bench_stage bench-1024 280 --resolution 1024 --recompute off
stage torch-1024 200 "$PYTHON" tools/bench/torch_reference.py --resolution 1024 --json
ATTN=mma bench_stage bench-1024-mma 200 --resolution 1024 --recompute off
stage kernels-bench 120 "$METALORA" kernels bench --dev

echo
echo "==================================================================== summary"
printf '%-16s %-8s %6s\n' stage status time
for line in "${SUMMARY[@]}"; do echo "$line"; done
echo "$FAILED stage(s) failed; log: $LOG; parity report: $OUT/check-cuda.json"
[[ $FAILED -eq 0 ]]
