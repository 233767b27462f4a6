#!/usr/bin/env bash
# CPU training-step time of a ~10M-parameter GPT: galvatron against PyTorch (Debian's python3-torch), the same
# architecture, batch, sequence and thread count, in the same run. Prints a table; see bench/README.md.
#   bash bench/cpu_train_step.sh [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-$(nproc)}
H=256 L=8 NH=8 V=16384 T=128 B=8 STEPS=30
PY=/usr/bin/python3
$PY -c "import torch" 2>/dev/null || { echo "needs Debian's python3-torch: apt-get install python3-torch" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
$PY - "$work/tokens.npy" "$V" <<'PY'
import sys, numpy as np
np.save(sys.argv[1], np.random.default_rng(0).integers(0, int(sys.argv[2]), 200000, dtype=np.int64))
PY
OMP_NUM_THREADS=$THREADS ./build/galvatron train --model-type gpt --hidden-size $H --num-layers $L --num-heads $NH \
  --vocab-size $V --seq-length $T --data "$work/tokens.npy" --seq-len $T --batch-size $B --steps $STEPS \
  --lr 1e-4 --metrics "$work/m.jsonl" --quiet > /dev/null
ours=$($PY - "$work/m.jsonl" $B $T <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])][2:]
tok = int(sys.argv[2]) * int(sys.argv[3])
ms = statistics.median(tok / r["tokens_per_s"] * 1000 for r in rows)
print(round(ms, 2))
PY
)
theirs=$($PY bench/torch_cpu_gpt.py $H $L $NH $V $T $B $STEPS $THREADS)
$PY - "$ours" "$theirs" $B $T $THREADS <<'PY'
import json, sys
ours, theirs = float(sys.argv[1]), json.loads(sys.argv[2])
tok = int(sys.argv[3]) * int(sys.argv[4])
print(f"GPT {theirs['params']/1e6:.1f}M params, batch {sys.argv[3]} x seq {sys.argv[4]}, {sys.argv[5]} threads")
print(f"{'':24s} {'ms/step':>9s} {'tokens/s':>9s}")
print(f"{'galvatron':24s} {ours:9.1f} {tok/ours*1000:9.0f}")
print(f"{theirs['impl']:24s} {theirs['ms_per_step']:9.1f} {theirs['tokens_per_s']:9d}")
print(f"ratio (pytorch time / galvatron time): {theirs['ms_per_step']/ours:.2f}")
PY
