#!/usr/bin/env bash
# GPU training step of GPT-2 124M (the zoo's gpt2: HF layout, 12 layers, hidden 768, vocabulary 50257) at batch 8 x
# sequence 1024: galvatron --device cuda with --precision fp32, tf32 and bf16 (the products' arithmetic; storage stays
# float32) against PyTorch on the same GPU in the same run (../shared/tools/torch_baseline.py: HF GPT2LMHeadModel, SDPA
# attention, fused AdamW; bf16 autocast as shipped, and float32 through bench/cuda_torch_fp32.py). Prints a table; see
# bench/README.md. BASELINE_GV: an earlier galvatron binary, timed in fp32 in the same run (row gv_fp32_before).
# PROFILE=1: one more bf16 run of 8 steps under GALVATRON_CUDA_PROFILE=1 (the per-op table lands in gv_bf16_profile.log).
#   bash bench/cuda_train_step.sh GALVATRON TORCH_BASELINE_PY [OUT_DIR] [STEPS] [BASELINE_GV]
set -uo pipefail
GV=${1:?galvatron binary}
TB=${2:?path of torch_baseline.py}
OUT=${3:-$(mktemp -d)}
STEPS=${4:-12}
BASE=${5:-}
B=8 T=1024
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
DATA=$(mktemp -d)
trap 'rm -rf "$DATA"' EXIT
python3 - "$DATA/tokens.npy" <<'PY'
import sys, numpy as np
np.save(sys.argv[1], np.random.default_rng(0).integers(0, 50257, 1 << 21, dtype=np.int64))
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
run_gv() {  # name, binary, steps, then env assignments and/or flags
  local name=$1 bin=$2 steps=$3; shift 3
  local envs=() flags=()
  for a in "$@"; do [[ $a == *=* && $a != --* ]] && envs+=("$a") || flags+=("$a"); done
  env "${envs[@]}" "$bin" train --model-type gpt --model-size gpt2 --data "$DATA/tokens.npy" --seq-len $T \
    --batch-size $B --steps $steps --lr 1e-4 --device cuda --metrics "$OUT/$name.jsonl" "${flags[@]}" \
    > "$OUT/$name.log" 2>&1
  echo "$name exit $?" >> "$OUT/summary.txt"
}
[ -n "$BASE" ] && run_gv gv_fp32_before "$BASE" $STEPS GALVATRON_VERBOSE=1
run_gv gv_fp32 "$GV" $STEPS GALVATRON_VERBOSE=1 --precision fp32
run_gv gv_tf32 "$GV" $STEPS --precision tf32
run_gv gv_bf16 "$GV" $STEPS --precision bf16
[ "${PROFILE:-0}" = 1 ] && run_gv gv_bf16_profile "$GV" 8 GALVATRON_CUDA_PROFILE=1 --precision bf16
for mode in eager compile; do
  timeout 300 python3 "$TB" 124m $B $T $mode > "$OUT/torch_bf16_$mode.json" 2> "$OUT/torch_bf16_$mode.err"
done
timeout 200 python3 "$HERE/cuda_torch_fp32.py" "$TB" 124m $B $T eager > "$OUT/torch_fp32_eager.json" 2> "$OUT/torch_fp32_eager.err"
python3 - "$OUT" $B $T <<'PY'
import json, os, statistics, sys
out, B, T = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tok = B * T
N, L, H = 124439808, 12, 768
flops_tok = 6 * N + 12 * L * H * T
rows = []
for name in ["gv_fp32_before", "gv_fp32", "gv_tf32", "gv_bf16"]:
    p = os.path.join(out, name + ".jsonl")
    m = [json.loads(l) for l in open(p)] if os.path.exists(p) else []
    if not m and name == "gv_fp32_before":
        continue
    m = m[2:]
    if m:
        ms = statistics.median(tok / r["tokens_per_s"] * 1000 for r in m)
        rows.append((name, ms, m[-1]["peak_mem_bytes"] / 2**30, m[-1]["loss"]))
    else:
        rows.append((name, float("nan"), float("nan"), float("nan")))
for name in ["torch_bf16_eager", "torch_bf16_compile", "torch_fp32_eager"]:
    p = os.path.join(out, name + ".json")
    try:
        j = json.loads(open(p).read().strip().splitlines()[-1])
        rows.append((name, j["ms_step"], j["peak_mem_gb"], float("nan")))
    except Exception:
        rows.append((name, float("nan"), float("nan"), float("nan")))
print(f"GPT-2 124M, batch {B} x seq {T}")
print(f"{'run':22s} {'ms/step':>9s} {'tokens/s':>10s} {'TFLOP/s':>8s} {'peak GiB':>9s} {'last loss':>9s}")
for name, ms, mem, loss in rows:
    tps = tok / ms * 1000 if ms == ms else float("nan")
    print(f"{name:22s} {ms:9.1f} {tps:10.0f} {flops_tok * tps / 1e12:8.1f} {mem:9.1f} {loss:9.4f}")
PY
cat "$OUT/summary.txt"
