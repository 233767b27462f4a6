#!/usr/bin/env bash
# Single-GPU bf16 AdamW training throughput of a Llama: galvatron --device cuda (the zoo's llama at a custom shape)
# against PyTorch eager and torch.compile (bench/torch_llama_baseline.py: HF LlamaForCausalLM, SDPA attention, fused
# AdamW, bf16 autocast) on the same GPU in the same run. Default shape: TinyLlama-1.1B's (hidden 2048, 22 layers, 32
# heads, 4 key/value heads, FFN 5632, vocabulary 32000) at batch 8 x 1024, random tokens. MFU = (6N + 12 L H T) flops
# per token over 989 TFLOP/s. Prints a table (also OUT/table.txt); results go in bench/README.md.
#   bash bench/cuda_llama_bench.sh GALVATRON [OUT_DIR] [STEPS]
# Env: SHAPE="hidden:layers:heads:kv_heads:ffn:vocab" (default 2048:22:32:4:5632:32000), BATCHES (default "8"),
# TORCH=0 skips PyTorch, GV_FLAGS extra galvatron flags.
set -uo pipefail
GV=${1:?galvatron binary}
OUT=${2:-$(mktemp -d)}
STEPS=${3:-10}
SHAPE=${SHAPE:-2048:22:32:4:5632:32000}
BATCHES=${BATCHES:-8}
T=1024
HERE=$(cd "$(dirname "$0")" && pwd)
IFS=: read -r HID LAY HEADS KV FFN VOCAB <<< "$SHAPE"
mkdir -p "$OUT"
: > "$OUT/summary.txt"
DATA=$(mktemp -d)
trap 'rm -rf "$DATA"' EXIT
python3 - "$DATA/tokens.npy" "$VOCAB" <<'PY'
import sys, numpy as np
np.save(sys.argv[1], np.random.default_rng(0).integers(0, int(sys.argv[2]), 1 << 21, dtype=np.int64))
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
for b in $BATCHES; do
  timeout 400 "$GV" train --model-type llama --model-size llama-7b --hidden-size "$HID" --num-layers "$LAY" \
    --num-heads "$HEADS" --kv-heads "$KV" --ffn-size "$FFN" --vocab-size "$VOCAB" --seq-length $T \
    --data "$DATA/tokens.npy" --seq-len $T --batch-size "$b" --steps "$STEPS" --lr 1e-4 --device cuda \
    --precision bf16 --metrics "$OUT/gv_b$b.jsonl" ${GV_FLAGS:-} > "$OUT/gv_b$b.log" 2>&1
  echo "gv_b$b exit $?" >> "$OUT/summary.txt"
  if [ "${TORCH:-1}" = 1 ]; then
    for mode in eager compile; do
      timeout 500 python3 "$HERE/torch_llama_baseline.py" "$HID" "$LAY" "$HEADS" "$KV" "$FFN" "$VOCAB" "$b" $T $mode \
        > "$OUT/torch_${mode}_b$b.json" 2> "$OUT/torch_${mode}_b$b.err"
      echo "torch_${mode}_b$b exit $?" >> "$OUT/summary.txt"
    done
  fi
done
python3 - "$OUT" "$BATCHES" "$LAY" "$HID" <<'PY' | tee "$OUT/table.txt"
import json, os, re, statistics, sys
out, batches, L, H = sys.argv[1], sys.argv[2].split(), int(sys.argv[3]), int(sys.argv[4])
T = 1024
print(f"GPU: {open(os.path.join(out, 'gpu.txt')).read().strip()}")
print(f"{'run':22s} {'params':>14s} {'ms/step':>9s} {'tokens/s':>10s} {'TFLOP/s':>8s} {'MFU989':>7s} {'peak GiB':>9s}")
for b in map(int, batches):
    rows = []
    n_gv = float("nan")
    try:
        log = open(os.path.join(out, f"gv_b{b}.log")).read()
        n_gv = int(re.search(r"model: \S+, ([\d,]+) parameters", log).group(1).replace(",", ""))
        m = [json.loads(l) for l in open(os.path.join(out, f"gv_b{b}.jsonl"))][2:]
        ms = statistics.median(b * T / r["tokens_per_s"] * 1000 for r in m)
        rows.append((f"galvatron_b{b}", n_gv, ms, m[-1].get("peak_mem_bytes", float("nan")) / 2**30))
    except Exception as e:
        rows.append((f"galvatron_b{b} ({e})", n_gv, float("nan"), float("nan")))
    for mode in ("eager", "compile"):
        try:
            j = json.loads(open(os.path.join(out, f"torch_{mode}_b{b}.json")).read().strip().splitlines()[-1])
            rows.append((f"torch_{mode}_b{b}", j["params"], j["ms_step"], j["peak_mem_gb"]))
        except Exception:
            if os.path.exists(os.path.join(out, f"torch_{mode}_b{b}.json")):
                rows.append((f"torch_{mode}_b{b}", float("nan"), float("nan"), float("nan")))
    for name, n, ms, mem in rows:
        tps = b * T / ms * 1000 if ms == ms else float("nan")
        tf = (6 * n + 12 * L * H * T) * tps / 1e12 if n == n else float("nan")
        print(f"{name:22s} {n:14,.0f} {ms:9.1f} {tps:10.0f} {tf:8.1f} {tf / 989:7.3f} {mem:9.1f}")
PY
cat "$OUT/summary.txt"
