#!/usr/bin/env bash
# Issue 8's scaling measurement, one device call: data parallelism (`--devices N`) at a fixed per-GPU batch against
# one GPU at that batch; tokens/s are the median of steps 3-STEPS (metrics JSONL), scaling = per-GPU tokens/s over one
# GPU's. Prints a table (also OUT_DIR/table.txt); results go in bench/README.md.
#   bash bench/ddp_scaling.sh GALVATRON [OUT_DIR]
# Env: MODEL (zoo size, default gpt-1.5b), NGPUS (default "2"; e.g. "2 4"), ROWS (rows per GPU, default "2 4"),
# SEQ (1024), STEPS (10), DEVICE (cuda; cpu with a tiny MODEL for a smoke test), VOCAB (token ids drawn below it,
# 50257), EXTRA (more galvatron flags), VARIANTS (default "ddp-fp32 ddp-bf16"; also zero2-fp32, zero2-bf16 and
# zero2-bf16-end: ZeRO-2 with one micro-batch, bf16 reduce-scatters, copies gathered in the forward pass or, -end,
# at the end of the step).
set -uo pipefail
GV=${1:?galvatron binary}
OUT=${2:-$(mktemp -d)}
MODEL=${MODEL:-gpt-1.5b}
NGPUS=${NGPUS:-2}
ROWS=${ROWS:-"2 4"}
SEQ=${SEQ:-1024}
STEPS=${STEPS:-10}
DEVICE=${DEVICE:-cuda}
PRECISION=bf16
[ "$DEVICE" = cpu ] && PRECISION=fp32
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
python3 - "$OUT/tokens.npy" "${VOCAB:-50257}" <<'PY'
import sys, numpy as np
np.save(sys.argv[1], np.random.default_rng(0).integers(0, int(sys.argv[2]), 1 << 21, dtype=np.int64))
PY
run() {  # name, devices, global batch, extra flags...
  local name=$1 n=$2 b=$3
  shift 3
  timeout 300 "$GV" train --model-type gpt --model-size "$MODEL" --data "$OUT/tokens.npy" --seq-len "$SEQ" \
    --batch-size "$b" --steps "$STEPS" --lr 1e-4 --device "$DEVICE" --precision "$PRECISION" --devices "$n" \
    --metrics "$OUT/$name.jsonl" ${EXTRA:-} "$@" > "$OUT/$name.log" 2>&1
  echo "$name exit $?"
}
VARIANTS=${VARIANTS:-"ddp-fp32 ddp-bf16"}
variant() {  # name, devices, global batch, variant
  local name=$1 n=$2 b=$3 v=$4
  case $v in
    ddp-fp32) run "$name" "$n" "$b" --grad-reduce-dtype fp32 ;;
    ddp-bf16) run "$name" "$n" "$b" --grad-reduce-dtype bf16 ;;
    zero2-fp32) run "$name" "$n" "$b" --default-dp-type zero2 --chunks 1 --grad-reduce-dtype fp32 ;;
    zero2-bf16) run "$name" "$n" "$b" --default-dp-type zero2 --chunks 1 --grad-reduce-dtype bf16 ;;
    zero2-bf16-end) GALVATRON_ZERO2_PREFETCH=0 run "$name" "$n" "$b" --default-dp-type zero2 --chunks 1 \
      --grad-reduce-dtype bf16 ;;
    *) echo "unknown variant $v" >&2; return 1 ;;
  esac
}
for r in $ROWS; do
  CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} run "one_r$r" 1 "$r"
  for n in $NGPUS; do
    for v in $VARIANTS; do variant "x${n}_r${r}_$v" "$n" $((n * r)) "$v"; done
  done
done
python3 - "$OUT" "$ROWS" "$NGPUS" "$SEQ" "$VARIANTS" <<'PY' | tee "$OUT/table.txt"
import json, os, statistics, sys
out, rows, ngpus, seq, variants = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), int(sys.argv[4]), sys.argv[5].split()
def tps(name):
    p = os.path.join(out, name + ".jsonl")
    m = [json.loads(l) for l in open(p)][2:] if os.path.exists(p) else []
    return statistics.median(r["tokens_per_s"] for r in m) if m else float("nan")
print(f"{'run':24s} {'rows/GPU':>8s} {'tokens/s':>10s} {'per GPU':>9s} {'ms/step':>8s} {'scaling':>8s}")
for r in rows:
    one = tps(f"one_r{r}")
    print(f"{'one GPU':24s} {r:>8s} {one:10.0f} {one:9.0f} {1000 * int(r) * seq / one:8.2f}")
    for n in ngpus:
        for v in variants:
            t = tps(f"x{n}_r{r}_{v}")
            ms = 1000 * int(n) * int(r) * seq / t
            print(f"{f'{v} x{n}':24s} {r:>8s} {t:10.0f} {t / int(n):9.0f} {ms:8.2f} {100 * t / int(n) / one:7.1f}%")
PY
