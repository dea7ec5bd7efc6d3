#!/usr/bin/env bash
# First contact with a GPU: ONE command that checks and measures everything the engine can be asked on a lent
# H100/H200 in well under 8 minutes. Run from the repository root with publish/linux-x64 (tools/gpu/publish.sh)
# carried; needs no .NET SDK, and python3 with PyTorch 2.x (CUDA) for the reference and the PyTorch benchmark.
#
#   OUT=./gpu-out tools/gpu/first-contact.sh         # on the GPU machine
#   DRY_RUN=1 OUT=/tmp/fc tools/gpu/first-contact.sh # here, on the CPU: tiny shapes, same stages, table and JSON
#
# Stages, most important first, each under its own `timeout` and under one overall deadline (TOTAL seconds, 450 by
# default): a stage that would run past the deadline is cut to what is left, and skipped when under 5 s are left.
#   1. machine:   nvidia-smi, metalora doctor, kernels build --arch device --dev (the images the backend loads)
#   2. parity:    check cuda --dev (every op group, LoRA on every target kind, the tiny model, Stage 2, the flux-width
#                 model at 256² and 512², tensor-core attention at 1,536 and 4,608 tokens), METALORA_SYNC_CHECK=1
#   3. bench-512: metalora bench --resolution 512 --steps 2 --launches (default attention; what a step issues)
#   4. reference: debug step at flux-dev 512² (1,024 image + 512 text tokens) with the scalar and with the
#                 tensor-core attention, each compared by tools/reference/compare.py with the PyTorch fp32 step,
#                 PyTorch's bf16 step as the baseline (docs/REFERENCE_CHECK.md)
#   5. bench-1024-mma: metalora bench --resolution 1024 --steps 2, METALORA_ATTENTION=mma
#   6. torch:     tools/bench/torch_reference.py at 512² and 1024², eager and compiled, in one call
# Then a table (every check with its error and tolerance; ms/step, TFLOP/s and peak GiB for ours and PyTorch, and the
# ratios) and $OUT/first-contact.json. Files under $OUT (at most 8, each small): first-contact.log,
# first-contact.json, check-cuda.json, bench-512.json, bench-1024-mma.json, torch.jsonl, compare.txt. The
# reference case and the step outputs (about 100 MB each) go to $WORK (a temporary folder by default), not $OUT.
#
# Environment: OUT (./gpu-out), METALORA (publish/linux-x64/metalora; in a dry run the built CLI through dotnet
# when there is no publish), PYTHON (python3; /usr/bin/python3 in a dry run), SEED (1), TOTAL (450), WORK, DRY_RUN,
# LIMIT_SCALE (multiplies every stage's limit and TOTAL; 10 in a dry run, 1 otherwise).
# Exit 0 when every stage passed; 1 otherwise (the table says which).
set -u
cd "$(dirname "$0")/../.."
DRY_RUN=${DRY_RUN:-0}
OUT=${OUT:-./gpu-out}
SEED=${SEED:-1}
# A dry run's CPU stand-ins on a small shared machine are slower than the GPU's real stages: its limits are scaled.
if [[ $DRY_RUN == 1 ]]; then SCALE=${LIMIT_SCALE:-10}; else SCALE=${LIMIT_SCALE:-1}; fi
TOTAL=${TOTAL:-$((450 * SCALE))}
if [[ $DRY_RUN == 1 ]]; then
    PYTHON=${PYTHON:-/usr/bin/python3}
    if [[ -z ${METALORA:-} ]]; then
        if [[ -x publish/linux-x64/metalora ]]; then METALORA=publish/linux-x64/metalora
        else METALORA="dotnet src/Cli/bin/Release/net10.0/metalora.dll"; fi
    fi
else
    PYTHON=${PYTHON:-python3}
    METALORA=${METALORA:-publish/linux-x64/metalora}
fi
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/first-contact.XXXXXX")}
mkdir -p "$OUT" "$WORK"
LOG="$OUT/first-contact.log"
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
STAGES="$WORK/stages.tsv"
: > "$STAGES"
START=$SECONDS
DEADLINE=$((START + TOTAL))
R=tools/reference
CASE="$WORK/case"
# shellcheck disable=SC2206
ML=($METALORA)   # a path, or a command with arguments ("dotnet .../metalora.dll")

# The settings of each mode: the GPU's real shapes, or tiny CPU stand-ins that run the same code paths.
if [[ $DRY_RUN == 1 ]]; then
    DEVICE=cpu; PRESET=tiny; KERNELS=(kernels list --dev); CHECK=(check cuda --quick)
    # the CPU engine's attention at 4,096 tokens is what a dry run waits for: micro (hidden 16, one block of each
    # kind) and one step keep it to seconds; its figures only prove the table's code paths
    BENCH=(--device cpu --preset micro --txt 16 --steps 1 --warmup 0); CASE_ARGS=(--preset tiny --img 4x4 --txt 8 --r1 4 --r2 2)
    MODEL="random:tiny:$SEED"; TORCH_DEV=cpu; TORCH=(--preset tiny --resolution 512 1024 --txt 16 --mode eager --steps 1 --warmup 1)
    REF_DEVICE=(--device cpu)
else
    DEVICE=cuda; PRESET=flux-dev; KERNELS=(kernels build --arch device --dev); CHECK=(check cuda --dev)
    BENCH=(--device cuda --preset flux-dev --txt 512 --steps 2 --warmup 1); CASE_ARGS=(--preset flux-dev --img 32x32 --txt 512 --r1 16 --r2 1 --no-model)
    MODEL="random:flux-dev:$SEED"; TORCH_DEV=cuda
    TORCH=(--preset flux-dev --resolution 512 1024 --txt 512 --mode eager compiled --steps 3 --warmup 2)
    REF_DEVICE=(--device cuda)
fi

# stage NAME LIMIT COMMAND...: runs under `timeout`, cut to the time left before the deadline; records the outcome.
# With KEEP=FILE the command's standard output is also written to FILE (for the summary).
stage() {
    local name=$1 limit=$(($2 * SCALE)); shift 2
    local left=$((DEADLINE - SECONDS - 10))   # 10 s kept for the table
    echo
    echo "==================================================================== $name"
    if (( left < 5 )); then
        echo "skipped: no time left before the ${TOTAL}s deadline"
        printf '%s\tSKIPPED\t0\t%s\n' "$name" "$limit" >> "$STAGES"
        return 0
    fi
    (( limit > left )) && limit=$left
    echo "\$ $*   (limit ${limit}s, at +$((SECONDS - START))s)"
    local start=$SECONDS rc status
    if [[ -n ${KEEP:-} ]]; then
        timeout --kill-after=5 "$limit" "$@" | tee "$KEEP"
        rc=${PIPESTATUS[0]}
    else
        timeout --kill-after=5 "$limit" "$@"
        rc=$?
    fi
    if [[ $rc -eq 124 || $rc -eq 137 ]]; then status=TIMEOUT
    elif [[ $rc -eq 0 ]]; then status=ok
    else status="FAIL($rc)"; fi
    echo "---- $name: $status in $((SECONDS - start))s"
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" "$limit" >> "$STAGES"
}

echo "first contact: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname); dry run $DRY_RUN; metalora=$METALORA python=$PYTHON out=$OUT work=$WORK"
git log -1 --format='commit %H %s' 2>/dev/null || true
# One interpreter start (importing torch takes seconds): its version, and its lib folder for METALORA_CUDA_LIBS (the
# engine searches the wheels' nvidia/*/lib folders itself; torch's own folder is added here).
TORCH_INFO=$("$PYTHON" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib")); print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1 || true)
echo "${TORCH_INFO#*$'\n'}"
TORCH_LIB=$(head -1 <<< "$TORCH_INFO")
[[ -d $TORCH_LIB ]] && export METALORA_CUDA_LIBS="${METALORA_CUDA_LIBS:+$METALORA_CUDA_LIBS:}$TORCH_LIB"

# 1. the machine
if command -v nvidia-smi > /dev/null; then
    stage nvidia-smi 10 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
else
    echo; echo "nvidia-smi: not on this machine"; printf 'nvidia-smi\tABSENT\t0\t0\n' >> "$STAGES"
fi
stage doctor 15 "${ML[@]}" doctor
stage kernels 30 "${ML[@]}" "${KERNELS[@]}"

# 2. parity: the first failing op is named with its shapes and kernel (METALORA_SYNC_CHECK)
stage check-cuda 110 env METALORA_SYNC_CHECK=1 "${ML[@]}" "${CHECK[@]}" --json "$OUT/check-cuda.json"

# 3. speed at 512², default attention; with --launches (the device step's launches, GEMMs, syncs and allocations
#    per phase, beside one untimed step of the host path: bench-512.json's "launches" and "host_path_launches")
stage bench-512 40 "${ML[@]}" bench "${BENCH[@]}" --resolution 512 --recompute off --launches --json "$OUT/bench-512.json"

# 4. the whole model at flux-dev 512² against the independent PyTorch FLUX, with both attention kernels
: > "$OUT/compare.txt"
stage ref-case 15 "$PYTHON" $R/make_case.py "${CASE_ARGS[@]}" --seed "$SEED" --out "$CASE" --batch 1
stage ref-torch-fp32 30 "$PYTHON" $R/step.py --model "$MODEL" --inputs "$CASE/inputs.safetensors" --lora "$CASE/lora.safetensors" \
    --out "$CASE/ref_fp32.safetensors" "${REF_DEVICE[@]}" --dtype fp32 --recompute
stage ref-torch-bf16 20 "$PYTHON" $R/step.py --model "$MODEL" --inputs "$CASE/inputs.safetensors" --lora "$CASE/lora.safetensors" \
    --out "$CASE/ref_bf16.safetensors" "${REF_DEVICE[@]}" --dtype bf16
for attn in scalar mma; do
    stage "step-$attn" 30 env METALORA_ATTENTION=$attn "${ML[@]}" debug step --model "$MODEL" --inputs "$CASE/inputs.safetensors" \
        --lora "$CASE/lora.safetensors" --out "$CASE/engine_$attn.safetensors" --device "$DEVICE"
done
for attn in scalar mma; do
    echo "== compare $attn" >> "$OUT/compare.txt"
    KEEP="$WORK/compare-$attn.txt" stage "compare-$attn" 8 "$PYTHON" $R/compare.py "$CASE/engine_$attn.safetensors" "$CASE/ref_fp32.safetensors" \
        --baseline "$CASE/ref_bf16.safetensors" --factor 2 --strict --quiet
    cat "$WORK/compare-$attn.txt" >> "$OUT/compare.txt" 2>/dev/null || true
done

# 5. speed at 1024², tensor-core attention
stage bench-1024-mma 35 env METALORA_ATTENTION=mma "${ML[@]}" bench "${BENCH[@]}" --resolution 1024 --recompute off \
    --json "$OUT/bench-1024-mma.json"

# 6. PyTorch on the same GPU, eager and compiled, both resolutions in one call (one JSON line per configuration)
KEEP="$OUT/torch.jsonl" stage torch 95 "$PYTHON" tools/bench/torch_reference.py "${TORCH[@]}" --device "$TORCH_DEV" --json

echo
echo "==================================================================== summary (+$((SECONDS - START))s)"
"$PYTHON" tools/gpu/first_contact_summary.py --stages "$STAGES" --out "$OUT" --dry-run "$DRY_RUN" --work "$WORK"
