#!/usr/bin/env bash
# Search accuracy (issue 8): Galvatron's predicted time per iteration against the measured one, on $NGPU GPUs.
# Per model (zoo gpt2 124M, quick, then gpt-1.5b): the hardware files measured through NCCL, the computation profile
# timed on one GPU (`galvatron profile --device cuda --precision tf32`, 8 batch sizes for the batch time mode), the
# search for a fixed global batch and memory budget, a few training steps with the searched plan, and the same for pure
# DDP (the search restricted to `--search-space dp`, then `train` with no plan flags). Prints predicted vs measured
# seconds per iteration and the error. Measured: global batch x seq / the step's tokens_per_s (--metrics), median of
# the steps after the first two.
#   GALVATRON=./galvatron NGPU=4 bash bench/search_accuracy.sh [OUT_DIR]
# Optional: MODELS ("gpt2 gpt-1.5b"), MEM_GB (64, the search's --memory-constraint), PRECISION (tf32), STEPS (6),
# DP_TYPE (zero2, the searched plan's --default-dp-type), BSZ_gpt2 / BSZ_gpt_1_5b (global batches: 4 and 2 per GPU).
set -uo pipefail
GV=${GALVATRON:-./galvatron}
N=${NGPU:-4}
OUT=${1:-${OUT:-$(mktemp -d)}}
MODELS=${MODELS:-"gpt2 gpt-1.5b"}
MEM=${MEM_GB:-64}
PREC=${PRECISION:-tf32}
STEPS=${STEPS:-6}
DP_TYPE=${DP_TYPE:-zero2}
SEQ=${SEQ:-1024}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
"$GV" --version 2>/dev/null | head -1
RES="$OUT/results.tsv"
: > "$RES"

# 1. Hardware files (all-reduce / p2p bandwidths, overlap coefficient) measured through NCCL.
stamp "hardware profile on $N GPUs"
timeout 150 "$GV" profile --hardware --devices "$N" --device cuda --start-mb 16 --end-mb 256 \
  --output-dir "$OUT/hw" > "$OUT/hw.log" 2>&1; echo "hardware exit $?"; grep -v "^wrote" "$OUT/hw.log" | tail -8

# Random tokens as a 1-D int64 .npy (written without NumPy).
python3 - "$OUT/tokens.npy" "${VOCAB:-50257}" <<'PY'
import array, random, struct, sys
n, v, rng = 1 << 20, int(sys.argv[2]), random.Random(0)
a = array.array("q", (rng.randrange(v) for _ in range(n)))
h = "{'descr': '<i8', 'fortran_order': False, 'shape': (%d,), }" % n
h += " " * (63 - (10 + len(h)) % 64) + "\n"
open(sys.argv[1], "wb").write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h.encode() + a.tobytes())
PY

# Median seconds per step after the first two: global batch x seq / tokens_per_s.
measured() {  # metrics.jsonl, global batch
  python3 - "$1" "$2" "$SEQ" <<'PY'
import json, os, statistics, sys
p, gbs, seq = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
m = [json.loads(l) for l in open(p)] if os.path.exists(p) else []
m = [r for r in m[2:] if r.get("tokens_per_s", 0) > 0]
print(f"{statistics.median(gbs * seq / r['tokens_per_s'] for r in m):.5f}" if m else "nan")
PY
}
# The search's predicted seconds per iteration ("predicted time per iteration"), from its throughput line (more digits).
predicted() {  # search.log, global batch
  local t; t=$(sed -n 's/^throughput: \([0-9.]*\) samples\/s.*/\1/p' "$1" | tail -1)
  [ -n "$t" ] && python3 -c "print(f'{$2 / $t:.5f}')" || echo nan
}

for M in $MODELS; do
  key=BSZ_${M//[-.]/_}
  case $M in gpt2) def=$((4 * N));; *) def=$((2 * N));; esac
  GBS=${!key:-$def}
  P="$OUT/$M"
  mkdir -p "$P"
  rm -f "$P"/plan*.json "$P"/*.jsonl  # a reused OUT_DIR: no stale plan or metrics
  # 2. Computation profile on one GPU (memory profile from the IR beside it). --mixed-precision fp32: galvatron stores
  # float32 under every --precision, so activations count 4 bytes and gradients travel in fp32.
  stamp "$M: computation profile (cuda, $PREC)"
  timeout 180 "$GV" profile --model-type gpt --model-size "$M" --device cuda --precision "$PREC" \
    --mixed-precision fp32 --profile-batch-sizes 1,2,3,4,5,6,7,8 --repeats 3 --output-dir "$P/prof" \
    > "$P/profile.log" 2>&1; echo "profile exit $?"; grep "^forward on\|^memory" "$P/profile.log"
  S="search --model-type gpt --model-size $M --num-nodes 1 --num-gpus-per-node $N --settle-bsz $GBS
     --mixed-precision fp32 --time-profiling-path $P/prof --time-profile-mode batch --hardware-profiling-path $OUT/hw"
  # 3. The search, and the cost of pure DDP (one strategy, one micro-batch; a large budget so that it is priced even
  # where it does not fit MEM_GB: the DDP run below shows whether it fits the GPU).
  stamp "$M: search, global batch $GBS, $MEM GB"
  timeout 120 "$GV" $S --memory-constraint "$MEM" --default-dp-type "$DP_TYPE" --pipeline-type pipedream_flush \
    --output-config-path "$P/plan.json" > "$P/search.log" 2>&1; echo "search exit $?"
  sed -n '/^Galvatron search/,$p' "$P/search.log"
  timeout 120 "$GV" $S --memory-constraint 512 --search-space dp --settle-chunk 1 --disable-sdp 1 --disable-vtp 1 \
    --default-dp-type ddp --output-config-path "$P/plan_ddp.json" > "$P/search_ddp.log" 2>&1
  echo "search (dp only) exit $?"
  T="train --model-type gpt --model-size $M --data $OUT/tokens.npy --seq-len $SEQ --steps $STEPS --lr 1e-4
     --device cuda --devices $N --precision $PREC"
  # 4. Training steps under the searched plan: --batch-size is one micro-batch over all GPUs (global / chunks).
  if [ -f "$P/plan.json" ]; then
    CH=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('chunks', 1))" "$P/plan.json")
    stamp "$M: train with the searched plan ($CH micro-batches of $((GBS / CH)))"
    timeout 240 "$GV" $T --batch-size $((GBS / CH)) --galvatron-config-path "$P/plan.json" \
      --metrics "$P/train_plan.jsonl" > "$P/train_plan.log" 2>&1; echo "train (plan) exit $?"
    grep -h "parallel plan\|memory plan" "$P/train_plan.log" | head -2
    printf "%s\tsearched\t%s\t%s\n" "$M" "$(predicted "$P/search.log" "$GBS")" \
      "$(measured "$P/train_plan.jsonl" "$GBS")" >> "$RES"
  else
    printf "%s\tsearched\t%s\tnan\n" "$M" "nan" >> "$RES"
  fi
  # 5. Pure DDP: no plan flags (each GPU takes global / N rows, gradients all-reduced).
  stamp "$M: train DDP"
  timeout 240 "$GV" $T --batch-size "$GBS" --metrics "$P/train_ddp.jsonl" > "$P/train_ddp.log" 2>&1
  echo "train (ddp) exit $?"; grep -ih "out of memory" "$P/train_ddp.log" | head -1
  printf "%s\tddp\t%s\t%s\n" "$M" "$(predicted "$P/search_ddp.log" "$GBS")" \
    "$(measured "$P/train_ddp.jsonl" "$GBS")" >> "$RES"
done

stamp "summary ($N GPUs, --precision $PREC, $STEPS steps each, median of steps 3-$STEPS)"
python3 - "$RES" <<'PY'
import math, sys
print(f"{'model':10s} {'run':9s} {'predicted s/it':>14s} {'measured s/it':>14s} {'error':>8s}")
for line in open(sys.argv[1]):
    m, run, p, t = line.rstrip("\n").split("\t")
    p = float(p) if p else math.nan
    t = float(t) if t else math.nan
    err = (p - t) / t * 100 if t == t and p == p and t > 0 else math.nan
    print(f"{m:10s} {run:9s} {p:14.4f} {t:14.4f} {err:+7.1f}%")
PY
stamp "done"
