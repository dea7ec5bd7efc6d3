#!/usr/bin/env bash
# First contact with a GPU: ONE command that checks and measures everything the engine can be asked on a lent
# H100/H200 in under 10 minutes. Run from the repository root with publish/linux-x64 (tools/gpu/publish.sh)
# carried; needs no .NET SDK, and python3 with PyTorch 2.x (CUDA) for the reference and the PyTorch benchmark.
#
#   OUT=./gpu-out tools/gpu/first-contact.sh          # on the GPU machine: part 1, the checks and core figures
#   PART=2 OUT=./gpu-out tools/gpu/first-contact.sh   # part 2: the further measurements (next call or next machine)
#   DRY_RUN=1 OUT=/tmp/fc tools/gpu/first-contact.sh  # here, on the CPU: both parts, tiny shapes, same table and JSON
#
# Two parts, because a lent machine's 15 minutes hold one part and a rerun: part 1 (450 s) is stages 1-6, part 2
# (560 s) is bench-512 and bench-1024-mma again (the references of its ratios), 3b, 5b, 7, 8 and the PyTorch stage 6,
# so each part's figures sit beside PyTorch's from the same call. Stages, most important first, each under its own
# `timeout` and under one overall deadline (TOTAL seconds, the part's figure by default): a stage that would run past
# the deadline is cut to what is left, and skipped when under 5 s are left.
#   1. machine:   nvidia-smi, metalora doctor, kernels build --arch device --dev (the images the backend loads)
#   2. parity:    check cuda --dev (every op group, LoRA on every target kind, the tiny model, Stage 2, the flux-width
#                 model at 256² and 512², tensor-core attention at 1,536 and 4,608 tokens), METALORA_SYNC_CHECK=1
#   3. bench-512: metalora bench --resolution 512 --steps 2 --launches (default attention, fused Stage-2 LoRA; what a step issues)
#      bench-512-stacked: the same with METALORA_LORA=stacked, then one line comparing the two Stage-2 steps
#      (stage 2's list holds the checks of the fused path: "gemm slice" and "lora fused <module> <shape>")
#      bench-512-dev (part 2): every opt-in playground path at once (--fuse all, METALORA_LORA_GROUPED=1,
#      METALORA_ATTENTION=onepass); bench-512-w8a8 (part 2): fp8 base with METALORA_FP8_MATMUL=1
#   4. reference: debug step at flux-dev 512² (1,024 image + 512 text tokens) with the scalar and with the
#                 tensor-core attention, each compared by tools/reference/compare.py with the PyTorch fp32 step,
#                 PyTorch's bf16 step as the baseline (docs/REFERENCE_CHECK.md)
#   5. bench-1024-mma: metalora bench --resolution 1024 --steps 2, METALORA_ATTENTION=mma
#   5b. kernels-bench (part 2, GPU only): every kernels/dev version beside its version 1 at FLUX.1-dev's size (attention
#       1-4, residual-norm, grouped GEMM, GELU epilogue and strided GELU, qkv_norm_rope, W8A16 against W8A8)
#   6. torch:     tools/bench/torch_reference.py at 512² and 1024², eager and compiled, in one call
#   7. vram-24, vram-16, vram-10: metalora bench at 1024² under --vram 24/16/10 (plan, ms/step against bench-1024-mma's
#                 unconstrained 80 GB plan, peak, block swap's hidden and exposed copy time), a table in the log
#   8. nccl-stage1, queue-2: a one-rank NCCL Stage 1 on GPU 0 (the log names NCCL's version and the all-reduce
#                 bytes; nccl-proof checks it) and a two-person `train stage2 --queue` on GPU 0, both on the tiny preset
# Then a table (every check with its error and tolerance; ms/step, TFLOP/s and peak GiB for ours and PyTorch, and the
# ratios) and $OUT/first-contact.json. Files under $OUT (at most 8, each small): first-contact.log,
# first-contact.json, check-cuda.json, bench-512.json, bench-1024-mma.json, torch.jsonl, compare.txt. The
# reference case and the step outputs (about 100 MB each) go to $WORK (a temporary folder by default), not $OUT.
#
# Environment: OUT (./gpu-out), METALORA (publish/linux-x64/metalora; in a dry run the built CLI through dotnet
# when there is no publish), PYTHON (python3; /usr/bin/python3 in a dry run), SEED (1), PART (1; all in a dry run),
# TOTAL (450 for part 1, 560 for part 2), WORK, DRY_RUN,
# LIMIT_SCALE (multiplies every stage's limit and TOTAL; 10 in a dry run, 1 otherwise).
# Exit 0 when every stage passed; 1 otherwise (the table says which).
set -u
cd "$(dirname "$0")/../.."
DRY_RUN=${DRY_RUN:-0}
OUT=${OUT:-./gpu-out}
SEED=${SEED:-1}
# A dry run's CPU stand-ins on a small shared machine are slower than the GPU's real stages: its limits are scaled.
if [[ $DRY_RUN == 1 ]]; then SCALE=${LIMIT_SCALE:-10}; else SCALE=${LIMIT_SCALE:-1}; fi
# PART: 1 (default) the checks and the core figures, 2 the further measurements, all both (a dry run's default). A
# lent machine's 15 minutes hold one part and its rerun, so each part is one call of its own.
if [[ $DRY_RUN == 1 ]]; then PART=${PART:-all}; else PART=${PART:-1}; fi
case $PART in
    1) PART_TOTAL=450 ;;
    2) PART_TOTAL=560 ;;
    all) PART_TOTAL=1010 ;;
    *) echo "PART must be 1, 2 or all, not '$PART'" >&2; exit 2 ;;
esac
in_part() { [[ $PART == all || $PART == "$1" ]]; }
TOTAL=${TOTAL:-$((PART_TOTAL * SCALE))}
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
if in_part 1; then
stage kernels 30 "${ML[@]}" "${KERNELS[@]}"
fi

if in_part 1; then
# 2. parity: the first failing op is named with its shapes and kernel (METALORA_SYNC_CHECK); every uninitialised
#    buffer (IBackend.Empty) is NaN-filled first (METALORA_POISON_EMPTY), so a kernel reading what it should only
#    write fails its check instead of passing on stale pool memory
stage check-cuda 110 env METALORA_SYNC_CHECK=1 METALORA_POISON_EMPTY=1 "${ML[@]}" "${CHECK[@]}" --json "$OUT/check-cuda.json"
fi

# 3. speed at 512², default attention; with --launches (the device step's launches, GEMMs, syncs and allocations
#    per phase, beside one untimed step of the host path: bench-512.json's "launches" and "host_path_launches")
stage bench-512 40 "${ML[@]}" bench "${BENCH[@]}" --resolution 512 --recompute off --launches --json "$OUT/bench-512.json"

if in_part 2; then
# 3b. fused vs stacked Stage-2 LoRA (docs/PERF.md, "Fused Stage-2 LoRA"): the stacked path's step at 512² (its JSON
# in $WORK) and one line comparing it with bench-512's fused step
stage bench-512-stacked 40 env METALORA_LORA=stacked "${ML[@]}" bench "${BENCH[@]}" --resolution 512 --recompute off \
    --json "$WORK/bench-512-stacked.json"
"$PYTHON" - "$OUT/bench-512.json" "$WORK/bench-512-stacked.json" <<'PY' || true
import json, sys
def ms(path):
    try:
        with open(path) as f: return json.load(f).get("train_ms_median")
    except (OSError, ValueError): return None
fused, stacked = ms(sys.argv[1]), ms(sys.argv[2])
if fused and stacked:
    print(f"Stage-2 LoRA at 512²: fused {fused:.2f} ms/step, stacked {stacked:.2f} ms/step, saving {stacked - fused:.2f} ms ({stacked / fused:.3f}x)")
else:
    print(f"Stage-2 LoRA at 512²: fused {fused} ms/step, stacked {stacked} ms/step (a bench did not finish)")
PY
# 3c. the opt-in playground paths together at 512² (docs/PERF.md): the fused elementwise forms (--fuse all), the
#     grouped A formation and dM (METALORA_LORA_GROUPED=1), attention forward version 3 with backward version 4
#     (METALORA_ATTENTION=onepass); their parity checks ran in stage 2's check cuda --dev
stage bench-512-dev 40 env METALORA_LORA_GROUPED=1 METALORA_ATTENTION=onepass "${ML[@]}" bench "${BENCH[@]}" --resolution 512 \
    --recompute off --fuse all --launches --json "$WORK/bench-512-dev.json"
# 3d. fp8 base weights with the W8A8 forward products (METALORA_FP8_MATMUL=1, sm_89+; W8A16 elsewhere, said in the log)
stage bench-512-w8a8 40 env METALORA_FP8_MATMUL=1 "${ML[@]}" bench "${BENCH[@]}" --resolution 512 --recompute off \
    --base-dtype fp8 --json "$WORK/bench-512-w8a8.json"
"$PYTHON" - "$OUT/bench-512.json" "$WORK/bench-512-dev.json" "$WORK/bench-512-w8a8.json" <<'PY' || true
import json, sys
def ms(path):
    try:
        with open(path) as f: return json.load(f).get("train_ms_median")
    except (OSError, ValueError): return None
base, dev, w8a8 = (ms(p) for p in sys.argv[1:4])
for name, x in (("playground paths (fuse all, grouped, onepass)", dev), ("fp8 base + W8A8", w8a8)):
    if base and x: print(f"at 512²: {name} {x:.2f} ms/step against the default {base:.2f} ({base / x:.3f}x)")
    else: print(f"at 512²: {name} {x} ms/step, default {base} (a bench did not finish)")
PY
fi

if in_part 1; then
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
fi

# 5. speed at 1024², tensor-core attention
stage bench-1024-mma 35 env METALORA_ATTENTION=mma "${ML[@]}" bench "${BENCH[@]}" --resolution 1024 --recompute off \
    --json "$OUT/bench-1024-mma.json"

# 5b. every playground version beside its version 1 at FLUX.1-dev's size, each bench checking its outputs against
#     closed-form values (KernelBenches.Dev): attention 1-4, residual-norm, the grouped GEMM on a step's 494 A
#     formations and dM products, the GELU epilogue and strided GELU, qkv_norm_rope, W8A16 against W8A8, the 16-byte
#     elementwise and layout kernels, the one-pass LoRA up backward. GPU only (a dry run has no kernels to time). 60 s: each bench is a few timed calls (under 0.1 s each, version 1's 494
#     routed GEMMs a call the slowest) plus its fills and host checks (up to ~1 s for the 4,608 × 21,504 tensors of
#     the strided GELU), and the first use of each kernel file compiles it. Each bench prints its line when done, so a
#     cut stage still reports the benches before the cut.
if in_part 2 && [[ $DRY_RUN != 1 ]]; then
    stage kernels-bench 60 "${ML[@]}" kernels bench --dev --only "attention scalar" "attention tc" "attention p3" "attention onepass" \
        "residual-norm v1" "residual-norm v2" "gemm group v1" "gemm group g2" "gelu-epilogue v1" "gelu-epilogue v2" \
        "gelu strided v1" "gelu strided v2" "qkv_norm_rope v1" "qkv_norm_rope v2" "linear w8a16" "linear w8a8" \
        "elementwise v1" "elementwise vec16" "layout v1" "layout vec16" "lora upback v1" "lora upback v2"
fi

# 6. PyTorch on the same GPU, eager and compiled, both resolutions in one call (one JSON line per configuration)
KEEP="$OUT/torch.jsonl" stage torch 95 "$PYTHON" tools/bench/torch_reference.py "${TORCH[@]}" --device "$TORCH_DEV" --json

if in_part 2; then
# 7. memory levels: the 1024² step under a 24, 16 and 10 GiB budget (--vram caps the allocator there; the planner
#    picks base dtype, recomputation and block swap), tensor-core attention as in bench-1024-mma, whose unconstrained
#    run (bf16, no recomputation: the 80 GB cards' plan) is the reference of the ratios. Few steps each; the table
#    (plan, ms/step and its ratio, measured and predicted peak, swap copy time hidden and exposed) goes to the log.
if [[ $DRY_RUN == 1 ]]; then
    # micro's single block of each kind cannot gain from swap, so a dry run asks for it to run the same paths
    SWAP_LEVELS=("24:--vram 1" "16:--vram 1 --base-dtype fp8 --swap-blocks 1" "10:--vram 1 --base-dtype fp8 --swap-blocks 2")
    SWAP_RES=512
else
    SWAP_LEVELS=("24:--vram 24" "16:--vram 16" "10:--vram 10")
    SWAP_RES=1024
fi
for level in "${SWAP_LEVELS[@]}"; do
    # shellcheck disable=SC2206
    extra=(${level#*:})
    stage "vram-${level%%:*}" 45 env METALORA_ATTENTION=mma "${ML[@]}" bench "${BENCH[@]}" --resolution "$SWAP_RES" "${extra[@]}" \
        --json "$WORK/vram-${level%%:*}.json"
done
SWAP_JSON=()
for level in "${SWAP_LEVELS[@]}"; do SWAP_JSON+=("$WORK/vram-${level%%:*}.json"); done
"$PYTHON" - "$OUT/bench-1024-mma.json" "${SWAP_JSON[@]}" <<'PY' || true
import json, os, sys
def load(p):
    try:
        with open(p) as f: return json.load(f)
    except (OSError, ValueError): return None
ref = load(sys.argv[1])
print(f"{'memory level':<14} {'plan':<34} {'ms/step':>9} {'x 80 GB':>8} {'peak GiB':>9} {'predicted':>10} {'copies ms':>10} {'exposed':>8}")
rows = [("80 GB (ref)", ref)] + [(os.path.basename(p)[5:-5] + " GiB", load(p)) for p in sys.argv[2:]]
for name, r in rows:
    if r is None:
        print(f"{name:<14} no result"); continue
    plan = f"{r['base_dtype']}, recompute {'on' if r['recompute'] else 'off'}, swap {r.get('swap_blocks', 0)}"
    ratio = ref and r['train_ms_median'] / ref['train_ms_median']
    print(f"{name:<14} {plan:<34} {r['train_ms_median']:>9.1f} {ratio or float('nan'):>8.2f} {r['peak_gib']:>9.2f} "
          f"{r['predicted_peak_gib']:>10.2f} {r.get('swap_copy_ms', 0):>10.1f} {r.get('swap_exposed_ms', 0):>8.1f}")
PY
fi

if in_part 2; then
# 8. multi-GPU wiring on one GPU (docs/DISTRIBUTED.md "First GPU check"): a one-rank NCCL Stage 1 (`--gpus 0` joins
#    NCCL even alone; its log names the NCCL version and file and what the gradient all-reduces moved), then a
#    two-person queue on GPU 0 (`train stage2 --queue`, docs/TRAINING.md) with the D it wrote. The dry run takes the
#    same routes on the CPU: one CPU rank (no communicator), two CPU queue workers.
Q="$WORK/queue"
# the proof: every pattern in the log (on the GPU "rank 0 of 1 joined over NCCL: 2.x.y (file) on GPU 0" and
# "rank 0: 4 gradient all-reduce(s), the last N B in 1 bucket(s)"); a dry run's CPU rank has no communicator
if [[ $DRY_RUN == 1 ]]; then PROOF=('wrote Meta-Down'); QUEUE_SLOTS=(--workers 2)
else PROOF=('joined over NCCL: [0-9]+[.][0-9]+' 'gradient all-reduce[(]s[)], the last [1-9][0-9,]* B' 'wrote Meta-Down'); QUEUE_SLOTS=(--gpus 0); fi
proves() { local file=$1 ok=0; shift; for p in "$@"; do grep -E "$p" "$file" || { echo "missing in $file: $p"; ok=1; }; done; return $ok; }
export -f proves
stage queue-data 15 "${ML[@]}" data synth --out "$Q/ids" --identities 2 --images 2
KEEP="$WORK/nccl-stage1.txt" stage nccl-stage1 45 "${ML[@]}" train stage1 --device "$DEVICE" --gpus 0 --model "random:tiny:$SEED" \
    --data "$Q/ids" --out "$Q/d.safetensors" --iterations 4 --bucket-iterations 2 --warmup-iterations 1 --batch-size 2 --rank1 4
stage nccl-proof 5 bash -c 'proves "$@"' proves "$WORK/nccl-stage1.txt" "${PROOF[@]}"
printf '%s\n' "{\"data\": \"$Q/ids/person000\", \"out\": \"$Q/lora/a/lora.safetensors\"}" \
    "{\"data\": \"$Q/ids/person001\", \"out\": \"$Q/lora/b/lora.safetensors\", \"seed\": 2, \"trigger\": \"sks person\"}" > "$Q/people.jsonl"
stage queue-2 60 "${ML[@]}" train stage2 --queue "$Q/people.jsonl" --device "$DEVICE" "${QUEUE_SLOTS[@]}" --model "random:tiny:$SEED" \
    --down "$Q/d.safetensors" --iterations 3
fi


echo
echo "==================================================================== summary (+$((SECONDS - START))s)"
"$PYTHON" tools/gpu/first_contact_summary.py --stages "$STAGES" --out "$OUT" --dry-run "$DRY_RUN" --work "$WORK"
